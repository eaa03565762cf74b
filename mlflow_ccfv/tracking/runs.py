"""MLflow runs: the run a command writes to, a version's scoring run, a training curve, and the
clean-up after a killed process.

Every run this package starts carries the tag ``ccfv.process`` = ``<host>:<pid>:<process start>``,
and so does every LoggedModel ``register`` creates. A process killed with ``kill -9`` cannot end its
runs; :func:`recover_crashed` (called at the start of every command) closes the RUNNING runs of dead
processes on this host as KILLED and deletes their PENDING LoggedModels.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.entities import Metric, Run, RunStatus
from mlflow.exceptions import MlflowException

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.data.normalization import TARGET_NORMALIZATION
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.tag_values import parse_process, process_value

if TYPE_CHECKING:
    from mlflow_ccfv.data.target import Target

__all__ = [
    "command_run",
    "delete_replaced_runs",
    "finished_run",
    "log_dice_on_score_runs",
    "log_input",
    "log_training_curve",
    "log_version_run",
    "process_identity",
    "recover_crashed",
    "release_interrupted",
    "released_on_interrupt",
    "run_csv",
    "run_record",
    "tag_process",
    "use_experiment",
    "VersionRun",
]

_logger = logging.getLogger(__name__)
_PAGE = 500


def use_experiment(name: str, *, chosen: bool = True) -> str | None:
    """Make ``name`` the active experiment of this process's runs and LoggedModels; returns it, or
    ``None`` where the experiment is already decided: a run given by ``MLFLOW_RUN_ID`` (``mlflow run``
    sets it, with the run's ``MLFLOW_EXPERIMENT_ID``) keeps its experiment, and so does an
    ``MLFLOW_EXPERIMENT_ID`` when ``name`` is only a default (``chosen=False``)."""
    if os.environ.get("MLFLOW_RUN_ID") or (not chosen and os.environ.get("MLFLOW_EXPERIMENT_ID")):
        return None
    # ``set_experiment(name)`` creates the experiment when it is missing; a process that loses that
    # creation to a concurrent one gets the experiment back *without* it becoming active (MLflow 3.17),
    # and its runs would land in ``Default``. Activating it by id afterwards holds in both cases.
    experiment = retrying(mlflow.set_experiment, name, what=f"create experiment {name}")
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return name


def _start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or ``?``: with the
    pid it tells a live owner from a new process that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def process_identity() -> str:
    """``<host>:<pid>:<start>`` of this process (the value of the ``ccfv.process`` tag)."""
    return process_value(socket.gethostname(), os.getpid(), _start_time(os.getpid()))


def _is_dead(identity: str) -> bool:
    """True only when ``identity`` names a process on this host that no longer runs (pid gone, or reused
    by a process started at another time); processes on other hosts are never judged."""
    parsed = parse_process(identity)
    if parsed is None:
        return False
    host, pid, started = parsed
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    now = _start_time(pid)
    return started != "?" and now != "?" and now != started


def tag_process() -> None:
    """Tag the active run with this process (``ccfv.process``), so a later command can close it if killed."""
    mlflow.set_tag(T.PROCESS, process_identity())


def _experiment_ids(client: mlflow.MlflowClient) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def _has_version(client: mlflow.MlflowClient, name: str, model_id: str) -> bool:
    """Whether a version of the registered model ``name`` points at the LoggedModel ``model_id``."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return False
    # (a search may leave ``model_id`` empty; the version's source is ``models:/<model id>`` then)
    return any(model_id in (v.model_id, (v.source or "").removeprefix("models:/").strip("/")) for v in versions)


def recover_crashed() -> dict[str, list[str]]:
    """Close what killed processes of this host left behind: RUNNING runs tagged ``ccfv.process`` whose
    process is dead end as KILLED; LoggedModels of dead processes that a killed ``register`` left
    PENDING, or READY but never registered (tag ``ccfv.registering`` and no version), are deleted. Returns ``{"runs": [...], "models": [...]}`` (ids); logs one line per kind."""
    client = mlflow.MlflowClient()
    closed: list[str] = []
    deleted: list[str] = []
    mine = f"tags.`{T.PROCESS}` LIKE '{socket.gethostname()}:%'"
    ids = _experiment_ids(client)
    for i in range(0, len(ids), 100):
        chunk = ids[i : i + 100]
        token = None
        while True:
            runs = client.search_runs(
                chunk, f"attributes.status = 'RUNNING' and {mine}", max_results=_PAGE, page_token=token
            )
            for run in runs:
                if _is_dead(run.data.tags.get(T.PROCESS, "")):
                    retrying(client.set_terminated, run.info.run_id, "KILLED", what="close a killed run")
                    closed.append(run.info.run_id)
            token = runs.token
            if not token:
                break
        token = None
        while True:
            # (the status is filtered here: the sqlite store stores it as a number and ignores the text)
            models = client.search_logged_models(chunk, filter_string=mine, max_results=100, page_token=token)
            for model in models:
                tags = model.tags or {}
                if not _is_dead(tags.get(T.PROCESS, "")):
                    continue
                if str(model.status) != "PENDING" and T.REGISTERING not in tags:
                    continue  # a finished model of a dead process (e.g. a fine-tuned network): kept
                if str(model.status) != "PENDING" and _has_version(client, model.name, model.model_id):
                    with contextlib.suppress(MlflowException):  # registered after all: finalise it
                        client.delete_logged_model_tag(model.model_id, T.REGISTERING)
                    continue
                try:
                    client.delete_logged_model(model.model_id)
                    deleted.append(model.model_id)
                except MlflowException as exc:  # another command cleaned it first
                    _logger.debug("could not delete %s: %s", model.model_id, exc)
            token = models.token
            if not token:
                break
    if closed:
        _logger.warning("closed %d run(s) of killed processes as KILLED: %s", len(closed), ", ".join(closed))
    if deleted:
        _logger.warning(
            "deleted %d PENDING LoggedModel(s) of killed registrations: %s", len(deleted), ", ".join(deleted)
        )
    return {"runs": closed, "models": deleted}


def log_input(ds: Dataset, context: str) -> None:
    """``mlflow.log_input`` on the active run, retried when a concurrent writer inserts the same dataset."""
    retrying(mlflow.log_input, ds, context=context, what=f"log dataset {ds.name}")


def delete_replaced_runs(key: str, keep: str) -> list[str]:
    """Keep one ended run of this experiment tagged ``ccfv.run_key=<key>``: the last to end, by (end time,
    run id); delete the others (an earlier or killed run of the same model, data and settings, or a
    concurrent one that ended first), ``keep`` included when it is not the last. Returns the ids deleted.

    A RUNNING run (another process scoring the same version right now) is left alone; when it ends, it
    makes the same choice. Every process that looks after its own run ended computes the same survivor,
    whatever it saw of the others' end: the last process to end sees every earlier run ended, so exactly
    one run of the key remains."""
    client = mlflow.MlflowClient()
    own = client.get_run(keep).info
    found = client.search_runs([own.experiment_id], f"tags.`{T.RUN_KEY}` = '{key}'", max_results=_PAGE)
    ended = [r.info for r in found if r.info.status != "RUNNING"]
    if all(info.run_id != keep for info in ended):
        ended.append(own)
    survivor = max(ended, key=lambda info: (info.end_time or 0, info.run_id)).run_id
    gone = []
    for info in ended:
        if info.run_id == survivor:
            continue
        try:
            retrying(client.delete_run, info.run_id, what="delete a replaced run")
        except MlflowException as exc:  # deleted meanwhile by another process making the same choice
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
        gone.append(info.run_id)
    return gone


def release_interrupted(exc: BaseException) -> None:
    """After an interrupt (an exception that is not an :class:`Exception`, such as Ctrl-C's
    ``KeyboardInterrupt``): free what the finished frames of its traceback, and of the exceptions it
    interrupted, still hold, so that this process can write to its store again.

    An interrupt can land while MLflow's SQLAlchemy store is inside a write to an embedded sqlite file;
    the exception then unwinds with that write's connection still open inside its transaction,
    referenced only by those frames, and with it sqlite's write lock: every later write of the process
    (ending the run, removing the interrupted scores) waits out sqlite's busy timeout (20 s in MLflow)
    and fails with ``database is locked`` (docs/reliability.md, "Failures"). Clearing the frames' local
    variables and collecting closes the connection, which rolls the unfinished write back. Ordinary
    exceptions are left alone (a debugger still sees their frames): the store rolls its own failed
    writes back.
    """
    if isinstance(exc, Exception):
        return
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # frames still executing (the callers) are skipped
        current = current.__context__
    gc.collect()


@contextmanager
def released_on_interrupt() -> Iterator[None]:
    """Inside a ``with mlflow.start_run()`` (entered after it): an interrupt of the block's writes is
    released (:func:`release_interrupted`) before the run is ended as failed."""
    try:
        yield
    except BaseException as exc:
        release_interrupted(exc)
        raise


@contextmanager
def command_run(run_name: str, parent_run_id: str | None = None) -> Iterator[Run]:
    """Start the run a step (pretrain, finetune, report, study) logs its own parameters to.

    - inside an active run (e.g. a study): a nested child run;
    - under ``mlflow run`` (``MLFLOW_RUN_ID`` set, no active run): MLflow already created a run for the
      entry point and logged the entry point's string parameters there, and a run's parameters cannot
      change; that run is resumed as the parent and the step gets a child run;
    - with ``parent_run_id`` and no active run (a Ray task of a study): a child of that run, in its experiment;
    - otherwise a new top-level run in the current experiment.

    Runs of killed processes are closed first (:func:`recover_crashed`); the run carries this process
    (``ccfv.process``); an exception ends it, and a resumed ``mlflow run`` parent, as FAILED.
    """
    if mlflow.active_run() is None:
        recover_crashed()
    if parent_run_id is not None and mlflow.active_run() is None:
        # a Ray task: a child of the driver's run (an exception ends it as FAILED)
        with (
            mlflow.start_run(
                run_name=run_name, parent_run_id=parent_run_id, experiment_id=_experiment_of(parent_run_id)
            ) as run,
            released_on_interrupt(),
        ):
            tag_process()
            yield run
        return
    outer = mlflow.start_run() if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID") else None
    status = RunStatus.to_string(RunStatus.FINISHED)
    try:
        with (
            mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None) as run,
            released_on_interrupt(),
        ):
            tag_process()
            yield run
    except BaseException:
        status = RunStatus.to_string(RunStatus.FAILED)
        raise
    finally:
        if outer is not None:
            mlflow.end_run(status)


