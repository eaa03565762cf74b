"""The ranking variants pre-registered in docs/preregistration.md, computed at the report level from the
stored scores of every version of a target's bank; ``ccfv`` itself is never changed.

- ``ccfv_twin``: CC-FV calibrated against the random-init twin of the model's own network,
  ``ccfv(model) - ccfv(twin)`` on the same target (the rule: :mod:`mlflow_ccfv.scoring.ranking`).
- ``rank_aggregate``: minus the mean rank (1 = highest score, ties averaged) of the model under
  ``ccfv_no_variety``, ``gbc`` and ``logme`` within the target's bank (over those of the three it has).

Input and output: the study's long table (``dataset``, ``model``, ``method``, ``score``, ``dice`` and
the descriptive columns ``architecture``, ``source_dataset`` and, where known, ``network``: the network
identity; a table without it, written before identities were tagged, matches twins by architecture,
which is what identity meant there: one spec per architecture); :func:`add_variants` appends the
variants' rows, copying each model's descriptive columns.
"""

from __future__ import annotations

import pandas as pd

from mlflow_ccfv.scoring.ranking import (
    AGGREGATED_METHODS,
    AUTO_RANK,
    CONTROL_SOURCE,
    RANK_AGGREGATE,
    TWIN_METHOD,
    TWIN_SEED,
    Member,
    ranking_score,
    twin_scores,
)

__all__ = [
    "AGGREGATED_METHODS",
    "AUTO_RANK",
    "CONTROL_SOURCE",
    "TWIN_METHOD",
    "TWIN_CALIBRATED",
    "TWIN_SEED",
    "VARIANTS",
    "add_variants",
    "frame_members",
    "rank_aggregate",
    "twin_calibrated",
    "twin_name",
]

#: The estimators whose twin-calibrated variant ``<method>_twin`` the report adds (docs/preregistration.md,
#: pre-registration 2: twin calibration per component).
TWIN_CALIBRATED = ("ccfv", "ccfv_no_variety", "ccfv_single_scale")


def twin_name(method: str) -> str:
    """The name of ``method`` minus its twin's: ``ccfv_twin`` for ``ccfv``, else ``<method>_twin``."""
    return TWIN_METHOD if method == "ccfv" else f"{method}_twin"


#: The variants' method names.
VARIANTS = (*(twin_name(m) for m in TWIN_CALIBRATED), RANK_AGGREGATE)


def _identity_column(frame: pd.DataFrame) -> pd.Series:
    if "network" in frame.columns:
        known = frame["network"].notna() & (frame["network"].astype(str) != "")
        return frame["network"].where(known, frame["architecture"]).astype(str)
    return frame["architecture"].astype(str)


def frame_members(group: pd.DataFrame, method: str = "ccfv") -> list[Member]:
    """One target's rows of ``method`` as ranking members (their score under ``method``)."""
    identity = _identity_column(group)
    return [
        Member(str(r.model), ident, str(r.source_dataset), {method: float(r.score)})
        for r, ident in zip(group.itertuples(index=False), identity)
    ]


def twin_calibrated(frame: pd.DataFrame, method: str = "ccfv") -> pd.DataFrame:
    """Rows ``<method>_twin`` (``ccfv_twin`` for ``ccfv``): per (dataset, model) ``method``'s score minus
    that of the bank's random-init control of the same network
    (:func:`~mlflow_ccfv.scoring.ranking.twin_scores`). Needs the ``architecture`` and ``source_dataset``
    columns; models without a twin get no row."""
    missing = [c for c in ("architecture", "source_dataset") if c not in frame.columns]
    if missing:
        raise ValueError(f"ccfv_twin needs the column(s) {', '.join(missing)} (which model is whose random twin).")
    sub = frame[frame["method"] == method]
    rows = []
    for _, g in sub.groupby("dataset", sort=True):
        for row, value in zip(g.itertuples(index=False), twin_scores(frame_members(g, method), method)):
            if value == value:
                rows.append({**row._asdict(), "method": twin_name(method), "score": value})
    return pd.DataFrame(rows, columns=frame.columns)


def rank_aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ``rank_aggregate``: per (dataset, model) minus the mean of its ranks under
    :data:`~mlflow_ccfv.scoring.ranking.AGGREGATED_METHODS` within the dataset's bank (the rule of
    :func:`~mlflow_ccfv.scoring.ranking.ranking_score`: rank 1 = highest score, ties averaged)."""
    sub = frame[frame["method"].isin(AGGREGATED_METHODS)]
    rows = []
    for _, g in sub.groupby("dataset", sort=True):
        wide = g.pivot_table(index="model", columns="method", values="score", aggfunc="first")
        first = g.drop_duplicates("model").set_index("model")
        members = [
            Member(str(model), None, None, {m: float(v) for m, v in values.items() if v == v})
            for model, values in wide.iterrows()
        ]
        for member, value in zip(members, ranking_score(members, RANK_AGGREGATE)):
            if value == value:
                rows.append(
                    {
                        **first.loc[member.model].to_dict(),
                        "model": member.model,
                        "method": RANK_AGGREGATE,
                        "score": value,
                    }
                )
    return pd.DataFrame(rows, columns=frame.columns)


def add_variants(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the rows of every variant it has the scores for (none when it lacks them)."""
    parts = [frame[~frame["method"].isin(VARIANTS)]]
    if {"architecture", "source_dataset"} <= set(frame.columns):
        parts += [twin_calibrated(frame, m) for m in TWIN_CALIBRATED if (frame["method"] == m).any()]
    if frame["method"].isin(AGGREGATED_METHODS).any():
        parts.append(rank_aggregate(frame))
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
