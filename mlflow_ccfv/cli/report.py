"""``mlflow-ccfv report``: Table 1, Table 2 and Fig. 2 from the stored transferability and Dice tags."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import CCFVCommand, exit_on_input_error
from mlflow_ccfv.options import split_list


@click.command(cls=CCFVCommand)
@click.option("--bank", default="default", show_default=True, help="Versions tagged ccfv.bank=<bank>.")
@click.option("--datasets", default="", help="Comma-separated dataset names (default: every dataset with Dice tags).")
@click.option("--models", default="", help="Instead of the bank: comma-separated models:/<name>/<version> URIs.")
@click.option("--out-dir", "out_dir", default="", help="Also write the tables and plots to this folder.")
def report(**options) -> None:
    """Weighted Kendall's tau, Pearson and top-1 regret of every estimator vs fine-tune Dice; logged to a run."""
    from mlflow_ccfv.pipelines.report import report_bank

    with exit_on_input_error("report", (ValueError, LookupError)):
        rep = report_bank(
            options["bank"],
            datasets=split_list(options["datasets"]) or None,
            models=split_list(options["models"]) or None,
            out_dir=options["out_dir"] or None,
        )
    click.echo(rep.markdown())
