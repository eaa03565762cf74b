"""kill -9 at several points, then the same command again: the registry ends as after an uninterrupted
run (same tags), with no RUNNING run, no duplicate per-version run and no orphan LoggedModel; a killed
fine-tuning resumes from its checkpoint (docs/reliability.md, "Crashes")."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_ccfv.cli.base import DEFAULT_EXPERIMENT
from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.data.synthetic import generate_task
from mlflow_ccfv.networks import random_state_dict, small_spec
from mlflow_ccfv.pipelines.finetune import finetune_version
from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest
from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING
from mlflow_ccfv.tracking import register_network
from mlflow_ccfv.training import TrainConfig

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server", "reliability")
from mlflow_server import register_tiny_bank  # noqa: E402
from reliability import assert_one_ranking, assert_runs_settled, cli_env, run_cli, start_cli  # noqa: E402


def _cli_experiment(client: MlflowClient) -> list[str]:
    """The experiment a command writes to without --experiment (cli_env sets no MLFLOW_EXPERIMENT_*)."""
    return [client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id]


#: Moments of a `score` run's logging phase, as rows that appear in the store.
SCORE_KILL_POINTS = {
    "parent run started": "SELECT count(*) FROM tags WHERE key = 'ccfv.process'",
    "first version tag": "SELECT count(*) FROM model_version_tags WHERE key LIKE 'transferability.%'",
}


def _db(tracking_uri: str) -> Path:
    return Path(tracking_uri.removeprefix("sqlite:///"))


def _kill_when(proc, db: Path, query: str, timeout: float = 300.0) -> None:
    """Poll the store until ``query`` counts a row, then kill -9 ``proc``; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (rc {proc.returncode}) before the kill point: {(out + err)[-3000:]}")
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
                if con.execute(query).fetchone()[0]:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate()
                    assert proc.returncode == -signal.SIGKILL
                    return
        except sqlite3.OperationalError:  # locked or not created yet
            pass
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"kill point {query!r} not reached in {timeout}s")


def _score_tags(client: MlflowClient, versions, dataset: str) -> dict[str, dict[str, str]]:
    return {
        f"{v.name}/{v.version}": {
            k: val
            for k, val in client.get_model_version(v.name, v.version).tags.items()
            if k.startswith("transferability.")
        }
        for v in versions
    }


@pytest.mark.slow
@pytest.mark.parametrize("point", list(SCORE_KILL_POINTS))
def test_score_killed_in_its_logging_phase_then_rerun(tracking_uri, tmp_path, point):
    data = tmp_path / "data"
    generate_task("Task09", data, n_cases=4, shape=(32, 32, 24), progress=False)
    cache = tmp_path / "cache"
    versions = register_tiny_bank("crash", seeds=(0, 1, 2))
    target = make_target(MSDDataset.load("Task09", data_root=data))
    # The uninterrupted result (features cached, so the child reaches its logging phase at once).
    table = score_versions(versions, target, ScoreConfig(["ccfv", "logme"], cache_dir=cache), log=False)
    expected = {}
    for row in table.itertuples():
        expected[row.model] = {
            "transferability.ccfv.Task09": f"{row.ccfv:.6g}",
            "transferability.logme.Task09": f"{row.logme:.6g}",
            "transferability.rank.Task09": str(row.rank),
            "transferability.ranked_by.Task09": DEFAULT_RANKING,
            "transferability.sampler.Task09": "default",
            "transferability.scored.Task09": f"default/{target.digest}",
        }
    env = cli_env(tracking_uri, cache)
    args = ["score", "--dataset", "Task09", "--data-root", str(data), "--bank", "crash", "--methods", "ccfv,logme"]
    args += ["--add-twins", "false"]  # the bank as registered: the expected tags are computed without a twin
    _kill_when(start_cli(args, env, tmp_path), _db(tracking_uri), SCORE_KILL_POINTS[point])
    client = MlflowClient()
    killed = [r for r in client.search_runs(_cli_experiment(client)) if r.info.status == "RUNNING"]
    assert killed  # the kill left its run(s) RUNNING ...
    code, output = run_cli(args, env, tmp_path)
    assert code == 0, output[-3000:]
    assert "closed" in output and "KILLED" in output
    # ... the next command closed them, and the registry is that of an uninterrupted run.
    assert {client.get_run(r.info.run_id).info.status for r in killed} == {"KILLED"}
    assert _score_tags(client, versions, "Task09") == expected
    assert_one_ranking(client, "Task09", set(expected))
    runs = assert_runs_settled(client, _cli_experiment(client))
    assert len([r for r in runs if "ccfv.run_key" in r.data.tags]) == 3


