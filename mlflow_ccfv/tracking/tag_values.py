"""The values of the tags :mod:`~mlflow_ccfv.tracking.tags` names, written and read back: the score
completeness marker, the owner process of a run, and the tables read from model versions' tags (a
version's scores on a dataset, the stored ranking, the study's long table of scores beside Dice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.scoring.ranking import TWIN_METHOD
from mlflow_ccfv.tracking.tags import (
    ARCHITECTURE,
    BANK,
    NETWORK,
    PRETRAIN_CHECKPOINT,
    PRETRAIN_SOURCE_DICE,
    RANK,
    RANKED_BY,
    SAMPLER,
    SCORED,
    SOURCE_DATASET,
    dice_sd_tag,
    finetune_run_tag,
    finetune_seeds_tag,
    parse_dice_tag,
    parse_score_tag,
    scored_tag,
)

__all__ = [
    "SCORE_COLUMNS",
    "dataset_score_keys",
    "dataset_scores",
    "number_value",
    "parse_process",
    "parse_scored_value",
    "process_value",
    "scored_value",
    "scores_from_tags",
    "stored_ranking",
    "with_stored_digits",
]

#: The columns of :func:`scores_from_tags`.
SCORE_COLUMNS = (
    "dataset",
    "model",
    "method",
    "score",
    "dice",
    "architecture",
    "source_dataset",
    "dice_sd",
    "seeds",
    "finetune_run",
    "source_dice",
    "checkpoint",
    "network",
)
#: The leading columns of :func:`stored_ranking`.
_RANKING_HEAD = ("rank", "model", "bank", "architecture", "source_dataset")


def number_value(value: float) -> str:
    """A score as a tag value: six significant digits."""
    return f"{value:.6g}"


def with_stored_digits(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of ``frame`` whose score ``columns`` hold the values as stored (:func:`number_value`), what
    ``rank`` reads back: a table printed from freshly computed scores then matches one read from the tags."""
    out = frame.copy()
    for column in columns:
        out[column] = out[column].map(lambda v: float(number_value(v)), na_action="ignore")
    return out


def scored_value(settings: str, data_digest: str) -> str:
    """``<settings>/<data digest>``: the value of :func:`~mlflow_ccfv.tracking.tags.scored_tag` (the
    ranking group of the scores)."""
    return f"{settings}/{data_digest}"


def parse_scored_value(value: str) -> tuple[str, str] | None:
    """``(settings, data digest)`` of a :func:`scored_value`; None if malformed."""
    settings, sep, digest = (value or "").partition("/")
    return (settings, digest) if sep and settings and digest else None


def process_value(host: str, pid: int, started: str) -> str:
    """``<host>:<pid>:<started>``: the value of :data:`~mlflow_ccfv.tracking.tags.PROCESS`."""
    return f"{host}:{pid}:{started}"


def parse_process(value: str) -> tuple[str, int, str] | None:
    """``(host, pid, started)`` of a :data:`~mlflow_ccfv.tracking.tags.PROCESS` value; None if malformed."""
    host, _, rest = (value or "").rpartition(":")
    host, _, pid = host.rpartition(":")
    return (host, int(pid), rest) if host and pid.isdigit() else None


def dataset_score_keys(tags: Mapping[str, str], dataset: str) -> list[str]:
    """Every ``transferability.<method>.<dataset>`` key among ``tags`` (scores, rank, sampler, marker),
    the completeness marker first (the order in which a stale set is deleted)."""
    keys = [k for k in tags if (p := parse_score_tag(k)) is not None and p[1] == dataset]
    return sorted(keys, key=lambda k: (k != scored_tag(dataset), k))


def dataset_scores(tags: Mapping[str, str], dataset: str) -> dict[str, float]:
    """The estimator scores among a version's ``tags`` on ``dataset`` (``transferability.<method>.<dataset>``
    without rank, sampler and marker; unreadable values skipped)."""
    out: dict[str, float] = {}
    for key, value in tags.items():
        parsed = parse_score_tag(key)
        if parsed is None or parsed[1] != dataset or parsed[0] in (RANK, SAMPLER, SCORED, RANKED_BY):
            continue
        try:
            out[parsed[0]] = float(value)
        except ValueError:
            continue
    return out


