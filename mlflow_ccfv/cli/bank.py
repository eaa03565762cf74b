"""``mlflow-ccfv bank``: list the versions of a model bank (read-only; MLproject entry point ``bank``)."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error

__all__ = ["bank"]


@command()
@shared.bank_option("Bank name (tag ccfv.bank).")
@shared.json_option("the versions")
def bank(bank: str, json: bool) -> None:
    """List the model versions of a bank (URI, architecture, source dataset, patch size)."""
    from mlflow_ccfv.pipelines.rank import bank_table, frame_json, frame_markdown

    with exit_on_input_error("bank"):
        check_tracking_server()
        frame = bank_table(bank)
    click.echo(frame_json(frame) if json else frame_markdown(frame))
