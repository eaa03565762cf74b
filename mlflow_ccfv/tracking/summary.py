"""A registered version's description: a short Markdown summary of its transferability, kept current.

The version page of the MLflow UI opens on the description (its tags are folded below it), so the
summary puts there, per dataset, what the tags say: the rank, ``ccfv``, the ranking score
(of the ranking the rank follows) and the fine-tune Dice ± its standard deviation over
seeds. The summary sits under the heading :data:`SUMMARY_HEADING`; text a user wrote above it is kept,
and everything from the heading down is regenerated from the tags by :func:`refresh_version_summary`,
which every writer of those tags calls (``score``: :func:`~mlflow_ccfv.tracking.ranking_writes.
write_version_scores`, :func:`~mlflow_ccfv.tracking.ranking_writes.rerank`; ``finetune``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.scoring.ranking import TWIN_METHOD
from mlflow_ccfv.tracking.retry import retrying

__all__ = [
    "SUMMARY_HEADING",
    "refresh_summaries",
    "refresh_version_summary",
    "summary_datasets",
    "version_description",
    "version_summary",
]

_logger = logging.getLogger(__name__)

#: The line that starts the generated part of a version's description (everything above it is kept).
SUMMARY_HEADING = "#### Transferability (mlflow-ccfv)"
_NOTE = "_Regenerated from this version's tags whenever its scores, rank or fine-tune Dice change; notes written above the heading are kept._"
_NONE = "–"


def summary_datasets(tags: Mapping[str, str]) -> list[str]:
    """The datasets a version's ``tags`` hold a score, a rank or a fine-tune Dice for, sorted."""
    datasets = {p[1] for k in tags if (p := T.parse_score_tag(k)) is not None}
    datasets |= {d for k in tags if (d := T.parse_dice_tag(k)) is not None}
    return sorted(datasets)


def _number(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return None if math.isnan(value) else value


def _dice(tags: Mapping[str, str], dataset: str) -> str:
    mean = _number(tags, T.dice_tag(dataset))
    if mean is None:
        return _NONE
    sd = _number(tags, T.dice_sd_tag(dataset))
    seeds = [s for s in tags.get(T.finetune_seeds_tag(dataset), "").split(",") if s.strip()]
    text = f"{mean:.4f}" if sd is None else f"{mean:.4f} ± {sd:.4f}"
    return f"{text} ({len(seeds)} seeds)" if len(seeds) > 1 else text


def version_summary(tags: Mapping[str, str]) -> str:
    """The generated Markdown of a version with ``tags``: the heading, one line of explanation and a
    table ``dataset | rank | ccfv | ranking score | fine-tune Dice`` with one row per dataset of
    :func:`summary_datasets`; empty when there is none. The ranking score is the score of the ranking the
    rank follows (``transferability.ranked_by.<dataset>``; ``ccfv_twin`` when none is stored), labelled
    with its name, else ``ccfv``."""
    datasets = summary_datasets(tags)
    if not datasets:
        return ""
    lines = [
        SUMMARY_HEADING,
        "",
        _NOTE,
        "",
        "| dataset | rank | ccfv | ranking score | fine-tune Dice |",
        "|---|---|---|---|---|",
    ]
    for dataset in datasets:
        rank = tags.get(T.rank_tag(dataset), _NONE)
        ccfv = _number(tags, T.score_tag("ccfv", dataset))
        by = tags.get(T.ranked_by_tag(dataset)) or TWIN_METHOD
        value = _number(tags, T.score_tag(by, dataset))
        ranking = f"{value:.4f} ({by})" if value is not None else f"{ccfv:.4f} (ccfv)" if ccfv is not None else _NONE
        ccfv_text = _NONE if ccfv is None else f"{ccfv:.4f}"
        lines.append(f"| {dataset} | {rank} | {ccfv_text} | {ranking} | {_dice(tags, dataset)} |")
    return "\n".join(lines) + "\n"


def version_description(current: str | None, tags: Mapping[str, str]) -> str:
    """The description a version with ``tags`` should have: the part of ``current`` above
    :data:`SUMMARY_HEADING` (all of it when the heading is absent), then :func:`version_summary`."""
    lines = (current or "").splitlines()
    kept = lines[: lines.index(SUMMARY_HEADING)] if SUMMARY_HEADING in lines else lines
    user = "\n".join(kept).rstrip()
    summary = version_summary(tags)
    return f"{user}\n\n{summary}" if user and summary else (user or summary)


def refresh_version_summary(name: str, version: str, *, rounds: int = 5) -> str:
    """Rewrite the generated part of version ``name``/``version``'s description from its current tags;
    returns the description. Reads the version and writes only when the description differs, then
    reads again until a read finds it matching the tags it read (``rounds`` at most): with several
    writers of the same version (each calling this after its own tag writes), the last to finish has
    seen every tag. Writes are retried under concurrent writers (:func:`~mlflow_ccfv.tracking.retry.
    retrying`)."""
    client = MlflowClient()
    wanted = ""
    for _ in range(rounds):
        mv = retrying(client.get_model_version, name, version, what=f"read {name}/{version}")
        wanted = version_description(mv.description, dict(mv.tags or {}))
        if (mv.description or "") == wanted:
            return wanted
        retrying(
            client.update_model_version, name, version, description=wanted, what=f"description of {name}/{version}"
        )
    _logger.debug("%s/%s: description rewritten %d times under concurrent writers", name, version, rounds)
    return wanted


def refresh_summaries(versions: Iterable[tuple[str, str]]) -> None:
    """:func:`refresh_version_summary` of each ``(name, version)`` (once each); a version that cannot be
    updated (deleted meanwhile, a store error) is logged as a warning and skipped: the description
    is a view of the tags, never the reason a command fails."""
    for name, version in dict.fromkeys(versions):
        try:
            refresh_version_summary(name, version)
        except MlflowException as exc:
            _logger.warning("could not update the description of %s/%s: %s", name, version, exc)
