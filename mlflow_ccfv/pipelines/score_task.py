"""One version's scoring: what :func:`~mlflow_ccfv.pipelines.score.score_versions` runs per version.

:class:`ScoreConfig` says how every version is scored and what ranks them; a :class:`VersionTask` is one
version with that configuration and where it is recorded; :func:`score_version` loads the version from
the registry, scores it (:func:`mlflow_ccfv.scoring.score_model`) and, under a parent run, logs its
nested run and writes its ``transferability.<method>.<dataset>`` tags (completeness marker last). It runs
in the driver's process or as a Ray task (:func:`score_version_remote`); either way it returns a
:class:`VersionResult`, the version's scores or the error that stopped it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import mlflow

from mlflow_ccfv.data import Target, make_target
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.features import SamplerConfig
from mlflow_ccfv.features.resources import MemoryReleaser
from mlflow_ccfv.options import parse_ints
from mlflow_ccfv.scoring import CaseCache, ModelScores, parse_methods, score_model
from mlflow_ccfv.scoring.ranking import AUTO_RANK, DEFAULT_RANKING, needed_estimators
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import load_msd_dataset, mlflow_dataset
from mlflow_ccfv.tracking.load import LoadedModel, PickleRefusedError, load_version
from mlflow_ccfv.tracking.ranking_writes import write_version_scores
from mlflow_ccfv.tracking.runs import VersionRun, log_version_run
from mlflow_ccfv.tracking.search import DEFAULT_BANK
from mlflow_ccfv.tracking.server import lost_tracking_server

__all__ = [
    "ScoreConfig",
    "TargetSource",
    "VersionResult",
    "VersionTask",
    "coordinates",
    "score_loaded",
    "score_version",
    "score_version_remote",
    "settings_of",
    "with_rank_method",
]

_logger = logging.getLogger(__name__)


def with_rank_method(methods: Sequence[str], rank_by: str) -> list[str]:
    """``methods`` plus what ``rank_by`` needs (an estimator, or ``ccfv_twin``: ``ccfv``); an unknown
    ranking is an :class:`~mlflow_ccfv.errors.OptionError`."""
    needed = needed_estimators(rank_by)
    if any(n not in METHODS for n in needed):
        raise OptionError(
            f"--rank-by {rank_by!r} is not a ranking; choose {AUTO_RANK} (the default: {DEFAULT_RANKING} where "
            f"every model has the random-init twin of its network, else {needed_estimators(AUTO_RANK)[-1]}), "
            f"an estimator ({', '.join(METHODS)}), <estimator>_twin (the estimator minus that of the model's "
            "random-init twin, e.g. ccfv_twin) or rank_aggregate."
        )
    return list(dict.fromkeys([*methods, *needed]))


@dataclass(frozen=True)
class ScoreConfig:
    """How every version is scored, and what ranks them.

    ``methods``: the estimators (empty: :data:`~mlflow_ccfv.scoring.DEFAULT_METHODS`), completed on
    construction with what ``rank_by`` needs (:func:`with_rank_method`; unknown names are refused);
    ``sampler``: the sampler settings that differ from :class:`~mlflow_ccfv.features.SamplerConfig`'s
    defaults (a ``SamplerConfig`` given is stored as its dict; None or empty: the defaults); ``force``:
    recompute cached features; ``cache_dir``: the feature cache (a path given is stored as text; None:
    ``$MLFLOW_CCFV_CACHE``, else ``.ccfv-cache``); ``device`` (None or empty: CUDA when available, else
    CPU) and ``amp`` (mixed-precision inference): see :func:`mlflow_ccfv.scoring.score_model`;
    ``rank_by``: what orders the table, the rank tags and the ``best-<dataset>`` alias (an estimator,
    ``<estimator>_twin``, ``rank_aggregate`` or ``auto``); ``allow_pickle``: load ``mlflow.pytorch``
    versions (None: ``MLFLOW_CCFV_ALLOW_PICKLE`` decides).
    """

    methods: Sequence[str] = ()
    sampler: Mapping[str, Any] | None = None
    force: bool = False
    cache_dir: str | None = None
    device: str | None = None
    amp: bool = False
    rank_by: str = AUTO_RANK
    allow_pickle: bool | None = None

    def __post_init__(self) -> None:
        methods = with_rank_method(parse_methods(self.methods or None), self.rank_by)
        object.__setattr__(self, "methods", tuple(methods))
        sampler = self.sampler.to_dict() if isinstance(self.sampler, SamplerConfig) else self.sampler
        object.__setattr__(self, "sampler", dict(sampler) if sampler else None)
        object.__setattr__(self, "cache_dir", str(self.cache_dir) if self.cache_dir else None)
        object.__setattr__(self, "device", self.device or None)

    @property
    def settings(self) -> str:
        """The value of ``transferability.sampler.<dataset>``: see :func:`settings_of`."""
        return settings_of(self.sampler)


def settings_of(sampler_config: SamplerConfig | Mapping[str, Any] | None) -> str:
    """The value of ``transferability.sampler.<dataset>``: ``default``, or the digest of the sampler
    settings that differ from :class:`~mlflow_ccfv.features.SamplerConfig`'s defaults."""
    if sampler_config is None:
        return T.DEFAULT_SETTINGS
    chosen = sampler_config.to_dict() if isinstance(sampler_config, SamplerConfig) else dict(sampler_config)
    return T.settings_digest(chosen, SamplerConfig().to_dict())


