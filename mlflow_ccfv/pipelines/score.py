"""The ``score`` pipeline: score model versions on a target and record everything in MLflow.

Each version is loaded from the registry (:mod:`mlflow_ccfv.tracking`) and scored by
:func:`mlflow_ccfv.scoring.score_model` (the code path of the ``ccfv`` evaluator too); then, in the
active run or a new one, the target manifest is logged as an input, one nested run per version holds
its params and metrics (linked to its LoggedModel and the dataset), each version's score tags are
written with their completeness marker last, then the ranks and the ``best-<dataset>`` alias are
recomputed from the whole registry (:func:`~mlflow_ccfv.tracking.rerank`), and the ranked
table (CSV, Markdown) and plot (PNG) become artifacts of the parent run. A version whose scoring
failed (an error, a lost Ray worker or cluster) or was interrupted loses its stale score tags before
the ranks are recomputed; an ``mlflow.pytorch`` (pickled) version is skipped without the pickle
opt-in. docs/reliability.md lists what holds under concurrent scorers, kills and a lost server.

This module is the driver (:func:`score_versions`: the parent run, the tasks' dispatch in this process
or on Ray, the clean-up of an interrupted scoring, the ranking writes at the end) and the entry of one
``score`` invocation (:func:`run_score`); one version's scoring is :mod:`~mlflow_ccfv.pipelines.score_task`,
the request and its checks :mod:`~mlflow_ccfv.pipelines.score_request`, the ranked table
:mod:`~mlflow_ccfv.pipelines.score_ranking`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from mlflow_ccfv.data import MSDDataset, Target, make_target
from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.features.resources import MemoryReleaser
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor, TaskFailure, make_executor
from mlflow_ccfv.pipelines.score_ranking import (
    log_ranking_artifacts,
    log_ranking_metric,
    merged_order,
    ranked_table,
    shown_methods,
    version_banks,
    warn_ranking,
)
from mlflow_ccfv.pipelines.score_request import (
    ScoreRequest,
    check_resources,
    check_roi_against_volumes,
    sampler_overrides,
)
from mlflow_ccfv.pipelines.score_task import (
    ScoreConfig,
    TargetSource,
    VersionResult,
    VersionTask,
    coordinates,
    score_loaded,
    score_version,
    score_version_remote,
    settings_of,
)
from mlflow_ccfv.scoring import RANK_METHOD, CaseCache
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import is_dataset_reference, load_msd_dataset, log_dataset_artifacts, mlflow_dataset
from mlflow_ccfv.tracking.ranking_writes import clear_version_scores, rerank
from mlflow_ccfv.tracking.runs import log_input, recover_crashed, release_interrupted, tag_process
from mlflow_ccfv.tracking.search import DEFAULT_BANK, registered_version, resolve_versions, version_uri
from mlflow_ccfv.tracking.server import lost_tracking_server
from mlflow_ccfv.tracking.views import ranking_view_url, save_ranking_view

__all__ = [
    "ScoreConfig",
    "ScoreRequest",
    "TargetSource",
    "VersionResult",
    "VersionTask",
    "check_roi_against_volumes",
    "run_score",
    "sampler_overrides",
    "score_loaded",
    "score_version",
    "score_version_remote",
    "score_versions",
    "settings_of",
]

_logger = logging.getLogger(__name__)


def score_versions(
    versions_or_uris: Iterable,
    dataset: Target,
    config: ScoreConfig | None = None,
    *,
    log: bool = True,
    artifact_dir: str | Path | None = None,
    executor: Executor | None = None,
    source: TargetSource | None = None,
) -> pd.DataFrame:
    """Score versions (``ModelVersion`` objects or ``models:/`` URIs) on a target and record everything.

    ``dataset`` is a :class:`~mlflow_ccfv.data.Target` (:func:`~mlflow_ccfv.data.make_target`);
    ``config`` (default :class:`ScoreConfig`'s): the methods, sampler settings, cache, device, precision,
    the pickle opt-in and ``rank_by``, what orders the table, the rank tags and the ``best-<dataset>``
    alias (``auto``: :data:`~mlflow_ccfv.scoring.ranking.DEFAULT_RANKING`; the run's tag ``ccfv.ranked_by``
    says which). With ``log`` (default), inside the active run or a new one: the target manifest as an
    input, one (nested) run per version with params and metrics linked to its LoggedModel and the
    dataset, the version tags and the ``best-<dataset>`` alias, and the ranked table (CSV, Markdown) and
    plot (PNG) as artifacts of the parent run (also kept in ``artifact_dir``). The ranks and the alias are
    then recomputed over every version of the registry scored on this dataset with the same sampler
    settings (:func:`rerank`), not only over ``versions_or_uris``. Returns the ranked table; failed
    versions are rows with ``error`` set (and their stale tags removed); ``mlflow.pytorch`` versions are
    skipped (``skipped`` true) unless ``allow_pickle`` or ``MLFLOW_CCFV_ALLOW_PICKLE`` opts in.

    ``executor``: where the versions are scored (default in this process;
    :class:`~mlflow_ccfv.pipelines.executors.RayExecutor`: one Ray task per version, each logging its own
    run and score tags, on the ``device`` given or its worker's default; ``source`` tells the workers
    where the target is, default its folder path). Ranks, rank tags and the alias are written here, once
    every version is done.
    """
    config = config or ScoreConfig()
    items = [i if isinstance(i, str) else version_uri(i) for i in versions_or_uris]
    if not items:
        raise ValueError("No model versions to score.")
    executor = executor or SerialExecutor()
    # in this process: checked before any work; a Ray worker resolves its own (None: its GPU if it has one)
    config = dataclasses.replace(
        config, device=str(resolve_device(config.device)) if executor.in_process else config.device
    )
    active = mlflow.active_run()
    if log and active is None:
        recover_crashed()
        mlflow.start_run(run_name=f"score {dataset.name}")
        tag_process()
    parent = mlflow.active_run() if log else None
    status = "FINISHED"
    progress = _Progress(items, dataset.name)
    try:
        if parent is not None:
            _log_score_params(dataset, config, len(items), executor.name)
        remote = None if executor.in_process else source or TargetSource(str(dataset.dataset.root), dataset.split)
        parent_run_id = parent.info.run_id if parent is not None else None
        tasks = [VersionTask(item, config, parent_run_id, remote, config.settings) for item in items]
        results = _run_version_tasks(tasks, dataset, executor, progress)
        if parent is None:
            rows = [r.row() for r in results]
            order = merged_order([], config.rank_by, rows)
            warn_ranking(config.rank_by, order)
            return ranked_table(rows, config.methods, dataset.name, order)
        failed = [r for r in results if r.error and not r.skipped]
        if failed:
            status = "FAILED"
        table = _record_ranking(parent, versions_or_uris, results, failed, dataset, config, artifact_dir)
    except BaseException as exc:
        release_interrupted(exc)  # an interrupted write's lock, before the writes below
        status = "FAILED"
        if parent is not None and progress.started and not progress.returned:
            _forget_interrupted(exc, progress, dataset, config)
        raise
    finally:
        if log and active is None:
            mlflow.end_run(status)
    return table


def _log_score_params(target: Target, config: ScoreConfig, n_versions: int, executor: str) -> None:
    """The target manifest as the run's input and the scoring settings as its params, prefixed:
    ``mlflow run`` has already logged the entry point's own (string) parameters there."""
    log_input(mlflow_dataset(target), context="target")
    mlflow.log_params(
        T.prefixed_params(
            T.RUN_PARAM_PREFIX,
            {
                "dataset": target.name,
                "dataset_digest": target.digest,
                "split": target.split,
                "methods": ",".join(config.methods),
                "n_versions": n_versions,
                "force": config.force,
                "sampler_settings": config.settings,
                "device": str(config.device),
                "amp": config.amp,
                "rank_by": config.rank_by,
                "executor": executor,
            },
        )
    )


def _record_ranking(
    parent: Run,
    versions_or_uris: Iterable,
    results: list[VersionResult],
    failed: list[VersionResult],
    target: Target,
    config: ScoreConfig,
    artifact_dir: str | Path | None,
) -> pd.DataFrame:
    """After every task: the failed versions' stale scores removed, then the single place ranks, rank tags
    and the alias are written, from every score stored in the registry for this dataset and these
    settings, bank by bank; the ranked table logged, described on the run page and shared as a view."""
    if failed:
        mlflow.set_tag(T.RUN_FAILED_VERSIONS, ",".join(r.label for r in failed))
        # wherever it failed (in the task, a lost worker or cluster): stale scores leave the ranking
        _forget_scores([(r.name, r.version) for r in failed], target.name, "its scoring failed")
    rows = [r.row() for r in results]
    rankings = [
        rerank(target.name, config.settings, target.digest, method=config.rank_by, bank=bank)
        for bank in version_banks(versions_or_uris, results)
    ]
    order = merged_order(rankings, config.rank_by, rows)
    chosen = order.method
    mlflow.set_tag(T.RUN_RANKED_BY, chosen)
    warn_ranking(config.rank_by, order)
    if order.control_above:
        mlflow.set_tag(T.RUN_FROM_SCRATCH, ",".join(order.control_above))
    table = ranked_table(rows, config.methods, target.name, order, stored=rankings)
    if chosen not in METHODS:  # the ranking's own score beside the estimators' on each version's run (UI sort)
        log_ranking_metric(results, table, chosen)
    shown = shown_methods(config.methods, chosen)
    note = log_ranking_artifacts(table, target.name, shown, Path(artifact_dir) if artifact_dir else None)
    # the run page's description: the ranked table; the Runs tab's shared view: the scores on screen
    mlflow.set_tag(T.RUN_NOTE, f"**Ranking of {target.name}** by {chosen} (rank 1 = best)\n\n{note}")
    save_ranking_view(parent.info.experiment_id, target.name, chosen)
    _logger.info("the ranking in the MLflow UI: %s", ranking_view_url(parent.info.experiment_id, target.name))
    return table


@dataclass
class _Progress:
    """Which of ``items`` this command started scoring on the target ``dataset`` and which came back
    settled (scored or skipped); ``returned``: every task came back (the executor returned)."""

    items: list[str]
    dataset: str
    started: set[int] = field(default_factory=set)
    settled: set[int] = field(default_factory=set)
    returned: bool = False

    def unsettled(self) -> list[tuple[str | None, str | None]]:
        """``(name, version)`` of each version started and not settled: interrupted, or failed."""
        return [coordinates(self.items[i]) for i in sorted(self.started - self.settled)]

    def begin(self, i: int) -> None:
        """Task ``i`` starts in this process."""
        self.started.add(i)
        _logger.info("[%d/%d] %s on %s: started", i + 1, len(self.items), self.items[i], self.dataset)

    def report(self, i: int, result: VersionResult | TaskFailure) -> None:
        """Task ``i`` came back: settled when scored or skipped; its outcome logged."""
        if isinstance(result, TaskFailure):
            return
        if result.skipped or result.result is not None:
            self.settled.add(i)
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
            "[%d/%d] %s on %s: %s (%.1fs)", i + 1, len(self.items), result.label, self.dataset, status, result.seconds
        )


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