@dataclass(frozen=True)
class VersionRun:
    """What a version's scoring run records: the version's ``label`` (``name/version``) and LoggedModel
    ``model_id``, the ``target`` and its MLflow dataset ``ds``, the ``methods`` scored, whether the
    features came from the cache (``cached``), the ``sampler`` settings (params ``sampler.<key>``), the
    ``metrics``, the sampler ``settings`` digest, and the intensity ``normalization`` its input got (tag
    ``ccfv.normalization``)."""

    label: str
    model_id: str | None
    target: Target
    ds: Dataset
    methods: Sequence[str]
    cached: bool
    sampler: Mapping[str, Any]
    metrics: Mapping[str, float]
    settings: str = T.DEFAULT_SETTINGS
    normalization: str = TARGET_NORMALIZATION

    def params(self) -> dict[str, Any]:
        """The run's params."""
        target = self.target
        params = {
            "model_uri": f"models:/{self.label}",
            "model_id": self.model_id,
            "dataset": target.name,
            "dataset_digest": target.digest,
            "split": target.split,
            "n_cases": len(target.case_ids),
            "methods": ",".join(self.methods),
            "features_cached": self.cached,
        }
        params.update(T.prefixed_params("sampler", self.sampler))
        return params


def log_version_run(record: VersionRun, *, parent_run_id: str | None = None) -> str:
    """One run nested in the active (score) run, or under ``parent_run_id`` (a Ray worker has no active
    run): a version's params and metrics on its target (:class:`VersionRun`).

    Keyed (``ccfv.run_key``) by the LoggedModel, the target's digest and the sampler ``settings``:
    once it has finished, earlier runs of the same key (a previous or killed scoring) are deleted.
    Idempotent per (parent run, version): a finished run of the same version under the same parent is
    kept and returned (a retried Ray task logs nothing twice); an unfinished one (its worker died
    mid-way) is deleted first.
    """
    label, target = record.label, record.target
    key = T.run_key(record.model_id or label, target.digest, record.settings)
    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if active is not None else None)
    if parent is not None:
        done = _replace_partial_version_runs(parent, label)
        if done is not None:
            return done
    where: dict[str, Any] = {}
    if parent_run_id is not None and active is None:
        where = {"parent_run_id": parent_run_id, "experiment_id": _experiment_of(parent_run_id)}
    # at creation: a killed attempt's partial run is findable by its tags
    run_tags = {
        T.RUN_STAGE: "score",
        T.RUN_DATASET: target.name,
        T.RUN_MODEL: label,
        T.PROCESS: process_identity(),
        T.RUN_KEY: key,
        T.RUN_NORMALIZATION: record.normalization[:5000],
    }
    with (
        mlflow.start_run(run_name=f"{label} on {target.name}", nested=True, tags=run_tags, **where) as run,
        released_on_interrupt(),
    ):
        log_input(record.ds, context="target")
        mlflow.log_params(record.params())
        # One call: the run's metrics, linked to the version's LoggedModel and to the dataset.
        mlflow.log_metrics(dict(record.metrics), model_id=record.model_id, dataset=record.ds)
    delete_replaced_runs(key, keep=run.info.run_id)
    return run.info.run_id


