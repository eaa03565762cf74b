"""Scoring with Ray against the PostgreSQL-backed server: one task per version, the same scores as the
serial path, one consistent result when a worker is killed mid-task (the task is retried).

One local Ray instance for the module (``ray.init(num_cpus=2)``, ~5-8 s to start here)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ccfv.cli import main
from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.pipelines.executors import RayExecutor, SerialExecutor, ray_runtime_env
from mlflow_ccfv.pipelines.score import ScoreConfig, TargetSource, score_versions
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.search import search_versions

ray = pytest.importorskip("ray")

from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING  # noqa: E402

pytest_plugins = ["mlflow_server", "postgres_server"]
pytest.register_assert_rewrite("mlflow_server", "postgres_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402
from postgres_server import wait_for  # noqa: E402

METHODS = ["ccfv", "logme"]


@pytest.fixture(scope="module")
def local_ray(ray_turn):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test instance: no token file under ~/.ray
    with ray_turn():
        # The workers import this checkout's package (not whatever `pip install -e` points at).
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=ray_runtime_env())
        yield
        ray.shutdown()


def _child_runs(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _scores(table):
    return {row.model: (row.ccfv, row.logme) for row in table.itertuples()}


@pytest.mark.slow
def test_ray_scores_equal_serial_scores_and_the_driver_ranks(local_ray, on_server, tmp_path, one_torch_thread):
    mlflow.set_experiment("ccfv-ray")
    versions = register_tiny_bank("ray", seeds=(0, 1, 2), prefix="ray-unet")
    folder = make_target_folder(tmp_path / "data")
    target = make_target(MSDDataset.load(folder), "train")
    serial = score_versions(
        versions, target, ScoreConfig(METHODS, cache_dir=tmp_path / "serial"), executor=SerialExecutor()
    )
    # From the logged dataset: each worker downloads it (once per worker cache) and checks it.
    uri = CliRunner().invoke(main, ["log-dataset", "--dataset", str(folder)]).output.strip().rsplit(" ", 1)[-1]
    # The command line: `score --executor ray` joins the Ray instance this module started.
    cli = CliRunner().invoke(
        main,
        ["score", "--dataset", uri, "--bank", "ray", "--methods", ",".join(METHODS)]
        + ["--cache-dir", str(tmp_path / "ray"), "--executor", "ray", "--num-cpus", "1"],
    )
    assert cli.exit_code == 0, cli.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("ccfv-ray").experiment_id
    (parent,) = client.search_runs([exp], filter_string="params.`ccfv.executor` = 'ray'")
    children = _child_runs(client, parent.info.run_id)
    remote = {r.data.tags[T.RUN_MODEL]: (r.data.metrics["ccfv"], r.data.metrics["logme"]) for r in children}
    # the default ranking registered the UNet's random-init twin and a worker scored it: ray-unet-0's
    # network with seed-0 random weights, which are ray-unet-0's own weights, hence its scores
    twin = [m for m in remote if m.startswith("unet-random-init/")]
    assert len(twin) == 1 and remote.pop(twin[0]) == remote["ray-unet-0/1"]
    children = [r for r in children if r.data.tags[T.RUN_MODEL] not in twin]
    assert remote == _scores(serial)  # bit-identical floats, computed by the workers
    assert all(r.data.params["features_cached"] == "False" for r in children)
    # The API, the target read from its folder path (a shared file system).
    with mlflow.start_run(run_name="ray score, folder"):
        table = score_versions(
            versions,
            target,
            ScoreConfig(METHODS, cache_dir=tmp_path / "ray2"),
            executor=RayExecutor(num_cpus=1),
            source=TargetSource(str(folder), "train", 0),
        )
    assert table["error"].isna().all() and _scores(table) == _scores(serial)
    assert sorted(r.data.tags[T.RUN_MODEL] for r in children) == sorted(f"ray-unet-{s}/1" for s in (0, 1, 2))
    assert all(r.info.status == "FINISHED" and "ccfv" in r.data.metrics for r in children)
    tagged = {f"{v.name}/1": client.get_model_version(v.name, "1").tags for v in versions}
    ranked = sorted(tagged, key=lambda m: -serial.set_index("model").loc[m, DEFAULT_RANKING])
    # Ranks are per bank (docs/reliability.md): the bank's ranks follow the serial scores' order, and the one
    # rank-1 version of the bank holds the alias.
    ranks = [int(tagged[m][T.rank_tag(TARGET_TASK)]) for m in ranked]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    bank = versions[0].tags[T.BANK]
    (top,) = [v for v in search_versions(f"tags.`{T.rank_tag(TARGET_TASK)}` = '1'") if v.tags.get(T.BANK) == bank]
    assert client.get_model_version_by_alias(top.name, T.best_alias(TARGET_TASK)).version == str(top.version)


def _task_pids(name: str = "ray::score_version_remote") -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if line.split(None, 1)[-1].startswith(name)]


@pytest.mark.slow
def test_a_killed_worker_leaves_one_consistent_result(local_ray, on_server, tmp_path, one_torch_thread):
    mlflow.set_experiment("ccfv-ray-kill")
    versions = register_tiny_bank("ray-kill", seeds=(4, 5), prefix="kill-unet")
    folder = make_target_folder(tmp_path / "data")
    target = make_target(MSDDataset.load(folder), "train")
    killed: list[int] = []

    def kill_first_task():
        pid = wait_for(lambda: _task_pids(), timeout=180, interval=0.05)[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_first_task)
    killer.start()
    with mlflow.start_run(run_name="ray score, one worker killed") as parent:
        remote = score_versions(
            versions,
            target,
            ScoreConfig(METHODS, cache_dir=tmp_path / "ray"),
            executor=RayExecutor(num_cpus=1, max_retries=3),
        )
    killer.join()
    assert killed, "no Ray task was seen running"
    assert remote["error"].isna().all(), remote["error"].tolist()
    serial = score_versions(versions, target, ScoreConfig(METHODS, cache_dir=tmp_path / "serial"), log=False)
    assert _scores(remote) == _scores(serial)
    client = MlflowClient()
    children = _child_runs(client, parent.info.run_id)  # deleted leftovers are not listed
    assert sorted(r.data.tags[T.RUN_MODEL] for r in children) == ["kill-unet-4/1", "kill-unet-5/1"]
    assert all(r.info.status == "FINISHED" for r in children)
    ranks = {}
    for v in versions:
        tags = client.get_model_version(v.name, "1").tags
        want = remote.set_index("model").loc[f"{v.name}/1"]
        assert float(tags[T.score_tag("ccfv", TARGET_TASK)]) == pytest.approx(want["ccfv"], rel=1e-5)
        ranks[int(want["rank"])] = int(tags[T.rank_tag(TARGET_TASK)])
    # registry-wide ranks (every version scored on the target in this store) keep the batch's order
    assert [ranks[k] for k in sorted(ranks)] == sorted(ranks.values()) and len(set(ranks.values())) == len(ranks)


@pytest.mark.slow
def test_the_study_with_ray_matches_the_serial_study(local_ray, on_server, tmp_path, monkeypatch, one_torch_thread):
    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.pipelines.study import demo_config, run_transfer_study
    from mlflow_ccfv.pipelines.study_config import DemoSettings, StudyBudget

    monkeypatch.setenv("MLFLOW_CCFV_CACHE", str(tmp_path / "cache"))
    mlflow.set_experiment("ccfv-ray-study")
    config = demo_config(
        tmp_path / "data",
        DemoSettings(
            target="Task09",
            sources=("Task03", "Task07"),
            bank="ray-study",
            architectures=("UNet",),
            methods="ccfv",
            from_scratch=True,
            synthetic=SyntheticSettings(n_cases=5, shape=(32, 32, 24)),
            budget=StudyBudget(pretrain_steps=2, finetune_steps=3, seeds=(0,)),
        ),
        progress=False,
    )
    config = dataclasses.replace(config, seeds=(0, 1))  # one Ray task per (model, seed)
    serial = run_transfer_study(config, progress=False)
    remote = run_transfer_study(
        config, progress=False, force_finetune=True, force_score=True, executor=RayExecutor(num_cpus=1)
    )
    assert not any(o.reused for o in remote.outcomes) and len(remote.outcomes) == 3
    # the same Dice per seed as the serial path, and the version tags hold their mean, sd and seeds
    assert {o.model: o.seed_dice for o in remote.outcomes} == {o.model: o.seed_dice for o in serial.outcomes}
    assert all(set(o.seed_dice) == {0, 1} for o in remote.outcomes)
    assert {o.model: o.dice.mean for o in remote.outcomes} == {o.model: o.dice.mean for o in serial.outcomes}
    client = MlflowClient()
    for o in remote.outcomes:
        name, version = o.model.rsplit("/", 1)
        tags = client.get_model_version(name, version).tags
        per_seed = [o.seed_dice[0], o.seed_dice[1]]
        assert float(tags[T.dice_tag(o.dataset)]) == pytest.approx(np.mean(per_seed), abs=1e-6)
        assert float(tags[T.dice_sd_tag(o.dataset)]) == pytest.approx(np.std(per_seed, ddof=1), abs=1e-6)
        assert tags[T.finetune_seeds_tag(o.dataset)] == "0,1"
    cols = ["dataset", "model", "method", "score", "dice"]
    pd_serial = serial.frame[cols].sort_values(cols[:3]).reset_index(drop=True)
    pd_remote = remote.frame[cols].sort_values(cols[:3]).reset_index(drop=True)
    assert pd_remote.equals(pd_serial)
    study_run = mlflow.last_active_run()
    finetunes = client.search_runs(
        [study_run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{study_run.info.run_id}' and tags.`{T.RUN_STAGE}` = 'finetune'",
    )
    # per model: one run per seed (a Ray task each) and the run combining the seeds
    assert len(finetunes) == 3 * 2 + 3 and all(r.info.status == "FINISHED" for r in finetunes)
