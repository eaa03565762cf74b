"""Concurrent writers on one store (embedded sqlite and a started `mlflow server`): 4 `score` processes
on overlapping subsets of one bank and two datasets, and 4 `register` of one new name, all succeed;
afterwards each dataset has exactly one rank 1 and one `best-<dataset>` alias, computed over every
scored version (docs/reliability.md, "Concurrency")."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.data.synthetic import generate_task
from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server", "reliability")
from mlflow_server import register_tiny_bank  # noqa: E402
from reliability import assert_one_ranking, assert_runs_settled, cli_env, finish, start_cli  # noqa: E402

DATASETS = ("Task03", "Task09")
SAMPLER = ["--methods", "ccfv", "--global-samples", "64"]


def _concurrent_scores_and_registrations(uri: str, tmp_path, prefix: str, experiment: str | None) -> None:
    data = tmp_path / "data"
    for task in DATASETS:
        generate_task(task, data, n_cases=4, shape=(32, 32, 24), progress=False)
    cache = tmp_path / "cache"
    versions = register_tiny_bank("conc", seeds=(0, 1, 2, 3), prefix=prefix)
    labels = [f"models:/{v.name}/{v.version}" for v in versions]
    # Features computed once beforehand: the four scorers then reach the store at the same moment.
    for task in DATASETS:
        target = make_target(MSDDataset.load(task, data_root=data))
        score_versions(versions, target, ScoreConfig(["ccfv"], {"global_samples": 64}, cache_dir=cache), log=False)
    env = cli_env(uri, cache, experiment)
    subsets = [("Task03", labels[:2]), ("Task03", labels[2:]), ("Task09", labels[:3]), ("Task09", labels[1::2])]
    procs = [
        start_cli(
            ["score", "--dataset", ds, "--data-root", str(data), "--models", ",".join(m), *SAMPLER],
            env,
            tmp_path,
        )
        for ds, m in subsets
    ]
    results = [finish(p) for p in procs]
    for code, output in results:
        assert code == 0, output[-4000:]
    client = MlflowClient(uri)
    # Four first-time scorers each wanted the UNet's random-init twin: one version survives, the oldest.
    assert [str(v.version) for v in client.search_model_versions("name = 'unet-random-init'")] == ["1"]
    # the twin is scored (the default ranking's reference) but, a control, never ranked
    assert_one_ranking(client, "Task03", {f"{prefix}-{s}/1" for s in range(4)})
    assert_one_ranking(client, "Task09", {f"{prefix}-{s}/1" for s in range(4)})
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = assert_runs_settled(client, exp_ids)
    mine = [r for r in runs if r.data.tags.get("ccfv.model", "").startswith(prefix)]
    # 4 versions x 2 datasets: the version scored on Task09 by two processes keeps one run.
    assert len(mine) == 8 and {r.info.status for r in mine} == {"FINISHED"}
    twins = [r for r in runs if r.data.tags.get("ccfv.model", "").startswith("unet-random-init/1")]
    assert len(twins) == 2  # one run per dataset, whichever scorer logged it

    # Four registrations of one new name: create-or-get, every one gets its own version.
    name = f"{prefix}-new"
    procs = [
        start_cli(
            ["register", "--name", name, "--source-dataset", "none", "--small-spec", "UNet:1:3"]
            + ["--random-init", "true", "--seed", str(seed), "--bank", "conc-new"],
            env,
            tmp_path,
        )
        for seed in range(4)
    ]
    for code, output in (finish(p) for p in procs):
        assert code == 0, output[-4000:]
    found = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in found) == [1, 2, 3, 4]
    assert sorted(v.tags["init"] for v in found) == [f"random(seed={s})" for s in range(4)]
    pending = [m.model_id for m in client.search_logged_models(exp_ids) if str(m.status) != "READY"]
    assert not pending, pending


@pytest.mark.slow
def test_concurrent_writers_on_sqlite(tracking_uri, tmp_path):
    _concurrent_scores_and_registrations(tracking_uri, tmp_path, "conc-sql", None)


@pytest.mark.slow
def test_concurrent_writers_on_a_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        mlflow.set_experiment("ccfv-concurrency")
        _concurrent_scores_and_registrations(mlflow_server.url, tmp_path, "conc-srv", "ccfv-concurrency")
    finally:
        mlflow.set_tracking_uri(None)


def test_only_lost_races_are_retried():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    from mlflow_ccfv.tracking.retry import is_transient, retrying

    assert is_transient(MlflowException("x", error_code=RESOURCE_ALREADY_EXISTS))
    assert is_transient(RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.dataset_uuid"))
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not is_transient(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"))
    assert not is_transient(ValueError("bad value"))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "stored"

    assert retrying(flaky, what="a write") == "stored" and len(calls) == 3
    with pytest.raises(ValueError):
        retrying(lambda: (_ for _ in ()).throw(ValueError("real error")), what="a write")
    gives_up = []
    with pytest.raises(MlflowException, match="locked"):
        retrying(lambda: gives_up.append(1) or flaky_forever(), what="a write", attempts=3)
    assert len(gives_up) == 3


def flaky_forever():
    from mlflow.exceptions import MlflowException

    raise MlflowException("database is locked")


def test_a_process_that_loses_the_race_to_create_its_experiment_still_logs_there(tracking_uri, monkeypatch):
    """Two first commands create the experiment ``ccfv`` at once: the one whose creation fails because the
    other's landed first (simulated: its lookup ran before the other's insert) still runs in ``ccfv``,
    not in ``Default`` (MLflow's ``set_experiment`` returns without activating it there)."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from mlflow_ccfv.tracking.runs import use_experiment

    created = MlflowClient().create_experiment("raced")  # the other process's insert
    lookup = TrackingServiceClient.get_experiment_by_name
    calls = []

    def stale_first_lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", stale_first_lookup)
    assert use_experiment("raced") == "raced"
    monkeypatch.undo()
    with mlflow.start_run() as run:
        pass
    assert run.info.experiment_id == created