def _forget_interrupted(exc: BaseException, progress: _Progress, dataset: Target, config: ScoreConfig) -> None:
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
            rerank(dataset.name, config.settings, dataset.digest, method=config.rank_by, bank=bank)
    except Exception as cleanup:  # the original error is the one to report
        _logger.warning(
            "could not remove the interrupted versions' score tags (%s); the next score of %s recomputes the ranks",
            cleanup,
            dataset.name,
        )


def _run_version_tasks(
    tasks: list[VersionTask], target: Target, executor: Executor, progress: _Progress
) -> list[VersionResult]:
    """Run ``tasks`` with ``executor``; results in task order. ``progress`` records which tasks started
    (in this process: when each begins; Ray: all, at submission) and which came back settled."""
    if executor.in_process:
        cases = CaseCache(target=target)
        # freed networks' memory back to the OS after each version (flat RSS); the objects that outlive
        # the first version are frozen for the loop, so each collection walks only the new ones
        with MemoryReleaser(freeze=True) as releaser:
            position = {id(task): i for i, task in enumerate(tasks)}

            def score_here(task: VersionTask) -> VersionResult:
                progress.begin(position[id(task)])
                try:
                    return score_version(task, target, cases)
                finally:
                    releaser.tick()

            raw = executor.map(score_here, tasks, progress.report)
    else:
        progress.started.update(range(len(tasks)))
        raw = executor.map(score_version_remote, tasks, progress.report)
    progress.returned = True
    return [_checked(task, r, target) for task, r in zip(tasks, raw)]


