"""``mlflow-ccfv rank``: print the stored ranking of a dataset (read-only; MLproject entry point ``rank``)."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error

__all__ = ["rank"]


@command()
@click.option("--dataset", required=True, help="Dataset name as scored (e.g. Task07).")
@shared.bank_option("Only the versions of this bank (default: every version).", default="")
@shared.json_option("the ranking")
def rank(dataset: str, bank: str, json: bool) -> None:
    """Print the stored transferability ranking of a dataset from the registry tags (nothing is recomputed)."""
    from mlflow_ccfv.pipelines.rank import frame_json, frame_markdown, ranking_of

    with exit_on_input_error("rank"):
        check_tracking_server()
        frame = ranking_of(dataset, bank or None)
    click.echo(frame_json(frame) if json else frame_markdown(frame))