def _ranking_row(v: ModelVersion, dataset: str) -> dict[str, Any] | None:
    """The :func:`stored_ranking` row of version ``v``; None when it holds no rank on ``dataset``."""
    tags: Mapping[str, str] = dict(v.tags or {})
    row: dict[str, Any] = {}
    for key, value in tags.items():
        parsed = parse_score_tag(key)
        if parsed is None or parsed[1] != dataset:
            continue
        if parsed[0] == RANKED_BY:
            row[RANKED_BY] = value
            continue
        try:
            row[parsed[0]] = int(value) if parsed[0] == RANK else float(value)
        except ValueError:
            continue  # a hand-edited tag that is not a number is not a score
    if RANK not in row:
        return None
    return {
        "rank": row.pop(RANK),
        "model": f"{v.name}/{v.version}",
        "bank": tags.get(BANK, ""),
        "architecture": tags.get(ARCHITECTURE, ""),
        "source_dataset": tags.get(SOURCE_DATASET, ""),
        **row,
    }


def stored_ranking(versions: Iterable[ModelVersion], dataset: str) -> pd.DataFrame:
    """The stored ranking of ``dataset``: one row per version holding ``transferability.rank.<dataset>``
    (ranks are per bank), with ``rank``, ``model`` (``name/version``), ``bank``, ``architecture``,
    ``source_dataset`` and one column per stored method score, the column ranked by first (its
    ``transferability.ranked_by.<dataset>``), ordered by bank and rank."""
    rows = [row for v in versions if (row := _ranking_row(v, dataset)) is not None]
    head = list(_RANKING_HEAD)
    if not rows:
        return pd.DataFrame(columns=head)
    frame = pd.DataFrame(rows)
    by = [str(v) for v in frame.pop(RANKED_BY).dropna().unique()] if RANKED_BY in frame.columns else []
    scores = sorted(c for c in frame.columns if c not in head)
    first = [c for c in (*by, TWIN_METHOD, "ccfv") if c in scores]
    first = list(dict.fromkeys(first))
    frame = frame[head + first + [c for c in scores if c not in first]]
    return frame.sort_values(["bank", "rank", "model"], kind="stable").reset_index(drop=True)


def scores_from_tags(
    versions: Iterable[ModelVersion],
    methods: Iterable[str],
    datasets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The study's long table from the versions' tags: one row per (dataset, version, method) where the
    version has both ``transferability.<method>.<dataset>`` and ``finetune.dice.<dataset>``.

    ``methods``: the estimator names to keep (the rank tag and unknown names are skipped);
    ``datasets=None`` takes every dataset that has a Dice tag. Score tags without their completeness
    marker (:func:`~mlflow_ccfv.tracking.tags.scored_tag`) are partial and skipped.
    """
    known = set(methods) - {RANK, SAMPLER, SCORED}
    rows = []
    for v in versions:
        tags: Mapping[str, str] = dict(v.tags or {})
        dice = {d: float(val) for k, val in tags.items() if (d := parse_dice_tag(k)) is not None}
        source_dice = float(tags.get(PRETRAIN_SOURCE_DICE, "nan"))
        for key, value in tags.items():
            parsed = parse_score_tag(key)
            if parsed is None or parsed[0] not in known:
                continue
            method, dataset = parsed
            if dataset not in dice or (datasets and dataset not in datasets):
                continue
            if scored_tag(dataset) not in tags:  # a partial set (a killed score): not a current score
                continue
            rows.append(
                {
                    "dataset": dataset,
                    "model": f"{v.name}/{v.version}",
                    "method": method,
                    "score": float(value),
                    "dice": dice[dataset],
                    "architecture": tags.get(ARCHITECTURE, ""),
                    "source_dataset": tags.get(SOURCE_DATASET, ""),
                    "network": tags.get(NETWORK, ""),
                    "dice_sd": float(tags.get(dice_sd_tag(dataset), "nan")),
                    "seeds": tags.get(finetune_seeds_tag(dataset), ""),
                    "finetune_run": tags.get(finetune_run_tag(dataset), ""),
                    "source_dice": source_dice,
                    "checkpoint": tags.get(PRETRAIN_CHECKPOINT, ""),
                }
            )
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
