"""Writing scores, ranks and aliases on model versions: one version's score tags, then the ranking of a
whole bank recomputed from the registry (:func:`rerank`).

After any scoring of a dataset, :func:`rerank` recomputes ``transferability.rank.<dataset>`` and the
``best-<dataset>`` alias from every version in the registry that holds a complete, current score
(docs/reliability.md). Every write is retried under concurrent writers.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.scoring.ranking import AUTO_RANK, Member, RankOrder, rank_members
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.search import BANK_TAG, DEFAULT_BANK, search_versions
from mlflow_ccfv.tracking.summary import refresh_summaries
from mlflow_ccfv.tracking.tag_values import (
    dataset_score_keys,
    dataset_scores,
    number_value,
    parse_scored_value,
    scored_value,
)

__all__ = [
    "Ranking",
    "clear_version_scores",
    "delete_version_tag",
    "move_alias",
    "rerank",
    "set_version_tag",
    "write_version_scores",
]

_logger = logging.getLogger(__name__)

#: Page size of the ranking's registry searches (every page is read: no silent truncation).
_PAGE = 200


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    """Set one tag of a version (retried under concurrent writers)."""
    retrying(MlflowClient().set_model_version_tag, name, version, key, value, what=f"tag {key} on {name}/{version}")


def delete_version_tag(name: str, version: str, key: str) -> None:
    """Remove one tag of a version (retried; a tag already gone is fine)."""
    try:
        retrying(MlflowClient().delete_model_version_tag, name, version, key, what=f"untag {key} on {name}/{version}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # already gone (another writer): the goal
            raise


def write_version_scores(
    name: str,
    version: str,
    dataset: str,
    scores: dict[str, float],
    *,
    settings: str = T.DEFAULT_SETTINGS,
    data_digest: str,
) -> None:
    """Write one version's score tags on ``dataset`` so that no partial set is ever seen as complete.

    MLflow has no batch write for version tags, so the completeness marker ``transferability.scored.
    <dataset>`` (value ``<settings>/<data digest>``) is deleted first, then the scores, the sampler
    settings (``transferability.sampler.<dataset>``) are written, then the marker last. Score tags of
    methods not in ``scores`` left over from an earlier scoring are removed. The rank is not written
    here: call :func:`rerank` once the scores of a batch are stored. The version's description summary
    follows the tags (:func:`~mlflow_ccfv.tracking.summary.refresh_version_summary`).
    """
    current = dict(MlflowClient().get_model_version(name, version).tags or {})
    marker = T.scored_tag(dataset)
    if marker in current:
        delete_version_tag(name, version, marker)
    wanted = {T.score_tag(m, dataset): number_value(v) for m, v in scores.items()}
    wanted[T.sampler_tag(dataset)] = settings
    for key in dataset_score_keys(current, dataset):
        if key not in wanted and key not in (marker, T.rank_tag(dataset)):
            delete_version_tag(name, version, key)
    for key, value in wanted.items():
        if current.get(key) != value:
            set_version_tag(name, version, key, value)
    set_version_tag(name, version, marker, scored_value(settings, data_digest))
    refresh_summaries([(name, version)])


def clear_version_scores(name: str, version: str, dataset: str) -> list[str]:
    """Remove every ``transferability.*.<dataset>`` tag of a version whose latest scoring failed (its old
    scores are stale); the marker goes first. Returns the keys removed. Call :func:`rerank` afterwards."""
    current = dict(MlflowClient().get_model_version(name, version).tags or {})
    keys = dataset_score_keys(current, dataset)
    for key in keys:
        delete_version_tag(name, version, key)
    refresh_summaries([(name, version)])
    return keys


def _search_versions(filter_string: str) -> list[ModelVersion]:
    """:func:`~mlflow_ccfv.tracking.search.search_versions` with the ranking's page size (``_PAGE``;
    tests shrink it to force paging)."""
    return search_versions(filter_string, page_size=_PAGE)


def _in_bank(mv: ModelVersion, bank: str | None) -> bool:
    """Whether version ``mv`` belongs to ``bank`` (None: every bank)."""
    return bank is None or (mv.tags or {}).get(BANK_TAG, DEFAULT_BANK) == bank


def _alias_holders(alias: str) -> dict[str, str]:
    """``{registered model name: version}`` of every registered model holding ``alias`` (all pages)."""
    client = MlflowClient()
    holders: dict[str, str] = {}
    token = None
    while True:
        page = client.search_registered_models(max_results=_PAGE, page_token=token)
        for rm in page:
            aliases = rm.aliases or {}
            if alias in aliases:
                holders[rm.name] = str(aliases[alias])
        token = page.token
        if not token:
            return holders


def _model_bank(name: str) -> str:
    """The bank of a registered model (its ``ccfv.bank`` tag)."""
    try:
        return (MlflowClient().get_registered_model(name).tags or {}).get(BANK_TAG, DEFAULT_BANK)
    except MlflowException:
        return DEFAULT_BANK


def _set_alias(name: str, alias: str, version: str) -> None:
    retrying(MlflowClient().set_registered_model_alias, name, alias, version, what=f"alias {alias}")


def _drop_alias(name: str, alias: str) -> None:
    """Take ``alias`` from the registered model ``name`` (one removed by another writer: the goal)."""
    try:
        retrying(MlflowClient().delete_registered_model_alias, name, alias, what=f"remove alias {alias}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


@dataclass
class Ranking:
    """The outcome of :func:`rerank`: ``ranked`` = ``(name, version, score)`` of the candidates best first
    (rank 1 first; random-init controls are not ranked); ``best`` = the alias holder ``(name, version)``
    or None; ``group`` = the ranked scores' marker value; ``bank`` = the bank ranked within;
    ``order`` = the rule's full outcome (:class:`~mlflow_ccfv.scoring.ranking.RankOrder`: the
    controls, the candidates without a twin, the controls above every candidate)."""

    dataset: str
    group: str
    ranked: list[tuple[str, str, float]]
    best: tuple[str, str] | None
    rounds: int
    method: str = "ccfv"
    without_twin: list[str] = field(default_factory=list)
    bank: str | None = None
    order: RankOrder | None = None

    def warning(self) -> str | None:
        """The ranking's sentence for the user when a random-init control beats every candidate."""
        return self.order.warning() if self.order is not None else None


