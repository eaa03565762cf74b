"""The two ranking variants pre-registered in docs/preregistration.md, computed at the report
level from the stored scores of every version of a target's bank; ``ccfv`` itself is never changed.

- ``ccfv_twin``: CC-FV calibrated against a random-init twin of the model's own architecture,
  ``ccfv(model) - ccfv(twin)`` on the same target; the twin is the bank's control of that architecture
  (``source_dataset=random-init``) and scores 0; a model without a twin in the bank has no score.
- ``rank_aggregate``: minus the mean rank (1 = highest score, ties averaged) of the model under
  ``ccfv_no_variety``, ``gbc`` and ``logme`` within the target's bank (over those of the three it has).

Input and output: the study's long table (``dataset``, ``model``, ``method``, ``score``, ``dice`` and
the descriptive columns ``architecture``, ``source_dataset``); :func:`add_variants` appends the
variants' rows, copying each model's descriptive columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "AGGREGATED_METHODS",
    "AUTO_RANK",
    "CONTROL_SOURCE",
    "TWIN_METHOD",
    "TWIN_SEED",
    "VARIANTS",
    "add_variants",
    "choose_ranking",
    "rank_aggregate",
    "twin_calibrated",
    "twin_scores",
]

#: The variants' method names.
VARIANTS = ("ccfv_twin", "rank_aggregate")
#: The variant ``score --rank-by`` can rank by (from the stored ``ccfv`` scores of a model and its twin).
TWIN_METHOD = "ccfv_twin"
#: The default ranking (``score --rank-by auto``, the evaluator): ``ccfv_twin``, the method the measured
#: evidence supports (docs/study.md), wherever every ranked model has a random-init twin; else ``ccfv``.
AUTO_RANK = "auto"
#: The estimators ``rank_aggregate`` averages the ranks of (chosen in docs/preregistration.md).
AGGREGATED_METHODS = ("ccfv_no_variety", "gbc", "logme")
#: Seed of the random weights of a twin that ``score`` registers or the evaluator builds.
TWIN_SEED = 0
#: ``source_dataset`` of the random-init controls.
CONTROL_SOURCE = "random-init"


def twin_calibrated(frame: pd.DataFrame, method: str = "ccfv") -> pd.DataFrame:
    """Rows ``ccfv_twin``: per (dataset, model) ``method``'s score minus that of the bank's random-init
    control of the same architecture (the first by model id if there are several). Needs the
    ``architecture`` and ``source_dataset`` columns; models without a twin get no row."""
    missing = [c for c in ("architecture", "source_dataset") if c not in frame.columns]
    if missing:
        raise ValueError(f"ccfv_twin needs the column(s) {', '.join(missing)} (which model is whose random twin).")
    sub = frame[frame["method"] == method]
    rows = []
    for _, g in sub.groupby("dataset", sort=True):
        with_twin = set(g.loc[g["source_dataset"].astype(str) == CONTROL_SOURCE, "architecture"])
        members = [(str(r.model), r.architecture, str(r.source_dataset), r.score) for r in g.itertuples(index=False)]
        for row, value in zip(g.itertuples(index=False), twin_scores(members)):
            if row.architecture in with_twin:
                rows.append({**row._asdict(), "method": TWIN_METHOD, "score": value})
    return pd.DataFrame(rows, columns=frame.columns)


def twin_scores(members: Sequence[tuple[str, str | None, str | None, float]]) -> list[float]:
    """``ccfv_twin`` of each ``(model, architecture, source_dataset, ccfv)``: its ``ccfv`` minus that of the
    random-init control of its architecture among ``members`` (the first by model id if several), NaN
    when its architecture has no control there; the same definition as :func:`twin_calibrated`."""
    twins: dict[str | None, float] = {}
    for _, arch, source, score in sorted(members, key=lambda m: m[0]):
        if source == CONTROL_SOURCE and arch not in twins:
            twins[arch] = float(score)
    return [float(score) - twins[arch] if arch in twins else float("nan") for _, arch, _, score in members]


def choose_ranking(members: Sequence[tuple[str, str | None, str | None, float]]) -> tuple[str, list[str]]:
    """What ``auto`` ranks ``(model, architecture, source_dataset, ccfv)`` members by: ``ccfv_twin`` when
    every member's architecture has a random-init control among them, else ``ccfv`` (one rule for the
    whole group: ranking some models by a calibrated score and others not would mix two scales).
    Returns ``(method, architectures without a twin)``."""
    controlled = {arch for _, arch, source, _ in members if source == CONTROL_SOURCE}
    lonely = sorted({str(arch) for _, arch, _, _ in members if arch not in controlled})
    return (TWIN_METHOD if members and not lonely else "ccfv"), lonely


def rank_aggregate(frame: pd.DataFrame, methods: tuple[str, ...] = AGGREGATED_METHODS) -> pd.DataFrame:
    """Rows ``rank_aggregate``: per (dataset, model) minus the mean of its ranks under ``methods``
    within the dataset's bank (rank 1 = highest score, ties averaged; non-finite scores unranked)."""
    sub = frame[frame["method"].isin(methods)]
    rows = []
    for _, g in sub.groupby("dataset", sort=True):
        ranks: dict[str, list[float]] = {}
        for _, m in g.groupby("method"):
            m = m[np.isfinite(m["score"].astype(float))]
            if m.empty:
                continue
            r = stats.rankdata(-m["score"].to_numpy(float), method="average")
            for model, value in zip(m["model"], r):
                ranks.setdefault(str(model), []).append(float(value))
        first = g.drop_duplicates("model").set_index("model")
        for model, values in sorted(ranks.items()):
            out = {"model": model, **first.loc[model].to_dict()}
            out["method"] = "rank_aggregate"
            out["score"] = -float(np.mean(values))
            rows.append(out)
    return pd.DataFrame(rows, columns=frame.columns)


def add_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the rows of every variant it has the scores for (none when it lacks them)."""
    parts = [frame[~frame["method"].isin(VARIANTS)]]
    if {"architecture", "source_dataset"} <= set(frame.columns) and (frame["method"] == "ccfv").any():
        parts.append(twin_calibrated(frame))
    if frame["method"].isin(AGGREGATED_METHODS).any():
        parts.append(rank_aggregate(frame))
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
