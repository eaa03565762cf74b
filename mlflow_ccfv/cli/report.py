"""``mlflow-ccfv report``: Table 1, Table 2 and Fig. 2 from the stored transferability and Dice tags."""

from __future__ import annotations

import sys

import click

from mlflow_ccfv.cli.base import CCFVCommand


@click.command(cls=CCFVCommand)
@click.option("--bank", default="default", show_default=True, help="Versions tagged ccfv.bank=<bank>.")
@click.option("--datasets", default="", help="Comma-separated dataset names (default: every dataset with Dice tags).")
@click.option("--models", default="", help="Instead of the bank: comma-separated models:/<name>/<version> URIs.")
@click.option("--out-dir", "out_dir", default="", help="Also write the tables and plots to this folder.")
def report(**options) -> None:
    """Weighted Kendall's tau, Pearson and top-1 regret of every estimator vs fine-tune Dice; logged to a run."""
    from mlflow_ccfv.tracking.reporting import report_bank

    try:
        rep = report_bank(options["bank"], datasets=[d for d in options["datasets"].split(",") if d] or None,
                          models=[m for m in options["models"].split(",") if m] or None,
                          out_dir=options["out_dir"] or None)
    except (ValueError, LookupError) as exc:
        click.echo(f"report failed: {exc}", err=True)
        sys.exit(2)
    click.echo(rep.markdown())