@pytest.mark.slow
def test_finetune_killed_during_training_resumes_from_its_checkpoint(tracking_uri, tmp_path, one_torch_thread):
    data = tmp_path / "data"
    generate_task("Task09", data, n_cases=5, shape=(32, 32, 24), progress=False)
    spec = small_spec("UNet", 1, 3)
    state = random_state_dict(spec, 0)
    a = register_network(spec, state, "ft-a", "none", bank="ft")
    b = register_network(spec, state, "ft-b", "none", bank="ft")  # the same network under another name
    config = TrainConfig(steps=16, batch_size=2, patch_size=(24, 24, 24), seed=0)
    cache = tmp_path / "cache"
    finetune_version(
        FinetuneRequest(
            "models:/ft-a/1", "Task09", config, data_root=data, checkpoint_dir=cache / "a", progress=False, device="cpu"
        )
    )

    env = cli_env(tracking_uri, cache)
    args = ["finetune", "--model", "models:/ft-b/1", "--dataset", "Task09", "--data-root", str(data)]
    args += ["--steps", "16", "--patch-size", "24,24,24", "--checkpoint-every", "4"]
    proc = start_cli(args, env, tmp_path)
    deadline = time.monotonic() + 300
    while not list((cache / "finetune").glob("*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "finetune ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    client = MlflowClient()
    assert [
        r.info.status
        for r in client.search_runs(_cli_experiment(client))
        if r.info.run_name.startswith("finetune ft-b")
    ] == ["RUNNING"]
    code, output = run_cli(args, env, tmp_path)
    assert code == 0, output[-3000:]
    runs = assert_runs_settled(client, _cli_experiment(client))
    mine = [r for r in runs if r.info.run_name.startswith("finetune ft-b")]
    assert len(mine) == 1 and mine[0].info.status == "FINISHED"  # the killed run was replaced
    assert int(mine[0].data.tags["ccfv.resumed_from_step"]) >= 4
    assert not list((cache / "finetune").glob("*.pt"))  # removed once finished
    tags_a = client.get_model_version(a.name, a.version).tags
    tags_b = client.get_model_version(b.name, b.version).tags
    # Resumed training is the same training: the same Dice as the uninterrupted fine-tuning of ft-a.
    assert tags_b["finetune.dice.Task09"] == tags_a["finetune.dice.Task09"]
    assert tags_b["finetune.budget.Task09"] == tags_a["finetune.budget.Task09"]


@pytest.mark.slow
def test_register_killed_with_a_pending_logged_model_then_rerun(tracking_uri, tmp_path):
    register_tiny_bank("warm", seeds=(9,))  # the store exists before the child starts
    env = cli_env(tracking_uri, tmp_path / "cache")
    args = ["register", "--name", "killed-reg", "--source-dataset", "none", "--small-spec", "UNet:1:3"]
    args += ["--random-init", "true"]
    _kill_when(start_cli(args, env, tmp_path), _db(tracking_uri), "SELECT count(*) FROM logged_models WHERE status = 1")
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    pending = [m.model_id for m in client.search_logged_models(_cli_experiment(client)) if str(m.status) == "PENDING"]
    assert len(pending) == 1
    code, output = run_cli(args, env, tmp_path)
    assert code == 0, output[-3000:]
    assert "deleted 1 PENDING LoggedModel" in output
    models = client.search_logged_models(_cli_experiment(client))
    assert pending[0] not in {m.model_id for m in models}
    assert {str(m.status) for m in models} == {"READY"}
    assert [str(v.version) for v in client.search_model_versions("name = 'killed-reg'")] == ["1"]


def test_recover_crashed_closes_only_runs_of_dead_local_processes(tracking_uri):
    import socket
    import subprocess
    import sys

    from mlflow_ccfv.tracking.runs import process_identity, recover_crashed

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    client = MlflowClient()
    identities = {
        "dead": f"{socket.gethostname()}:{dead_pid}:1",
        "alive": process_identity(),
        "other host": f"not-{socket.gethostname()}:{dead_pid}:1",
    }
    runs = {
        what: client.create_run("0", tags={"ccfv.process": ident}).info.run_id for what, ident in identities.items()
    }
    model = client.create_logged_model("0", name="half-written", tags={"ccfv.process": identities["dead"]})
    live_model = client.create_logged_model("0", name="in-progress", tags={"ccfv.process": identities["alive"]})
    recovered = recover_crashed()
    assert recovered == {"runs": [runs["dead"]], "models": [model.model_id]}
    status = {what: client.get_run(run_id).info.status for what, run_id in runs.items()}
    assert status == {"dead": "KILLED", "alive": "RUNNING", "other host": "RUNNING"}
    assert [m.model_id for m in client.search_logged_models(["0"])] == [live_model.model_id]
    assert recover_crashed() == {"runs": [], "models": []}


def test_a_failing_step_marks_its_run_and_the_mlflow_run_parent_failed(tracking_uri, monkeypatch):
    from mlflow_ccfv.tracking.runs import command_run

    parent = MlflowClient().create_run("0").info.run_id  # what `mlflow run` creates for an entry point
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    with pytest.raises(ValueError, match="boom"), command_run("finetune x") as run:
        raise ValueError("boom")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # ending the resumed run may already unset it
    client = MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(run.info.run_id).data.tags["ccfv.process"].split(":")[1] == str(os.getpid())


def test_recover_crashed_deletes_a_ready_but_unregistered_model_of_a_killed_register(tracking_uri):
    """A ``register`` killed after its LoggedModel became READY but before the version existed: the model
    still carries ``ccfv.registering`` and has no version, so it is an orphan; one that did get its
    version is finalised (tag removed), and a finished model of another kind is left alone."""
    import socket
    import subprocess
    import sys

    from mlflow.entities import LoggedModelStatus

    from mlflow_ccfv.tracking.runs import recover_crashed

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"ccfv.process": f"{socket.gethostname()}:{int(done.stdout)}:1"}
    client = MlflowClient()

    def ready(name: str, tags: dict[str, str]) -> str:
        model = client.create_logged_model("0", name=name, tags=tags)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    orphan = ready("orphan", {**dead, "ccfv.registering": "true"})
    registered = ready("late", {**dead, "ccfv.registering": "true"})
    client.create_registered_model("late")
    client.create_model_version("late", source=f"models:/{registered}", model_id=registered)
    finetuned = ready("finetuned", dict(dead))  # e.g. a fine-tuned network logged by a killed finetune
    assert recover_crashed()["models"] == [orphan]
    left = {m.model_id: m.tags for m in client.search_logged_models(["0"])}
    assert set(left) == {registered, finetuned}
    assert "ccfv.registering" not in left[registered]
    assert recover_crashed() == {"runs": [], "models": []}


def test_register_leaves_no_registering_tag(tracking_uri):
    """After a completed ``register`` the LoggedModel no longer looks half-registered."""
    (mv,) = register_tiny_bank("done", seeds=(4,))
    from mlflow_ccfv.tracking import logged_model_id

    model = MlflowClient().get_logged_model(logged_model_id(mv))
    assert "ccfv.registering" not in (model.tags or {}) and str(model.status) == "READY"