def _split_label(label: str) -> tuple[str, str]:
    name, _, version = label.rpartition("/")
    return name, version


@dataclass
class _Plan:
    order: RankOrder
    ranked: list[tuple[str, str, float]]
    set_tags: list[tuple[str, str, str, str]]
    drop_tags: list[tuple[str, str, str]]
    drop_alias: list[str]
    set_alias: tuple[str, str] | None

    @property
    def changes(self) -> bool:
        return bool(self.set_tags or self.drop_tags or self.drop_alias or self.set_alias)


def _group_members(dataset: str, group: str, bank: str | None) -> tuple[list[Member], dict[str, dict[str, str]]]:
    """The versions of ``bank`` (None: every bank) whose marker on ``dataset`` is ``group``, as ranking
    members, and each one's tags by label."""
    marker = T.scored_tag(dataset)
    members, tags_of = [], {}
    for mv in _search_versions(f"tags.`{marker}` = '{group}'"):
        tags = mv.tags or {}
        if not _in_bank(mv, bank):
            continue
        scores = dataset_scores(tags, dataset)
        if not scores:
            continue  # a marker without a readable score: not comparable
        label = f"{mv.name}/{mv.version}"
        members.append(Member(label, tags.get(T.NETWORK), tags.get(T.SOURCE_DATASET), scores))
        tags_of[label] = tags
    return members, tags_of


