"""The ``report`` step: correlations of the stored scores with the stored fine-tune Dice.

Everything is read back from the registry, never from memory: for every version of the bank, the
tags ``transferability.<method>.<dataset>`` (written by ``score``) and ``finetune.dice.<dataset>``
(written by ``finetune``). :mod:`mlflow_ccfv.study.report` computes weighted Kendall's tau, Pearson
and top-1 regret per (dataset, method) and writes Table 1, Table 2 and the Fig.-2 scatter plots;
this module logs them to a run: metrics ``<dataset>.<method>.weighted_tau`` / ``.pearson`` /
``.top1_regret`` (and ``avg.<method>.*`` across datasets), the tables (Markdown, CSV) and the PNGs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.study.report import Report, write_report
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.registry import DEFAULT_BANK, bank_versions, get_version
from mlflow_ccfv.tracking.runs import command_run

__all__ = ["report_bank", "report_metrics", "scores_from_tags"]

_logger = logging.getLogger(__name__)


def scores_from_tags(versions: Sequence, datasets: Sequence[str] | None = None):
    """:func:`mlflow_ccfv.tracking.tags.scores_from_tags` over every estimator (the study's long table)."""
    return T.scores_from_tags(versions, METHODS, datasets)


def report_bank(
    bank: str = DEFAULT_BANK,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Build the report for ``bank`` (or explicit ``models:/`` URIs) on ``datasets`` (default: all with Dice).

    Logs metrics and artifacts to the active run, or to a new run ``report <bank>``.
    """
    versions = [get_version(m) for m in models] if models else bank_versions(bank)
    frame = scores_from_tags(versions, datasets)
    if frame.empty:
        wanted = f" for {', '.join(datasets)}" if datasets else ""
        raise ValueError(
            f"No version of bank {bank!r} has both transferability.<method>.<dataset> and "
            f"finetune.dice.<dataset> tags{wanted}: run `score` and `finetune` on the dataset first."
        )
    missing = sorted(set(datasets or []) - set(frame["dataset"]))
    if missing:
        raise ValueError(f"No scored and fine-tuned versions for dataset(s) {', '.join(missing)}.")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir else Path(tmp)
        report = write_report(frame, folder)
        if log_to_mlflow:
            with command_run(f"report {bank}"):
                mlflow.set_tags({T.RUN_STAGE: "report", T.RUN_BANK: bank})
                mlflow.log_params(
                    {
                        "bank": bank,
                        "datasets": ",".join(sorted(frame["dataset"].unique())),
                        "n_versions": frame["model"].nunique(),
                    }
                )
                mlflow.log_metrics(report_metrics(report))
                mlflow.log_artifacts(str(folder), artifact_path="report")
    return report


def report_metrics(report: Report) -> dict[str, float]:
    """``<dataset>.<method>.<weighted_tau|pearson|top1_regret>``, ``avg.<method>.*`` (finite values only),
    ``<architecture>.avg.<method>.weighted_tau`` for a mixed bank and ``<dataset>.dice_spread``."""
    out: dict[str, float] = {}
    corr = report.correlations
    for row in corr.itertuples():
        for col in ("weighted_tau", "pearson", "top1_regret"):
            value = getattr(row, col)
            if value == value:
                out[T.report_metric(row.dataset, row.method, col)] = float(value)
    for method, g in corr.groupby("method"):
        for col in ("weighted_tau", "pearson", "top1_regret"):
            value = g[col].mean()
            if value == value:
                out[T.report_metric("avg", method, col)] = float(value)
    arch = report.architecture_correlations
    if not arch.empty:
        for (architecture, method), g in arch.groupby(["architecture", "method"]):
            value = g["weighted_tau"].mean()
            if value == value:
                out[T.report_metric(f"{architecture}.avg", method, "weighted_tau")] = float(value)
    for row in report.discrimination.itertuples():
        out[T.dice_spread_metric(row.Index)] = float(row.dice_spread)
    return out
