"""``mlflow-ccfv compare-studies``: the development and the confirmation study side by side, and the
pre-registered decision (docs/preregistration.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import command, exit_on_input_error
from mlflow_ccfv.options import split_list

__all__ = ["compare_studies"]


@command()
@shared.folder_option("--development", "Report folder (--out-dir) of the development study.", required=True)
@shared.folder_option(
    "--confirmation", "Report folder (--out-dir) of the confirmation study (fresh synthetic seed).", required=True
)
@click.option("--methods", default="", help="Comma-separated methods to show (default: every method in both).")
@click.option("--out", default="", type=click.Path(dir_okay=False), help="Also write the Markdown to this file.")
def compare_studies(**options) -> None:
    """Compare two study reports and apply the pre-registered decision rule to each variant."""
    from mlflow_ccfv.study.goal import compare_studies as compare

    with exit_on_input_error("compare-studies"):
        result = compare(options["development"], options["confirmation"], split_list(options["methods"]) or None)
    text = result.markdown()
    if options["out"]:
        Path(options["out"]).write_text(text)
    click.echo(text)