def _experiment_of(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.experiment_id


def _replace_partial_version_runs(parent_run_id: str, label: str) -> str | None:
    """The finished run of ``label`` under ``parent_run_id`` if there is one; unfinished ones are deleted."""
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [_experiment_of(parent_run_id)],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{T.RUN_MODEL}` = '{label}'",
        order_by=["attributes.start_time ASC"],
    )
    finished = next((r for r in runs if r.info.status == "FINISHED"), None)
    for r in runs:  # one task per version and parent: any other run of it is a dead attempt's leftover
        if r is not finished:
            client.delete_run(r.info.run_id)
    return finished.info.run_id if finished is not None else None


def log_dice_on_score_runs(label: str, dataset: str, dice: float) -> list[str]:
    """Log ``finetune_dice`` on every score run of version ``label`` on ``dataset`` (all experiments), so
    the Runs tab shows the measured Dice beside the scores; returns their run ids."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=(
            f"tags.`{T.RUN_STAGE}` = 'score' AND tags.`{T.RUN_MODEL}` = '{label}' "
            f"AND tags.`{T.RUN_DATASET}` = '{dataset}'"
        ),
        output_format="list",
        max_results=1000,
    )
    client = mlflow.MlflowClient()
    for run in runs:
        client.log_metric(run.info.run_id, T.FINETUNE_DICE, float(dice))
    return [run.info.run_id for run in runs]


def log_training_curve(losses: Sequence[float], title: str) -> None:
    """``train_loss`` per step on the active run (batched, 1000 steps a request) and ``training_curve.png``."""
    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", float(v), now, i) for i, v in enumerate(losses)]
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("log_training_curve needs an active run.")
    for i in range(0, len(metrics), 1000):  # one request per 1000 steps, not one per step
        client.log_batch(active.info.run_id, metrics=metrics[i : i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        from mlflow_ccfv.training.curves import training_curve_png  # matplotlib: on first use

        mlflow.log_artifact(str(training_curve_png(losses, Path(tmp) / "training_curve.png", title)))


def _quoted(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def finished_run(params: Mapping[str, Any], tags: Mapping[str, str]) -> str | None:
    """The id of the latest FINISHED run, in any experiment, with these ``params`` and run ``tags``
    (how a stopped study finds the units of work it already did); None if there is none."""
    clauses = [f"params.`{k}` = {_quoted(v)}" for k, v in params.items()]
    clauses += [f"tags.`{k}` = {_quoted(v)}" for k, v in tags.items()]
    clauses.append("attributes.status = 'FINISHED'")
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def run_csv(run_id: str, artifact_path: str) -> pd.DataFrame:
    """A CSV artifact of a run (e.g. a fine-tune run's ``dice_per_case.csv``) as a table."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        return pd.read_csv(local)


def run_record(run_id: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """``(params, tags)`` of a run, read only; None when the tracking store has no such run."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    return dict(run.data.params), dict(run.data.tags)