def _checked(task: VersionTask, outcome: VersionResult | TaskFailure, target: Target) -> VersionResult:
    """A task's outcome as a result: a lost worker or cluster (known by the task's coordinates), or a
    result computed on a different target than the driver's, becomes a failed version."""
    if isinstance(outcome, TaskFailure):
        return VersionResult.failed(task.item, outcome.error)
    if outcome.target_digest not in (None, target.digest):
        outcome.error = (
            f"the worker's target (digest {outcome.target_digest}) differs from the driver's ({target.digest})"
        )
        outcome.result = None
    return outcome


def run_score(request: ScoreRequest) -> pd.DataFrame:
    """One ``score`` invocation: refuse what can be refused before any work (:func:`check_resources`),
    resolve and verify the target, score the bank (or ``request.models``, plus the random-init twins
    with ``request.add_twins``) with ``request.executor``, log. Returns the ranked table (failed versions
    have ``error`` set).

    Refused before a run is started: an unusable device, an unwritable cache, a ROI larger than twice
    the largest volume or whose memory lower bound exceeds the available memory, and a target whose
    label maps hold any label map without foreground.
    """
    device = check_resources(request)
    versions = resolve_versions(list(request.models), bank=request.bank)
    ds = load_msd_dataset(request.dataset, request.data_root, request.config.cache_dir)
    if request.verify:
        ds.verify()
    target = make_target(ds, request.split)
    if request.roi_size is not None:
        check_roi_against_volumes(request.roi_size, ds, target.case_ids)
    _logger.info(
        "scoring %d version(s) on %s (%s split, %d cases, digest %s, device %s)",
        len(versions),
        target.name,
        request.split,
        len(target.case_ids),
        target.digest,
        device,
    )
    runner = make_executor(
        request.executor, address=request.ray_address, num_cpus=request.num_cpus, num_gpus=request.num_gpus
    )
    source = _target_source(request, ds)
    if request.add_twins:
        versions = _with_twins(versions)
    config = request.config if not runner.in_process else dataclasses.replace(request.config, device=device)
    try:
        return score_versions(versions, target, config, executor=runner, source=source)
    finally:
        runner.close()


def _target_source(request: ScoreRequest, ds: MSDDataset) -> TargetSource:
    """Where workers read the target: the logged dataset when there is one (``request.log_dataset``
    uploads the folder first), else the folder's path."""
    reference = request.dataset if is_dataset_reference(request.dataset) else None
    if reference is None and request.log_dataset:
        reference = log_dataset_artifacts(ds).uri
    return TargetSource(reference or str(ds.root), request.split, 0, request.config.cache_dir)


def _with_twins(versions: list) -> list:
    """``versions`` (duplicate twins of racing scorers dropped) plus the random-init twin of every network
    without one in its bank: the references of every ranking. A twin-calibrated ranking needs them, and
    with any ranking they tell when no pre-trained model is expected to beat training from scratch."""
    from mlflow_ccfv.pipelines.controls import drop_duplicate_twins, register_twins

    versions = drop_duplicate_twins(versions)
    known = {(v.name, str(v.version)) for v in versions}
    return versions + [t for t in register_twins(versions) if (t.name, str(t.version)) not in known]
