"""``mlflow-ccfv report``: Table 1, Table 2 and Fig. 2 from the stored transferability and Dice tags."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import (
    CCFVCommand,
    RankBy,
    check_tracking_server,
    exit_on_input_error,
    experiment_option,
    json_option,
)
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.options import split_list

__all__ = ["report"]


@click.command(cls=CCFVCommand)
@click.option("--bank", default="default", show_default=True, help="Versions tagged ccfv.bank=<bank>.")
@click.option("--datasets", default="", help="Comma-separated dataset names (default: every dataset with Dice tags).")
@click.option("--models", default="", help="Instead of the bank: comma-separated models:/<name>/<version> URIs.")
@click.option(
    "--out-dir", "out_dir", default="", type=click.Path(file_okay=False), help="Also write the tables and plots here."
)
@click.option(
    "--rank-by",
    "rank_by",
    default="auto",
    show_default=True,
    type=RankBy(),
    help="The ranking whose goal table and Dice-against-score plots are written: auto (ccfv_twin where the "
    "bank has random-init controls, else ccfv), ccfv_twin, or an estimator.",
)
@click.option(
    "--in-domain",
    "in_domain",
    default="",
    help="Targets whose own task is among the sources, TARGET=SOURCE[+SOURCE...] comma-separated (e.g. "
    "Task42=Task41): the sanity property that one of those models ranks in the top 2.",
)
@click.option(
    "--other-targets",
    "other_targets",
    default="",
    help="Comma-separated scores.csv files of earlier studies whose targets join the sanity table and the "
    "pre-registered rule for the default ranking (e.g. results/study-dev-4k/scores.csv).",
)
@experiment_option()
@json_option("the tables")
def report(**options) -> None:
    """Compare every estimator with fine-tune Dice (weighted Kendall's tau, Pearson, top-1 regret); log to a run."""
    from mlflow_ccfv.pipelines.rank import frames_json
    from mlflow_ccfv.pipelines.report import ReportSettings, report_bank, report_tables

    with exit_on_input_error("report"):
        settings = ReportSettings(
            rank_by=options["rank_by"],
            in_domain=_in_domain(options["in_domain"]),
            other_targets=split_list(options["other_targets"]),
        )
        check_tracking_server(options["experiment"])
        rep = report_bank(
            options["bank"],
            datasets=split_list(options["datasets"]) or None,
            models=split_list(options["models"]) or None,
            out_dir=options["out_dir"] or None,
            settings=settings,
        )
    click.echo(frames_json(report_tables(rep)) if options["json"] else rep.markdown())


def _in_domain(text: str) -> dict[str, tuple[str, ...]]:
    """``Task42=Task41,Task05=Task04+Task06`` -> {target: sources}; a malformed entry names the option."""
    out: dict[str, tuple[str, ...]] = {}
    for entry in split_list(text):
        target, sep, sources = entry.partition("=")
        if not sep or not target.strip() or not sources.strip():
            raise OptionError(f"--in-domain: {entry!r} is not TARGET=SOURCE[+SOURCE...], e.g. Task42=Task41.")
        out[target.strip()] = tuple(s.strip() for s in sources.split("+") if s.strip())
    return out