def score_loaded(
    loaded: LoadedModel, target: Target, config: ScoreConfig | None = None, cases: CaseCache | None = None
) -> ModelScores:
    """:func:`mlflow_ccfv.scoring.score_model` for a version loaded from the registry, with ``config``'s
    methods, sampler settings, cache, device and precision, on the target's images normalised as the
    version recorded (an imported model's own normalisation), else as the target's."""
    config = config or ScoreConfig()
    patch = loaded.tags.get(T.PATCH_SIZE)
    return score_model(
        loaded.module,
        loaded.feature_layers,
        target,
        list(config.methods),
        config.sampler,
        model_id=loaded.model_id,
        label=loaded.label,
        force=config.force,
        cache_dir=config.cache_dir,
        patch_size=parse_ints(patch, T.PATCH_SIZE) if patch else None,
        device=config.device,
        amp=config.amp,
        cases=cases,
        normalization=loaded.normalization,
    )


@dataclass
class VersionResult:
    """The outcome for one version: its scores, or the error that stopped it."""

    label: str
    name: str | None
    version: str | None
    model_id: str | None
    tags: dict
    result: ModelScores | None
    seconds: float
    error: str | None = None
    skipped: bool = False
    target_digest: str | None = None
    run_id: str | None = None

    @classmethod
    def failed(cls, item: str, error: str, *, seconds: float = 0.0, skipped: bool = False) -> VersionResult:
        """The result of a version known only by its URI ``item`` (it never loaded, or its task was lost)."""
        name, version = coordinates(item)
        return cls(item.removeprefix("models:/"), name, version, None, {}, None, seconds, error, skipped)

    @property
    def metrics(self) -> dict[str, float]:
        """Every MLflow metric of the version: the methods' scores and the per-layer C_cons, F_v."""
        if self.result is None:
            return {}
        return {**self.result.scores, **T.layer_metrics(self.result.layers)}

    def row(self) -> dict[str, Any]:
        """The version's row of :func:`~mlflow_ccfv.study.ranking.rank_table`."""
        described = {column: self.tags.get(tag) for column, tag in _TAG_COLUMNS}
        return {
            "model": self.label,
            "name": self.name,
            "version": self.version,
            "model_id": self.model_id,
            **described,
            "bank": self.tags.get(T.BANK, DEFAULT_BANK),
            **(self.result.scores if self.result else {}),
            "cached": bool(self.result and self.result.cached),
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


#: The ranked table's columns read from a version's tags: (column, tag).
_TAG_COLUMNS = (("architecture", T.ARCHITECTURE), ("source_dataset", T.SOURCE_DATASET), ("network", T.NETWORK))


def coordinates(item: str) -> tuple[str | None, str | None]:
    """``(name, version)`` of a ``models:/<name>/<version>`` URI (known even when loading fails), else Nones."""
    body, _, number = item.removeprefix("models:/").rpartition("/")
    return (body, number) if body and number.isdigit() else (None, None)


@dataclass(frozen=True)
class TargetSource:
    """Where a worker finds the target: ``dataset`` is a logged dataset (``runs:/<run_id>/<folder>``,
    downloaded once per worker machine) or a task folder path every worker can read (a shared file
    system); ``split`` and ``seed`` select the cases as :func:`~mlflow_ccfv.data.make_target` does."""

    dataset: str
    split: str = "train"
    seed: int = 0
    cache_dir: str | None = None


@lru_cache(maxsize=2)
def _worker_target(source: TargetSource) -> tuple[Target, CaseCache]:
    """The target and its pre-processed cases, loaded once per worker process (Ray reuses workers)."""
    target = make_target(load_msd_dataset(source.dataset, cache_dir=source.cache_dir), source.split, source.seed)
    return target, CaseCache(target=target)


@dataclass(frozen=True)
class VersionTask:
    """One version's scoring: ``item`` (``models:/<name>/<version>``), its ``config`` (``device``: the one
    the driver resolved, or None for a Ray worker's own), and where it is recorded: with
    ``parent_run_id``, its run is logged under that run and its score tags written, for the sampler
    ``settings`` (:func:`settings_of`)."""

    item: str
    config: ScoreConfig
    parent_run_id: str | None = None
    source: TargetSource | None = None
    settings: str = T.DEFAULT_SETTINGS


def _score_item(task: VersionTask, target: Target, cases: CaseCache | None) -> VersionResult:
    """Load and score ``task.item``: its scores, or the error (a refused pickle: skipped) that stopped
    it; a lost tracking server is raised, since no other version can be scored or recorded either."""
    start = time.perf_counter()
    loaded = None
    try:
        loaded = load_version(task.item, allow_pickle=task.config.allow_pickle)
        result = score_loaded(loaded, target, task.config, cases)
        return VersionResult(
            loaded.label,
            loaded.name,
            str(loaded.version),
            loaded.model_id,
            loaded.tags,
            result,
            time.perf_counter() - start,
        )
    except PickleRefusedError as exc:  # not a failure of the version: the user has not opted in
        _logger.warning("skipped %s", exc)
        return VersionResult.failed(task.item, f"skipped: {exc}", skipped=True)
    except Exception as exc:  # reported by name; the other versions are still scored
        lost = lost_tracking_server(exc)
        if lost is not None:
            raise lost from None
        _logger.error("%s failed: %s", task.item, exc)
        failed = VersionResult.failed(task.item, f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        if loaded is not None:
            failed.label, failed.model_id, failed.tags = loaded.label, loaded.model_id, loaded.tags
            failed.name = loaded.name or failed.name
            failed.version = str(loaded.version) if loaded.version else failed.version
        return failed


def _record(task: VersionTask, result: VersionResult, scores: ModelScores, sampler: dict, target: Target) -> None:
    """Log the scored version's run (``scores``, computed with the ``sampler`` settings) under
    ``task.parent_run_id``, with its Dice beside the scores when it was fine-tuned before, and write its
    score tags, completeness marker last."""
    record = VersionRun(
        label=result.label,
        model_id=result.model_id,
        target=target,
        ds=mlflow_dataset(target),
        methods=list(task.config.methods),
        cached=scores.cached,
        sampler=sampler,
        metrics=result.metrics,
        settings=task.settings,
        normalization=scores.normalization,
    )
    run_id = log_version_run(record, parent_run_id=task.parent_run_id)
    result.run_id = run_id
    dice = result.tags.get(T.dice_tag(target.name))
    if dice is not None:  # fine-tuned before: the measured Dice beside the scores
        mlflow.MlflowClient().log_metric(run_id, T.FINETUNE_DICE, float(dice))
    if result.name and result.version:  # marker last: never a partial set seen as complete
        write_version_scores(
            result.name,
            result.version,
            target.name,
            scores.scores,
            settings=task.settings,
            data_digest=target.digest,
        )


def score_version(task: VersionTask, target: Target | None = None, cases: CaseCache | None = None) -> VersionResult:
    """Score one version (on ``target``, or on ``task.source`` loaded in this process) and, with
    ``task.parent_run_id``, record it: its run under the parent (idempotent: a retried task logs nothing
    twice) and its ``transferability.<method>.<dataset>`` tags. Removing a failed version's stale tags,
    the ranks and the alias are the driver's (:func:`~mlflow_ccfv.pipelines.score.score_versions`)."""
    if target is None:
        if task.source is None:
            raise ValueError("score_version needs a target or a task with a TargetSource.")
        target, cases = _worker_target(task.source)
    result = _score_item(task, target, cases)
    result.target_digest = target.digest
    scores = result.result
    if task.parent_run_id and scores is not None and scores.config is not None:
        _record(task, result, scores, scores.config.to_dict(), target)
    return result


def score_version_remote(task: VersionTask) -> VersionResult:
    """:func:`score_version` as a Ray task (the target from ``task.source``; tracking URI from the
    worker's environment, set by the executor). A worker process runs many tasks: it gives freed
    memory back to the OS after each (:class:`~mlflow_ccfv.features.resources.MemoryReleaser`)."""
    try:
        return score_version(task)
    finally:
        _WORKER_RELEASER.tick()


#: One per (Ray worker) process; what outlives a worker's first task stays frozen (the process is the job's).
_WORKER_RELEASER = MemoryReleaser(freeze=True)