def _tags_to_set(order: RankOrder, tags_of: dict[str, dict[str, str]], dataset: str) -> list[tuple[str, str, str, str]]:
    """``(name, version, key, value)`` of the rank and ranking tags of ``order`` that differ from the
    stored ones; a ranking that is not an estimator (``ccfv_twin`` ...) is stored beside the estimators'."""
    rank_key, method_key = T.rank_tag(dataset), T.score_tag(order.method, dataset)
    by_key = T.ranked_by_tag(dataset)
    set_tags: list[tuple[str, str, str, str]] = []
    for i, (m, _) in enumerate(order.ranked, 1):
        name, version = _split_label(m.model)
        if tags_of[m.model].get(by_key) != order.method:
            set_tags.append((name, version, by_key, order.method))
        if tags_of[m.model].get(rank_key) != str(i):
            set_tags.append((name, version, rank_key, str(i)))
    not_estimator = order.method not in METHODS
    for m, value in [*order.ranked, *order.controls]:
        name, version = _split_label(m.model)
        text = number_value(value)
        if not_estimator and value == value and tags_of[m.model].get(method_key) != text:
            set_tags.append((name, version, method_key, text))
    return set_tags


def _plan_ranking(dataset: str, group: str, method: str, bank: str | None) -> _Plan:
    """Read the registry: the ranking of ``group`` within ``bank`` (:func:`~mlflow_ccfv.scoring.ranking.
    rank_members`), the rank and ranking-score tags to write or remove, and the alias changes."""
    members, tags_of = _group_members(dataset, group, bank)
    order = rank_members(members, method)
    rank_key, by_key = T.rank_tag(dataset), T.ranked_by_tag(dataset)
    ranked = [(*_split_label(m.model), value) for m, value in order.ranked]
    candidates = {m.model for m, _ in order.ranked}
    drop_tags = [
        (mv.name, str(mv.version), key)
        for mv in _search_versions(f"tags.`{rank_key}` LIKE '%'")
        if f"{mv.name}/{mv.version}" not in candidates and _in_bank(mv, bank)
        for key in (by_key, rank_key)  # the ranking first: a rank is never left without what it follows
        if key in (mv.tags or {})
    ]
    best = _split_label(order.best.model) if order.best is not None else None
    holders = _alias_holders(T.best_alias(dataset))
    if bank is not None:
        holders = {n: v for n, v in holders.items() if _model_bank(n) == bank}
    drop_alias = sorted(n for n in holders if best is None or n != best[0])
    set_alias = best if best is not None and holders.get(best[0]) != best[1] else None
    return _Plan(order, ranked, _tags_to_set(order, tags_of, dataset), drop_tags, drop_alias, set_alias)


def _apply(plan: _Plan, alias: str) -> list[tuple[str, str]]:
    """Write ``plan``'s tag and alias changes; returns the versions whose tags it changed."""
    for name, version, key, value in plan.set_tags:
        set_version_tag(name, version, key, value)
    for name, version, key in plan.drop_tags:
        delete_version_tag(name, version, key)
    if plan.set_alias is not None:
        _set_alias(plan.set_alias[0], alias, plan.set_alias[1])
    for name in plan.drop_alias:
        _drop_alias(name, alias)
    return [(n, v) for n, v, *_ in [*plan.set_tags, *plan.drop_tags]]


def _scored_group(dataset: str, settings: str, data_digest: str | None, bank: str | None) -> str:
    """The marker value ranked together: ``settings`` on ``data_digest``, or (None) on the data of the
    version of ``bank`` scored last with these settings (the newest marker)."""
    if data_digest is None:
        marker = T.scored_tag(dataset)
        newest = [
            mv
            for mv in _search_versions(f"tags.`{marker}` LIKE '{settings}/%'")
            if parse_scored_value((mv.tags or {}).get(marker, "")) and _in_bank(mv, bank)
        ]
        if newest:
            latest = max(newest, key=lambda mv: (mv.last_updated_timestamp or 0, mv.name, int(mv.version)))
            data_digest = parse_scored_value(latest.tags[marker])[1]  # type: ignore[index]
    return scored_value(settings, data_digest or "-")


