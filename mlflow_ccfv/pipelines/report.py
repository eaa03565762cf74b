"""The ``report`` step: correlations of the stored scores with the stored fine-tune Dice.

Everything is read back from the registry, never from memory: for every version of the bank, the
tags ``transferability.<method>.<dataset>`` (written by ``score``) and ``finetune.dice.<dataset>``
(written by ``finetune``). :mod:`mlflow_ccfv.study.report` computes weighted Kendall's tau, Pearson
and top-1 regret per (dataset, method) and writes Table 1, Table 2 and the Fig.-2 scatter plots;
this module logs them to a run: metrics ``<dataset>.<method>.weighted_tau`` / ``.pearson`` /
``.top1_regret`` (and ``avg.<method>.*`` across datasets), the tables (Markdown, CSV) and the PNGs.

The evidence tables need each fine-tuning's per-case, per-seed Dice table: it is read from the
run each version's ``finetune.run.<dataset>`` tag names (``dice_per_case.csv``). Metrics: the 95%
interval bounds ``<...>.low`` / ``.high`` of every figure, the selection value
``<dataset>.<method>.top1_dice`` / ``.top3_dice``, ``<dataset>.bank.random_dice`` / ``.best_dice``,
``<dataset>.noise_ceiling`` and ``<dataset>.<method>.permutation_p``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.pipelines.finetune import DICE_TABLE
from mlflow_ccfv.study.report import Report, write_report
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.runs import command_run, run_csv
from mlflow_ccfv.tracking.search import DEFAULT_BANK, bank_versions, get_version
from mlflow_ccfv.tracking.tag_values import scores_from_tags as tag_scores

__all__ = [
    "ReportSettings",
    "dice_tables",
    "pretraining_curves",
    "report_bank",
    "report_metrics",
    "report_tables",
    "scores_from_tags",
]

_logger = logging.getLogger(__name__)


def scores_from_tags(versions: Sequence, datasets: Sequence[str] | None = None):
    """:func:`mlflow_ccfv.tracking.tag_values.scores_from_tags` over every estimator (the study's long table)."""
    return tag_scores(versions, METHODS, datasets)


def dice_tables(frame) -> dict[tuple[str, str], object]:
    """``(dataset, model)`` -> the per-case, per-seed Dice table of the run its ``finetune_run`` names
    (missing runs or artifacts are skipped with a warning: that model then counts with its tagged Dice)."""
    out = {}
    for row in frame.drop_duplicates(["dataset", "model"]).itertuples():
        run_id = getattr(row, "finetune_run", "")
        if not run_id:
            continue
        try:
            out[(row.dataset, row.model)] = run_csv(run_id, DICE_TABLE)
        except Exception as exc:  # an old or deleted run: the report still runs, without that table
            _logger.warning("no Dice table for %s on %s (run %s): %s", row.model, row.dataset, run_id, exc)
    return out


def pretraining_curves(versions: Sequence) -> pd.DataFrame:
    """The ``source_dice`` history of every pre-training run of ``versions`` (tag ``pretrain.run_id``):
    ``model``, ``architecture``, ``source_dataset``, ``step``, ``source_dice`` (one run counted once)."""
    rows, seen = [], set()
    client = mlflow.MlflowClient()
    for v in versions:
        tags = dict(v.tags or {})
        run_id = tags.get(T.pretrain_tag("run_id"))
        if not run_id or run_id in seen:
            continue
        seen.add(run_id)
        try:
            history = client.get_metric_history(run_id, T.SOURCE_DICE_METRIC)
        except Exception as exc:  # a deleted run: no curve for it
            _logger.warning("no pre-training curve for %s/%s: %s", v.name, v.version, exc)
            continue
        for m in history:
            rows.append(
                {
                    "model": f"{v.name}/{v.version}",
                    "architecture": tags.get(T.ARCHITECTURE, ""),
                    "source_dataset": tags.get(T.SOURCE_DATASET, ""),
                    "step": int(m.step),
                    "source_dice": float(m.value),
                }
            )
    return pd.DataFrame(rows, columns=["model", "architecture", "source_dataset", "step", "source_dice"])


def _read_tables(paths: Sequence[str | Path]) -> pd.DataFrame | None:
    """The long tables at ``paths`` (``scores.csv`` files), concatenated; a missing file names itself."""
    frames = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: no such scores table (a study's scores.csv); check the path.")
        frames.append(pd.read_csv(p))
    return pd.concat(frames, ignore_index=True) if frames else None


@dataclass(frozen=True)
class ReportSettings:
    """How a report ranks and resamples: ``rank_by``, the method of the Dice-against-score plots and of
    the goal table (``auto``: ``ccfv_twin`` where the bank has its random-init controls, else ``ccfv``);
    ``n_resamples``, the bootstrap resamples of the intervals; ``in_domain``, target -> the sources of
    its own task (the sanity property (b)); ``other_targets``, stored long tables (``scores.csv`` of an
    earlier study) whose targets join the sanity table and the pre-registered rule for the default."""

    rank_by: str = "auto"
    n_resamples: int = 1000
    in_domain: Mapping[str, Sequence[str]] | None = None
    other_targets: Sequence[str | Path] = ()


def report_bank(
    bank: str = DEFAULT_BANK,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    settings: ReportSettings | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Build the report for ``bank`` (or explicit ``models:/`` URIs) on ``datasets`` (default: all with Dice),
    with ``settings`` (default :class:`ReportSettings`).

    Logs metrics and artifacts to the active run, or to a new run ``report <bank>``; ``out_dir``: also
    keep the tables and plots there.
    """
    settings = settings or ReportSettings()
    versions = [get_version(m) for m in models] if models else bank_versions(bank)
    frame = _scored_frame(versions, bank, datasets)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir else Path(tmp)
        report = write_report(
            frame,
            folder,
            dice_tables(frame),
            rank_by=settings.rank_by,
            n_resamples=settings.n_resamples,
            curves=pretraining_curves(versions),
            in_domain=settings.in_domain,
            other_targets=_read_tables(settings.other_targets),
        )
        if log_to_mlflow:
            _log_report(report, frame, folder, bank)
    return report


def _scored_frame(versions: Sequence, bank: str, datasets: Sequence[str] | None) -> pd.DataFrame:
    """The long table of ``versions``' scores and Dice (:func:`scores_from_tags`); refused when empty or
    when a requested dataset has none."""
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
    return frame


def _log_report(report: Report, frame: pd.DataFrame, folder: Path, bank: str) -> None:
    """Log the report's params, metrics (:func:`report_metrics`) and ``folder`` to a run ``report <bank>``."""
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
    ev = report.evidence
    if ev is not None:
        for r in ev.figures.itertuples():
            name = T.report_metric(r.scope, r.method or "bank", r.statistic)
            values = T.interval_metrics(name, r.estimate, r.low, r.high)
            if r.statistic in ("weighted_tau", "pearson", "top1_regret"):
                values.pop(name, None)  # the point estimate is logged above, from the tagged Dice
            out.update(values)
        for r in ev.noise.itertuples():
            out.update(T.interval_metrics(T.noise_ceiling_metric(r.dataset), r.estimate, r.low, r.high))
        for r in ev.pvalues.itertuples():
            if r.permutation_p == r.permutation_p:
                out[T.permutation_metric(r.dataset, r.method)] = float(r.permutation_p)
    return out


def report_tables(report: Report) -> dict[str, pd.DataFrame]:
    """The tables :meth:`Report.markdown` prints, by name, with their index as columns (``report --json``);
    ``correlations``: every (dataset, method) row they summarise. Empty tables are left out."""
    tables = {
        "table1": report.table1,
        "table2": report.table2,
        "regret": report.regret,
        "discrimination": report.discrimination,
        "by_architecture": report.by_architecture,
        "source_dice": report.source_dice,
        "plateau": report.plateau,
        "goal": report.goal,
        "correlations": report.correlations,
    }
    return {
        name: frame.reset_index() if _named_index(frame) else frame for name, frame in tables.items() if not frame.empty
    }


def _named_index(frame: pd.DataFrame) -> bool:
    return any(name is not None for name in frame.index.names)
