"""``mlflow-ccfv report``: Table 1, Table 2 and Fig. 2 from the stored transferability and Dice tags."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.options import split_list

__all__ = ["report"]


@command()
@shared.bank_option("Versions tagged ccfv.bank=<bank>.")
@click.option("--datasets", default="", help="Comma-separated dataset names (default: every dataset with Dice tags).")
@shared.models_option()
@shared.folder_option("--out-dir", "Also write the tables and plots here.")
@shared.rank_by_option("The ranking whose goal table and Dice-against-score plots are written.")
@click.option(
    "--in-domain",
    default="",
    help="Targets whose own task is among the sources, TARGET=SOURCE[+SOURCE...] comma-separated (e.g. "
    "Task42=Task41): the sanity property that one of those models ranks in the top 2.",
)
@click.option(
    "--other-targets",
    default="",
    help="Comma-separated scores.csv files of earlier studies whose targets join the sanity table and the "
    "pre-registered rule for the default ranking (e.g. results/study-dev-4k/scores.csv).",
)
@shared.experiment_option()
@shared.json_option("the tables")
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
