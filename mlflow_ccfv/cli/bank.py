"""``mlflow-ccfv bank``: list the versions of a model bank (read-only; MLproject entry point ``bank``)."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import CCFVCommand, check_tracking_server, exit_on_input_error, json_option

__all__ = ["bank"]


@click.command(cls=CCFVCommand)
@click.option("--bank", default="default", show_default=True, help="Bank name (tag ccfv.bank).")
@json_option("the versions")
def bank(bank: str, json: bool) -> None:
    """List the model versions of a bank (URI, architecture, source dataset, patch size)."""
    from mlflow_ccfv.pipelines.rank import bank_table, frame_json, frame_markdown

    with exit_on_input_error("bank"):
        check_tracking_server()
        frame = bank_table(bank)
    click.echo(frame_json(frame) if json else frame_markdown(frame))
