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
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.study.report import Report, write_report
from mlflow_ccfv.tracking.registry import BANK_TAG, DEFAULT_BANK, bank_versions, get_version
from mlflow_ccfv.tracking.runs import command_run

log = logging.getLogger(__name__)

_SCORE_TAG = re.compile(r"^transferability\.(?P<method>[a-z_]+)\.(?P<dataset>.+)$")
_DICE_TAG = re.compile(r"^finetune\.dice\.(?P<dataset>.+)$")


def scores_from_tags(versions: Sequence, datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """The long table of :mod:`mlflow_ccfv.study.report` from the versions' tags.

    One row per (dataset, version, method) where the version has both the score tag and the Dice
    tag for that dataset; ``datasets=None`` takes every dataset that has a Dice tag.
    """
    rows = []
    for v in versions:
        tags = dict(v.tags or {})
        dice = {m["dataset"]: float(val) for k, val in tags.items() if (m := _DICE_TAG.match(k))}
        for key, value in tags.items():
            m = _SCORE_TAG.match(key)
            if not m or m["method"] not in METHODS:
                continue  # e.g. transferability.rank.<dataset>
            dataset = m["dataset"]
            if dataset not in dice or (datasets and dataset not in datasets):
                continue
            rows.append({"dataset": dataset, "model": f"{v.name}/{v.version}", "method": m["method"],
                         "score": float(value), "dice": dice[dataset],
                         "architecture": tags.get("architecture", ""),
                         "source_dataset": tags.get("source_dataset", "")})
    return pd.DataFrame(rows, columns=["dataset", "model", "method", "score", "dice", "architecture",
                                       "source_dataset"])


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
    import mlflow

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
                mlflow.set_tags({"ccfv.stage": "report", BANK_TAG: bank})
                mlflow.log_params({"bank": bank, "datasets": ",".join(sorted(frame["dataset"].unique())),
                                   "n_versions": frame["model"].nunique()})
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
                out[f"{row.dataset}.{row.method}.{col}"] = float(value)
    for method, g in corr.groupby("method"):
        for col in ("weighted_tau", "pearson", "top1_regret"):
            value = g[col].mean()
            if value == value:
                out[f"avg.{method}.{col}"] = float(value)
    arch = report.architecture_correlations
    if not arch.empty:
        for (architecture, method), g in arch.groupby(["architecture", "method"]):
            value = g["weighted_tau"].mean()
            if value == value:
                out[f"{architecture}.avg.{method}.weighted_tau"] = float(value)
    for row in report.discrimination.itertuples():
        out[f"{row.Index}.dice_spread"] = float(row.dice_spread)
    return out
