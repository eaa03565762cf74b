"""The ``score`` pipeline: score model versions on a target and record everything in MLflow.

Each version is loaded from the registry (:mod:`mlflow_ccfv.tracking.load`) and scored by
:func:`mlflow_ccfv.scoring.score_model` (the code path of the ``ccfv`` evaluator too); then, in the
active run or a new one, the target manifest is logged as an input, one nested run per version holds
its params and metrics (linked to its LoggedModel and the dataset), each version's score tags are
written with their completeness marker last, then the ranks and the ``best-<dataset>`` alias are
recomputed from the whole registry (:func:`~mlflow_ccfv.tracking.ranking_writes.rerank`), and the ranked
table (CSV, Markdown) and plot (PNG) become artifacts of the parent run. A version whose scoring
failed (an error, a lost Ray worker or cluster) or was interrupted loses its stale score tags before
the ranks are recomputed; an ``mlflow.pytorch`` (pickled) version is skipped without the pickle
opt-in. docs/reliability.md lists what holds under concurrent scorers, kills and a lost server.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mlflow_ccfv.data import MSDDataset, Target, make_target
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.features import SamplerConfig
from mlflow_ccfv.features.resources import MemoryReleaser, check_memory, inference_bytes
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.options import format_ints, parse_bool, parse_float, parse_int, parse_ints, split_list
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor, TaskFailure, make_executor
from mlflow_ccfv.scoring import RANK_METHOD, CaseCache, FeatureCache, ModelScores, parse_methods, score_model
from mlflow_ccfv.scoring.ranking import (
    AUTO_RANK,
    CONTROL_SOURCE,
    DEFAULT_RANKING,
    Member,
    RankOrder,
    is_twin,
    needed_estimators,
    rank_members,
)
from mlflow_ccfv.study.ranking import rank_table, ranking_plot, table_markdown
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import (
    is_dataset_reference,
    load_msd_dataset,
    log_dataset_artifacts,
    mlflow_dataset,
)
from mlflow_ccfv.tracking.load import LoadedModel, PickleRefusedError, load_version
from mlflow_ccfv.tracking.ranking_writes import Ranking, clear_version_scores, rerank, write_version_scores
from mlflow_ccfv.tracking.runs import VersionRun, log_input, log_version_run, recover_crashed, tag_process
from mlflow_ccfv.tracking.search import DEFAULT_BANK, registered_version, resolve_versions, version_uri
from mlflow_ccfv.tracking.server import lost_tracking_server
from mlflow_ccfv.tracking.views import ranking_view_url, save_ranking_view

__all__ = [
    "TargetSource",
    "VersionResult",
    "VersionTask",
    "check_roi_against_volumes",
    "sampler_overrides",
    "score_from_options",
    "score_loaded",
    "score_version",
    "score_version_remote",
    "score_versions",
    "settings_of",
]

_logger = logging.getLogger(__name__)


def score_loaded(
    loaded: LoadedModel,
    target: Target,
    methods: str | Sequence[str] | None = None,
    sampler_config: SamplerConfig | Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    cases: CaseCache | None = None,
    device: str | None = None,
    amp: bool = False,
) -> ModelScores:
    """:func:`mlflow_ccfv.scoring.score_model` for a version loaded from the registry, on the target's
    images normalised as the version recorded (an imported model's own normalisation), else as the target's."""
    patch = loaded.tags.get(T.PATCH_SIZE)
    return score_model(
        loaded.module,
        loaded.feature_layers,
        target,
        methods,
        sampler_config,
        model_id=loaded.model_id,
        label=loaded.label,
        patch_size=parse_ints(patch, T.PATCH_SIZE) if patch else None,
        force=force,
        cache_dir=cache_dir,
        cases=cases,
        device=device,
        amp=amp,
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

    @property
    def metrics(self) -> dict[str, float]:
        """Every MLflow metric of the version: the methods' scores and the per-layer C_cons, F_v."""
        if self.result is None:
            return {}
        return {**self.result.scores, **T.layer_metrics(self.result.layers)}

    def row(self) -> dict[str, Any]:
        """The version's row of :func:`~mlflow_ccfv.study.ranking.rank_table`."""
        return {
            "model": self.label,
            "name": self.name,
            "version": self.version,
            "model_id": self.model_id,
            "architecture": self.tags.get(T.ARCHITECTURE),
            "source_dataset": self.tags.get(T.SOURCE_DATASET),
            "network": self.tags.get(T.NETWORK),
            "bank": self.tags.get(T.BANK, DEFAULT_BANK),
            **(self.result.scores if self.result else {}),
            "cached": bool(self.result and self.result.cached),
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


def _coordinates(item: str) -> tuple[str | None, str | None]:
    """``(name, version)`` of a ``models:/<name>/<version>`` URI (known even when loading fails), else Nones."""
    body, _, number = item.removeprefix("models:/").rpartition("/")
    return (body, number) if body and number.isdigit() else (None, None)


def _score_one(
    item, target, methods, sampler_config, force, cache_dir, cases, device, amp, allow_pickle
) -> VersionResult:
    start = time.perf_counter()
    label = item if isinstance(item, str) else version_uri(item)
    name, version = _coordinates(item) if isinstance(item, str) else (item.name, str(item.version))
    loaded = None
    try:
        loaded = load_version(item, allow_pickle=allow_pickle)
        result = score_loaded(
            loaded,
            target,
            methods,
            sampler_config,
            force=force,
            cache_dir=cache_dir,
            cases=cases,
            device=device,
            amp=amp,
        )
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
        return VersionResult(
            label.removeprefix("models:/"), name, version, None, {}, None, 0.0, error=f"skipped: {exc}", skipped=True
        )
    except Exception as exc:  # reported by name; the other versions are still scored
        lost = lost_tracking_server(exc)
        if lost is not None:  # no other version can be scored or recorded either: stop here
            raise lost from None
        _logger.error("%s failed: %s", label, exc)
        return VersionResult(
            loaded.label if loaded else label.removeprefix("models:/"),
            getattr(loaded, "name", None) or name,
            str(loaded.version) if loaded and loaded.version else version,
            getattr(loaded, "model_id", None),
            getattr(loaded, "tags", {}),
            None,
            time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}",
        )


def settings_of(sampler_config: SamplerConfig | Mapping[str, Any] | None) -> str:
    """The value of ``transferability.sampler.<dataset>``: ``default``, or the digest of the sampler
    settings that differ from :class:`~mlflow_ccfv.features.SamplerConfig`'s defaults."""
    if sampler_config is None:
        return T.DEFAULT_SETTINGS
    chosen = sampler_config.to_dict() if isinstance(sampler_config, SamplerConfig) else dict(sampler_config)
    return T.settings_digest(chosen, SamplerConfig().to_dict())


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
    """One version's scoring: ``item`` (``models:/<name>/<version>``), the settings, and where it is
    recorded: with ``parent_run_id``, its run is logged under that run and its score tags written."""

    item: str
    methods: tuple[str, ...]
    sampler_config: Mapping[str, Any] | None = None
    force: bool = False
    cache_dir: str | None = None
    parent_run_id: str | None = None
    source: TargetSource | None = None
    device: str | None = None
    amp: bool = False
    allow_pickle: bool | None = None
    settings: str = T.DEFAULT_SETTINGS


def score_version(task: VersionTask, target: Target | None = None, cases: CaseCache | None = None) -> VersionResult:
    """Score one version (on ``target``, or on ``task.source`` loaded in this process) and, with
    ``task.parent_run_id``, record it: its run under the parent (idempotent: a retried task logs nothing
    twice) and its ``transferability.<method>.<dataset>`` tags. Removing a failed version's stale tags,
    the ranks and the alias are the driver's (:func:`score_versions`)."""
    if target is None:
        if task.source is None:
            raise ValueError("score_version needs a target or a task with a TargetSource.")
        target, cases = _worker_target(task.source)
    result = _score_one(
        task.item,
        target,
        list(task.methods),
        task.sampler_config,
        task.force,
        task.cache_dir,
        cases,
        task.device,
        task.amp,
        task.allow_pickle,
    )
    result.target_digest = target.digest
    if task.parent_run_id and result.result is not None and result.result.config is not None:
        run_id = log_version_run(
            VersionRun(
                label=result.label,
                model_id=result.model_id,
                target=target,
                ds=mlflow_dataset(target),
                methods=list(task.methods),
                cached=result.result.cached,
                sampler=result.result.config.to_dict(),
                metrics=result.metrics,
                settings=task.settings,
                normalization=result.result.normalization,
            ),
            parent_run_id=task.parent_run_id,
        )
        result.run_id = run_id
        dice = result.tags.get(T.dice_tag(target.name))
        if dice is not None:  # fine-tuned before: the measured Dice beside the scores
            mlflow.MlflowClient().log_metric(run_id, T.FINETUNE_DICE, float(dice))
        if result.name and result.version:  # marker last: never a partial set seen as complete
            write_version_scores(
                result.name,
                result.version,
                target.name,
                result.result.scores,
                settings=task.settings,
                data_digest=target.digest,
            )
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


def score_versions(
    versions_or_uris: Iterable,
    dataset: Target,
    methods: str | Sequence[str] | None = None,
    sampler_config: SamplerConfig | Mapping[str, Any] | None = None,
    force: bool = False,
    *,
    cache_dir: str | os.PathLike | None = None,
    log: bool = True,
    artifact_dir: str | os.PathLike | None = None,
    device: str | None = None,
    amp: bool = False,
    rank_by: str = AUTO_RANK,
    allow_pickle: bool | None = None,
    executor: Executor | None = None,
    source: TargetSource | None = None,
) -> pd.DataFrame:
    """Score versions (``ModelVersion`` objects or ``models:/`` URIs) on a target and record everything.

    ``dataset`` is a :class:`~mlflow_ccfv.data.Target` (:func:`~mlflow_ccfv.data.make_target`). With
    ``log`` (default), inside the active run or a new one: the target manifest as an input, one
    (nested) run per version with params and metrics linked to its LoggedModel and the dataset, the
    version tags and the ``best-<dataset>`` alias, and the ranked table (CSV, Markdown) and plot (PNG)
    as artifacts of the parent run. The ranks and the alias are then recomputed over every version of
    the registry scored on this dataset with the same sampler settings (:func:`rerank`), not only
    over ``versions_or_uris``. Returns the ranked table; failed versions are rows with ``error`` set
    (and their stale tags removed); ``mlflow.pytorch`` versions are skipped (``skipped`` true) unless
    ``allow_pickle`` or ``MLFLOW_CCFV_ALLOW_PICKLE`` opts in. ``device`` (default CUDA when available, else CPU) and ``amp`` (mixed-precision
    inference, an opt-in) say how the networks run; see :func:`mlflow_ccfv.scoring.score_model`.
    ``rank_by``: what orders the table, the rank tags and the ``best-<dataset>`` alias: an estimator
    (scored even when not in ``methods``), ``<estimator>_twin`` (e.g. ``ccfv_twin``), ``rank_aggregate``,
    or ``auto`` (default: :data:`~mlflow_ccfv.scoring.ranking.DEFAULT_RANKING`, LogME; the run's tag
    ``ccfv.ranked_by`` says which).

    ``executor``: where the versions are scored (default in this process;
    :class:`~mlflow_ccfv.pipelines.executors.RayExecutor`: one Ray task per version, each logging its own
    run and score tags, on the ``device`` given or its worker's default; ``source`` tells the workers
    where the target is, default its folder path). Ranks, rank tags and the alias are written here, once
    every version is done.
    """
    methods = _with_rank_method(parse_methods(methods), rank_by)
    items = [i if isinstance(i, str) else version_uri(i) for i in versions_or_uris]
    if not items:
        raise ValueError("No model versions to score.")
    executor = executor or SerialExecutor()
    # in this process: checked before any work; a Ray worker resolves its own (None: its GPU if it has one)
    run_on = str(resolve_device(device)) if executor.in_process else device
    if sampler_config is not None and isinstance(sampler_config, SamplerConfig):
        sampler_config = sampler_config.to_dict()
    ds = mlflow_dataset(dataset)
    settings = settings_of(sampler_config)
    active = mlflow.active_run()
    if log and active is None:
        recover_crashed()
        mlflow.start_run(run_name=f"score {dataset.name}")
        tag_process()
    parent = mlflow.active_run() if log else None
    status = "FINISHED"
    progress = _Progress(items)
    try:
        if parent is not None:
            log_input(ds, context="target")
            # Prefixed: `mlflow run` has already logged the entry point's own (string) parameters here.
            mlflow.log_params(
                T.prefixed_params(
                    T.RUN_PARAM_PREFIX,
                    {
                        "dataset": dataset.name,
                        "dataset_digest": dataset.digest,
                        "split": dataset.split,
                        "methods": ",".join(methods),
                        "n_versions": len(items),
                        "force": force,
                        "sampler_settings": settings,
                        "device": str(run_on),
                        "amp": amp,
                        "rank_by": rank_by,
                        "executor": executor.name,
                    },
                )
            )
        results = _run_version_tasks(
            items,
            dataset,
            methods,
            sampler_config,
            force,
            cache_dir,
            parent,
            executor,
            source,
            run_on,
            amp,
            allow_pickle,
            settings,
            progress,
        )
        rows = [r.row() for r in results]
        if parent is None:
            order = rank_members(_members(rows), rank_by)
            _warn_ranking(rank_by, order)
            table = _ranked_table(rows, methods, dataset.name, order)
            table.attrs["ranked_by"] = order.method
            return table
        failed = [r for r in results if r.error and not r.skipped]
        if failed:
            status = "FAILED"
            mlflow.set_tag(T.RUN_FAILED_VERSIONS, ",".join(r.label for r in failed))
            # wherever it failed (in the task, a lost worker or cluster): stale scores leave the ranking
            _forget_scores([(r.name, r.version) for r in failed], dataset.name, "its scoring failed")
        # The single place ranks, rank tags and the alias are written (after every task has finished),
        # from every score stored in the registry for this dataset and these settings, bank by bank.
        rankings = [
            rerank(dataset.name, settings, dataset.digest, method=rank_by, bank=bank)
            for bank in _banks_of(versions_or_uris, results)
        ]
        order = _merged_order(rankings, rank_by, rows)
        chosen = order.method
        mlflow.set_tag(T.RUN_RANKED_BY, chosen)
        _warn_ranking(rank_by, order)
        if order.control_above:
            mlflow.set_tag(T.RUN_FROM_SCRATCH, ",".join(order.control_above))
        table = _ranked_table(rows, methods, dataset.name, order, stored=rankings)
        table.attrs["ranked_by"] = chosen  # what the command line prints first
        shown = _shown_methods(methods, chosen)
        if chosen not in METHODS:  # the ranking's own score beside the estimators' on each version's run (UI sort)
            _log_ranking_metric(results, table, chosen)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(artifact_dir) if artifact_dir else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"ranking_{dataset.name}"
            table.to_csv(folder / f"{stem}.csv", index=False)
            note = table_markdown(table, shown)
            (folder / f"{stem}.md").write_text(note)
            ranking_plot(table, folder / f"{stem}.png", method=chosen)
            for suffix in ("csv", "md", "png"):
                mlflow.log_artifact(str(folder / f"{stem}.{suffix}"), artifact_path="ranking")
        # the run page's description: the ranked table; the Runs tab's shared view: the scores on screen
        mlflow.set_tag(T.RUN_NOTE, f"**Ranking of {dataset.name}** by {chosen} (rank 1 = best)\n\n{note}")
        save_ranking_view(parent.info.experiment_id, dataset.name, chosen)
        _logger.info("the ranking in the MLflow UI: %s", ranking_view_url(parent.info.experiment_id, dataset.name))
    except BaseException as exc:
        status = "FAILED"
        if parent is not None and progress.started and not progress.returned:
            _forget_interrupted(exc, progress, dataset, settings, rank_by)
        raise
    finally:
        if log and active is None:
            mlflow.end_run(status)
    return table


@dataclass
class _Progress:
    """Which of ``items`` this command started scoring and which came back settled (scored or skipped);
    ``returned``: every task came back (the executor returned)."""

    items: list[str]
    started: set[int] = field(default_factory=set)
    settled: set[int] = field(default_factory=set)
    returned: bool = False

    def unsettled(self) -> list[tuple[str | None, str | None]]:
        """``(name, version)`` of each version started and not settled: interrupted, or failed."""
        return [_coordinates(self.items[i]) for i in sorted(self.started - self.settled)]


def _forget_scores(versions: Iterable[tuple[str | None, str | None]], dataset: str, why: str) -> None:
    """Remove the ``transferability.*.<dataset>`` tags of ``versions`` (:func:`clear_version_scores`):
    their latest scoring did not complete, so their stored scores are stale. Call before :func:`rerank`."""
    for name, version in versions:
        if not name or not version:
            continue
        try:
            removed = clear_version_scores(name, version, dataset)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                lost = lost_tracking_server(exc)
                if lost is not None:
                    raise lost from None
                raise
            continue  # deleted meanwhile: nothing left to rank
        if removed:
            _logger.warning("%s/%s: %s, removed its stale tags %s", name, version, why, ", ".join(removed))


def _forget_interrupted(exc: BaseException, progress: _Progress, dataset: Target, settings: str, rank_by: str) -> None:
    """The scoring stopped before every task came back (Ctrl-C, an error while recording): the versions
    started and not settled lose their score tags, then the ranks and alias are recomputed. Skipped when
    the tracking server is gone; a failure here is logged, never raised over ``exc``."""
    if lost_tracking_server(exc) is not None:
        return
    try:
        unsettled = progress.unsettled()
        _forget_scores(unsettled, dataset.name, "its scoring was interrupted")
        banks = {
            (registered_version(f"models:/{n}/{v}").tags or {}).get(T.BANK, DEFAULT_BANK)
            for n, v in unsettled
            if n and v
        }
        for bank in sorted(banks):  # ranks are per bank
            rerank(dataset.name, settings, dataset.digest, method=rank_by, bank=bank)
    except Exception as cleanup:  # the original error is the one to report
        _logger.warning(
            "could not remove the interrupted versions' score tags (%s); the next score of %s recomputes the ranks",
            cleanup,
            dataset.name,
        )


def _run_version_tasks(
    items: list[str],
    target: Target,
    methods: list[str],
    sampler_config: Mapping[str, Any] | None,
    force: bool,
    cache_dir: str | os.PathLike | None,
    parent,
    executor: Executor,
    source: TargetSource | None,
    device: str | None,
    amp: bool,
    allow_pickle: bool | None = None,
    settings: str = T.DEFAULT_SETTINGS,
    progress: _Progress | None = None,
) -> list[VersionResult]:
    """One :class:`VersionTask` per version, run by ``executor``; results in item order. ``progress``
    records which tasks started (in this process: when each begins; Ray: all, at submission) and which
    came back settled."""
    progress = progress or _Progress(items)
    remote_source = None
    if not executor.in_process:
        remote_source = source or TargetSource(str(target.dataset.root), target.split)
    tasks = [
        VersionTask(
            item,
            tuple(methods),
            dict(sampler_config) if sampler_config else None,
            force,
            str(cache_dir) if cache_dir else None,
            parent.info.run_id if parent is not None else None,
            remote_source,
            device,
            amp,
            allow_pickle,
            settings,
        )
        for item in items
    ]

    def report(i: int, result: VersionResult | TaskFailure) -> None:
        if isinstance(result, TaskFailure):
            return
        if result.skipped or result.result is not None:
            progress.settled.add(i)
        status = (
            "SKIPPED (pickled model, no opt-in)"
            if result.skipped
            else f"FAILED: {result.error}"
            if result.error or result.result is None
            else (
                f"ccfv={result.result.scores[RANK_METHOD]:.4f}" + (" (cached features)" if result.result.cached else "")
            )
        )
        _logger.info(
            "[%d/%d] %s on %s: %s (%.1fs)", i + 1, len(items), result.label, target.name, status, result.seconds
        )

    if executor.in_process:
        cases = CaseCache(target=target)
        # freed networks' memory back to the OS after each version (flat RSS); the objects that outlive
        # the first version are frozen for the loop, so each collection walks only the new ones
        with MemoryReleaser(freeze=True) as releaser:
            position = {id(task): i for i, task in enumerate(tasks)}

            def score_here(task: VersionTask) -> VersionResult:
                progress.started.add(position[id(task)])
                _logger.info("[%d/%d] %s on %s: started", position[id(task)] + 1, len(items), task.item, target.name)
                try:
                    return score_version(task, target, cases)
                finally:
                    releaser.tick()

            raw = executor.map(score_here, tasks, report)
    else:
        progress.started.update(range(len(tasks)))
        raw = executor.map(score_version_remote, tasks, report)
    progress.returned = True
    results = []
    for task, r in zip(tasks, raw):
        if isinstance(r, TaskFailure):  # its worker or the cluster was lost: known by its coordinates
            r = VersionResult(
                task.item.removeprefix("models:/"), *_coordinates(task.item), None, {}, None, 0.0, error=r.error
            )
        elif r.target_digest not in (None, target.digest):
            r.error = f"the worker's target (digest {r.target_digest}) differs from the driver's ({target.digest})"
            r.result = None
        results.append(r)
    return results


def _log_ranking_metric(results: list[VersionResult], table: pd.DataFrame, method: str) -> None:
    """Log each scored version's ranking score ``method`` (e.g. ``ccfv_twin``, from ``table``) on its run."""
    values = dict(zip(table["model"], table[method]))
    client = mlflow.MlflowClient()
    for r in results:
        value = values.get(r.label)
        if r.run_id and value is not None and value == value:
            try:
                client.log_metric(r.run_id, method, float(value))
            except MlflowException as exc:  # a concurrent scorer's run of the same key replaced this one
                _logger.info("%s: run %s is gone (%s); its replacement logs its own", r.label, r.run_id, exc)


def _per_task(value: str | float, name: str, default: float) -> float:
    """A Ray task's CPUs or GPUs (``--num-cpus``, ``--num-gpus``): a number >= 0; ``""`` is ``default``."""
    return default if value in ("", None) else parse_float(value, f"--{name.replace('_', '-')}", minimum=0)


def _with_rank_method(methods: list[str], rank_by: str) -> list[str]:
    """``methods`` plus what ``rank_by`` needs (an estimator, or ``ccfv_twin``: ``ccfv``), checked here
    before any work."""
    from mlflow_ccfv.estimators import METHODS

    needed = needed_estimators(rank_by)
    if any(n not in METHODS for n in needed):
        raise OptionError(
            f"--rank-by {rank_by!r} is not a ranking; choose {AUTO_RANK} (the default: {DEFAULT_RANKING} where "
            f"every model has the random-init twin of its network, else {needed_estimators(AUTO_RANK)[-1]}), "
            f"an estimator ({', '.join(METHODS)}), <estimator>_twin (the estimator minus that of the model's "
            "random-init twin, e.g. ccfv_twin) or rank_aggregate."
        )
    return list(dict.fromkeys([*methods, *needed]))


def _members(rows: list[dict[str, Any]]) -> list[Member]:
    """The scored ``rows`` as ranking members (failed and skipped rows left out)."""
    known = set(METHODS)
    return [
        Member(
            str(r["model"]).removeprefix("models:/"),
            r.get("network"),
            r.get("source_dataset"),
            {k: float(v) for k, v in r.items() if k in known and v is not None},
        )
        for r in rows
        if not r.get("error") and r.get("ccfv") is not None
    ]


def _banks_of(versions_or_uris: Iterable, results: list[VersionResult]) -> list[str]:
    """The banks of the scored versions (ranks are written within each), also of those that failed
    before their tags were read (from the given ``ModelVersion`` or, for a URI, the registry)."""
    banks = {r.tags[T.BANK] for r in results if r.tags.get(T.BANK)}
    for item, r in zip(versions_or_uris, results):
        if r.tags.get(T.BANK):
            continue
        tags = getattr(item, "tags", None)
        if tags is None and r.name and r.version:
            try:
                tags = registered_version(f"models:/{r.name}/{r.version}").tags
            except Exception:  # not in the registry (any more): nothing of its to re-rank
                tags = None
        banks.add((tags or {}).get(T.BANK, DEFAULT_BANK))
    return sorted(banks)


def _merged_order(rankings: list[Ranking], rank_by: str, rows: list[dict[str, Any]]) -> RankOrder:
    """One :class:`RankOrder` over the banks' rankings (one bank: its own); without any, the batch's."""
    orders = [r.order for r in rankings if r.order is not None]
    if not orders:
        return rank_members(_members(rows), rank_by)
    if len(orders) == 1:
        return orders[0]
    return RankOrder(
        orders[0].method if len({o.method for o in orders}) == 1 else "per bank",
        [p for o in orders for p in o.ranked],
        [p for o in orders for p in o.controls],
        [m for o in orders for m in o.without_twin],
        [m for o in orders for m in o.control_above],
    )


def _shown_methods(methods: Sequence[str], chosen: str) -> list[str]:
    """The table's score columns: the ranking's column first, then the estimators."""
    return list(dict.fromkeys([chosen, *methods]))


def _ranked_table(
    rows: list[dict[str, Any]],
    methods: Sequence[str],
    dataset_name: str,
    order: RankOrder,
    stored: list[Ranking] | None = None,
) -> pd.DataFrame:
    """``rows`` as the ranked table: the ranking score of each (``ccfv_twin`` from the registry's group when
    ranked by it) and its rank as stored (``stored``: the registry's ranks, which may have gaps when a
    subset was scored; else the batch's order). Controls have no rank and follow the candidates."""
    values = {m.model: v for m, v in [*order.ranked, *order.controls]}
    if stored is not None:
        ranks = {f"{n}/{v}": i for r in stored for i, (n, v, _) in enumerate(r.ranked, 1)}
    else:
        ranks = {m.model: i for i, (m, _) in enumerate(order.ranked, 1)}
    out = []
    for r in rows:
        key = str(r["model"]).removeprefix("models:/")
        extra = {order.method: values.get(key, float("nan"))} if order.method not in METHODS else {}
        out.append({**r, **extra})
    return rank_table(out, _shown_methods(methods, order.method), dataset_name, ranks=ranks)


def _warn_ranking(requested: str, order: RankOrder) -> None:
    """Say when ``auto`` fell back from a twin-calibrated default to its estimator, when a twin ranking
    leaves versions unranked, and when a random-init control beats every pre-trained model."""
    if order.without_twin and (requested == AUTO_RANK or is_twin(order.method)):
        _logger.warning(
            "%s: no random-init twin of the same network (constructor arguments and patch size) scored on this "
            "target for %s. Score again without --add-twins false (it registers one per network, no "
            "training) or register one yourself (mlflow-ccfv register --name <arch>-random-init "
            "--source-dataset %s --spec <the model's spec> --random-init true --bank <bank>)",
            f"ranked by {order.method}, not {DEFAULT_RANKING}"
            if not is_twin(order.method)
            else f"{order.method} ranks last",
            ", ".join(order.without_twin),
            CONTROL_SOURCE,
        )
    if (text := order.warning()) is not None:
        _logger.warning("%s", text)


def score_from_options(
    *,
    dataset: str,
    data_root: str = "data",
    bank: str = "default",
    models: str = "",
    methods: str = "",
    split: str = "train",
    roi_size: str | Sequence[int] | None = "",
    overlap: str | float | None = "",
    global_samples: str | int | None = "",
    layer_budgets: str | Sequence[int] | None = "",
    sampler_seed: str | int | None = "",
    force: str | bool = "false",
    cache_dir: str = "",
    verify: str | bool = "true",
    device: str | None = None,
    amp: str | bool = False,
    executor: str = "serial",
    ray_address: str = "",
    num_cpus: str | float = 1.0,
    num_gpus: str | float = 0.0,
    log_dataset="false",
    allow_pickle: bool | None = None,
    rank_by: str = AUTO_RANK,
    add_twins: str | bool = True,
) -> pd.DataFrame:
    """One ``score`` invocation from the command line's options (text as MLproject passes it, or the
    typed values of the click command): validate every option, resolve and verify the target, score the
    bank (or ``models``), log. Returns the ranked table (failed versions have ``error`` set).

    Everything that can be refused is refused before a run is started: unknown methods, sampler
    settings (each error names its option), a ROI larger than twice the largest volume or whose
    memory lower bound exceeds the available memory, an unusable ``device``, and a target whose label
    maps hold any label map without foreground. ``device``/``amp``: see :func:`score_versions`; ``rank_by``:
    what ranks (default ``auto``, see :func:`score_versions`); ``add_twins`` (default true): register and
    score the random-init twin of every network of the scored versions that has none in its bank
    (:func:`~mlflow_ccfv.pipelines.controls.register_twins`; no training, one more version to score per
    network): the references of a twin-calibrated ranking, and with any ranking the check that no random
    network beats every pre-trained model. ``executor`` (``serial``/``ray``, with ``ray_address``, ``num_cpus``, ``num_gpus`` per
    task): where the versions are scored. ``log_dataset``: upload the target folder first
    (``log-dataset``; nothing if already logged) and let the workers read it from there.
    """
    method_list = _with_rank_method(parse_methods(methods), rank_by)  # validate before any work
    overrides = sampler_overrides(
        roi_size=roi_size,
        overlap=overlap,
        global_samples=global_samples,
        layer_budgets=layer_budgets,
        sampler_seed=sampler_seed,
    )
    use_amp = parse_bool(amp, "amp")
    cpus, gpus = _per_task(num_cpus, "num_cpus", 1.0), _per_task(num_gpus, "num_gpus", 0.0)
    chosen_device = str(resolve_device(device or None))
    FeatureCache(cache_dir or None).check_writable()
    if "roi_size" in overrides:
        check_memory(
            inference_bytes(overrides["roi_size"], SamplerConfig().sw_batch_size),
            "--roi-size",
            overrides["roi_size"],
            "lower --roi-size (a typical window is 32-128 voxels a side).",
        )
    # the twins are the references of every ranking: a twin-calibrated one needs them, and with any ranking
    # they tell when no pre-trained model is expected to beat training from scratch
    twins_wanted = parse_bool(add_twins, "add_twins")
    versions = resolve_versions(split_list(models), bank=bank)
    ds = load_msd_dataset(dataset, data_root or None, cache_dir or None)
    if parse_bool(verify, "verify"):
        ds.verify()
    target = make_target(ds, split)
    if "roi_size" in overrides:
        check_roi_against_volumes(overrides["roi_size"], ds, target.case_ids)
    _logger.info(
        "scoring %d version(s) on %s (%s split, %d cases, digest %s, device %s)",
        len(versions),
        target.name,
        split,
        len(target.case_ids),
        target.digest,
        chosen_device,
    )
    runner = make_executor(
        executor or "serial",
        address=ray_address or None,
        num_cpus=cpus,
        num_gpus=gpus,
    )
    reference = dataset if is_dataset_reference(dataset) else None
    if reference is None and parse_bool(log_dataset, "log_dataset"):
        reference = log_dataset_artifacts(ds).uri
    # Workers read the target from the logged dataset when there is one, else from the folder's path.
    source = TargetSource(reference or str(ds.root), split, 0, cache_dir or None)
    if twins_wanted:
        from mlflow_ccfv.pipelines.controls import drop_duplicate_twins, register_twins

        versions = drop_duplicate_twins(versions)
        known = {(v.name, str(v.version)) for v in versions}
        versions += [t for t in register_twins(versions) if (t.name, str(t.version)) not in known]
    try:
        return score_versions(
            versions,
            target,
            method_list,
            overrides or None,
            force=parse_bool(force, "force"),
            cache_dir=cache_dir or None,
            device=chosen_device if runner.in_process else (device or None),
            amp=use_amp,
            rank_by=rank_by,
            allow_pickle=allow_pickle,
            executor=runner,
            source=source,
        )
    finally:
        runner.close()


def sampler_overrides(
    *,
    roi_size: str | Sequence[int] | None = None,
    overlap: str | float | None = None,
    global_samples: str | int | None = None,
    layer_budgets: str | Sequence[int] | None = None,
    sampler_seed: str | int | None = None,
) -> dict[str, Any]:
    """The sampler settings a user gave (``""``/``None``: not given), each checked with its option's name
    (:class:`~mlflow_ccfv.errors.OptionError`), then together by :class:`SamplerConfig`."""
    overrides: dict[str, Any] = {}
    if _given(roi_size):
        overrides["roi_size"] = parse_ints(roi_size, "--roi-size", length=3, minimum=1)
    if _given(overlap):
        overrides["overlap"] = parse_float(overlap, "--overlap", minimum=0, maximum=1, max_open=True)
    if _given(global_samples):
        overrides["global_samples"] = parse_int(global_samples, "--global-samples", minimum=1)
    if _given(layer_budgets):
        overrides["layer_budgets"] = parse_ints(layer_budgets, "--layer-budgets", minimum=1)
        if not overrides["layer_budgets"]:
            raise OptionError("--layer-budgets must list at least one sample count (e.g. 100,200,400).")
    if _given(sampler_seed):
        overrides["seed"] = parse_int(sampler_seed, "--sampler-seed", minimum=0)
    if overrides:
        try:
            SamplerConfig(**overrides)  # validate the values together now
        except ValueError as exc:
            raise OptionError(f"Bad sampler option: {exc}") from exc
    return overrides


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def check_roi_against_volumes(roi_size: Sequence[int], ds: MSDDataset, case_ids: Sequence[str]) -> None:
    """Refuse a ``--roi-size`` side above twice the largest side of any target volume (read from the
    NIfTI headers): every window would be mostly padding."""
    largest = ds.largest_side(case_ids)
    if largest and max(roi_size) > 2 * largest:
        raise OptionError(
            f"--roi-size {format_ints(roi_size)} is far larger than the volumes of {ds.name} (largest side "
            f"{largest} voxels): every window would be mostly padding. Use at most {2 * largest} a side, "
            f"e.g. {format_ints([min(int(r), largest) for r in roi_size])}."
        )
