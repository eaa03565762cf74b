"""MLflow runs: the run a command writes to, a version's scoring run, and a training curve."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.entities import Metric, Run

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.data.target import Target
from mlflow_ccfv.study.plots import training_curve_png

__all__ = ["command_run", "finished_run", "log_dice_on_score_runs", "log_training_curve", "log_version_run", "run_csv"]


@contextmanager
def command_run(run_name: str, parent_run_id: str | None = None) -> Iterator[Run]:
    """Start the run a step (pretrain, finetune, report, study) logs its own parameters to.

    - inside an active run (e.g. a study): a nested child run;
    - under ``mlflow run`` (``MLFLOW_RUN_ID`` set, no active run): MLflow already created a run for the
      entry point and logged the entry point's string parameters there, and a run's parameters cannot
      change; that run is resumed as the parent and the step gets a child run;
    - with ``parent_run_id`` and no active run (a Ray task of a study): a child of that run, in its experiment;
    - otherwise a new top-level run in the current experiment.
    """
    if parent_run_id is not None and mlflow.active_run() is None:
        with mlflow.start_run(
            run_name=run_name, parent_run_id=parent_run_id, experiment_id=_experiment_of(parent_run_id)
        ) as run:
            yield run
        return
    outer = mlflow.start_run() if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID") else None
    try:
        with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None) as run:
            yield run
    finally:
        if outer is not None:
            mlflow.end_run()


def log_version_run(
    *,
    label: str,
    model_id: str | None,
    target: Target,
    ds: Dataset,
    methods: Sequence[str],
    cached: bool,
    sampler: Mapping[str, Any],
    metrics: Mapping[str, float],
    parent_run_id: str | None = None,
) -> str:
    """One run nested in the active (score) run, or under ``parent_run_id`` (a Ray worker has no active
    run): a version's params and metrics on ``target``.

    Idempotent per (parent run, version): a finished run of the same version under the same parent is
    kept and returned (a retried task logs nothing twice); an unfinished one (its worker died mid-way)
    is deleted first.
    """
    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if active is not None else None)
    if parent is not None:
        done = _replace_partial_version_runs(parent, label)
        if done is not None:
            return done
    where: dict[str, Any] = {}
    if parent_run_id is not None and active is None:
        where = {"parent_run_id": parent_run_id, "experiment_id": _experiment_of(parent_run_id)}
    # at creation: a killed attempt's partial run is findable
    run_tags = {T.RUN_STAGE: "score", T.RUN_DATASET: target.name, T.RUN_MODEL: label}
    with mlflow.start_run(run_name=f"{label} on {target.name}", nested=True, tags=run_tags, **where) as run:
        mlflow.log_input(ds, context="target")
        params = {
            "model_uri": f"models:/{label}",
            "model_id": model_id,
            "dataset": target.name,
            "dataset_digest": target.digest,
            "split": target.split,
            "n_cases": len(target.case_ids),
            "methods": ",".join(methods),
            "features_cached": cached,
        }
        params.update(T.prefixed_params("sampler", sampler))
        mlflow.log_params(params)
        # One call: the run's metrics, linked to the version's LoggedModel and to the dataset.
        mlflow.log_metrics(dict(metrics), model_id=model_id, dataset=ds)
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