def _settled(plan: _Plan, dataset: str, group: str, rounds: int, bank: str | None) -> Ranking:
    """The :class:`Ranking` of a plan with nothing left to change."""
    best = plan.ranked[0][:2] if plan.ranked else None
    if best is not None:
        _logger.info("%s: rank 1 of %d version(s) by %s is %s/%s", dataset, len(plan.ranked), plan.order.method, *best)
    order = plan.order
    return Ranking(dataset, group, plan.ranked, best, rounds, order.method, order.without_twin, bank, order)


def rerank(
    dataset: str,
    settings: str = T.DEFAULT_SETTINGS,
    data_digest: str | None = None,
    *,
    method: str = AUTO_RANK,
    bank: str | None = None,
    rounds: int = 10,
) -> Ranking:
    """Recompute ``transferability.rank.<dataset>`` and the ``best-<dataset>`` alias within ``bank``
    (None: over every bank) from the registry.

    The ranked versions are the versions of the bank whose completeness marker says their scores on
    ``dataset`` were made with ``settings`` on data ``data_digest`` (None: the data digest of the
    version scored last with these settings, i.e. the newest marker). Random-init controls are scored
    but never ranked nor aliased (:mod:`mlflow_ccfv.scoring.ranking`). Whatever subset was just scored,
    exactly one version of the bank is rank 1 and exactly one of its registered models holds the alias;
    versions of the bank outside the group lose their rank tag (their scores stay, tagged with their
    settings). With ``ccfv_twin`` (or ``auto`` resolving to it) each member's ``transferability.
    ccfv_twin.<dataset>`` is written too. Once the tags are settled, the description summary of every
    ranked version, control and version whose rank tag this call changed is refreshed.

    Safe when several scorers (processes, Ray tasks) finish at once: each store its own versions'
    scores (:func:`write_version_scores`) and then calls this; every round reads the whole bank,
    writes only what differs, and repeats until a read finds nothing to change, so the last writer's
    final read has seen every stored score. ``method`` orders the versions (higher = better): an
    estimator, ``ccfv_twin``, or ``auto`` (:func:`~mlflow_ccfv.scoring.ranking.choose_ranking`; the
    returned :class:`Ranking` says which).
    """
    group = _scored_group(dataset, settings, data_digest, bank)
    jitter = random.Random()
    alias = T.best_alias(dataset)
    touched: list[tuple[str, str]] = []  # versions whose rank or ranking-score tags this call changed
    for round_ in range(1, rounds + 1):
        plan = _plan_ranking(dataset, group, method, bank)
        if not plan.changes:
            ranked = [_split_label(m.model) for m, _ in [*plan.order.ranked, *plan.order.controls]]
            refresh_summaries([*touched, *ranked])  # the descriptions follow the tags just settled
            return _settled(plan, dataset, group, round_, bank)
        touched += _apply(plan, alias)
        time.sleep(0.02 * jitter.random())  # let a concurrent reranker's writes land before re-reading
    raise RegistryError(
        f"The ranks of {dataset} kept changing under concurrent writers after {rounds} rounds; "
        "run `mlflow-ccfv score` again once the other scorers have finished."
    )


def move_alias(alias: str, name: str, version: str, bank: str) -> list[str]:
    """Give ``alias`` to version ``version`` of the registered model ``name`` and take it from every other
    registered model of ``bank`` (one holder per bank, as ``best-<dataset>``); returns the names it left."""
    holders = {n: v for n, v in _alias_holders(alias).items() if _model_bank(n) == bank}
    if holders.get(name) != str(version):
        _set_alias(name, alias, str(version))
    left = sorted(n for n in holders if n != name)
    for other in left:
        _drop_alias(other, alias)
    return left
