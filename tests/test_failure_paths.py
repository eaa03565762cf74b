"""What a lost Ray cluster, an interrupted scoring and a tracking server that dies mid-command leave
behind (docs/reliability.md, "Failures"): no stale score, rank or alias on a version whose scoring did
not complete; one line and exit status 6 within the stated retry budget; the next command closes the
run left RUNNING."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.tag_values import dataset_score_keys

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server", "reliability")
from mlflow_server import MlflowServer, register_tiny_bank  # noqa: E402
from reliability import cli_env, finish, ranking_state, run_cli, start_cli  # noqa: E402

DATASET = "Task07"


def _tiny_target(parent: Path) -> Path:
    """Three cases of 16³ voxels: the smallest target the scoring accepts (two cases form the train split)."""
    from mlflow_ccfv.data.synthetic import generate_task

    return generate_task(DATASET, parent, n_cases=3, shape=(16, 16, 16), seed=0, progress=False)


def _score_args(folder: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "score",
        "--dataset",
        str(folder),
        "--methods",
        "ccfv",
        "--add-twins",
        "false",
        "--cache-dir",
        str(cache),
        *extra,
    ]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every process below ``pid``."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3:
            children.setdefault(int(fields[1]), []).append((int(fields[0]), fields[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _score_state(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """The version's ``transferability.*.<DATASET>`` tags."""
    tags = client.get_model_version(name, version).tags
    return {k: tags[k] for k in dataset_score_keys(tags, DATASET)}


def _failed_versions(client: MlflowClient) -> list[str]:
    """The versions the latest ``score`` run lists as failed (tag ``ccfv.failed_versions``)."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`mlflow.runName` LIKE 'score %'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return [v for v in runs[0].data.tags.get(T.RUN_FAILED_VERSIONS, "").split(",") if v]


def _assert_failed_versions_left_the_ranking(client: MlflowClient, failed: list[str]) -> None:
    state = ranking_state(client, DATASET)
    for label in failed:
        name, version = label.split("/")
        assert _score_state(client, name, version) == {}, label  # no marker, score, sampler or rank
        assert (name, version) not in state["alias"], state
    # what is left is one consistent ranking: ranks 1..n over the complete scores, the alias on rank 1
    assert sorted(state["ranks"].values()) == list(range(1, len(state["scores"]) + 1)), state
    top = [label for label, rank in state["ranks"].items() if rank == 1]
    assert [f"{n}/{v}" for n, v in state["alias"]] == top, state


def _cleared(out: str) -> list[str]:
    """The versions whose stale score tags the command says it removed."""
    return re.findall(r"(\S+/\d+): its scoring (?:failed|was interrupted), removed its stale tags", out)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["kill the raylet", "interrupt the driver"])
def test_a_lost_ray_cluster_or_an_interrupted_driver_leaves_no_stale_score_rank_or_alias(
    stop, tracking_uri, tmp_path, ray_turn
):
    """``score --executor ray`` whose local raylet is killed (or whose driver gets SIGINT) while the first
    task runs: the queued task fails (LocalRayletDiedError) or is cancelled, and its version, which held
    rank 1 and the alias from an earlier scoring, loses every score tag; what is left is one ranking."""
    pytest.importorskip("ray")
    from mlflow_ccfv.data.synthetic import generate_task

    # volumes large enough that a task runs for seconds: the stop lands before the queued task ends
    folder = generate_task(DATASET, tmp_path / "data", n_cases=3, shape=(64, 64, 64), seed=0, progress=False)
    versions = register_tiny_bank("raylet", seeds=(0, 1), prefix="raylet-unet")
    env = {**cli_env(tracking_uri, tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    # the rank-1 version last: with one task at a time (2 CPUs a task on a 2-CPU instance) it is queued
    models = ",".join(f"models:/{v.name}/{v.version}" for v in versions)
    code, out = run_cli(_score_args(folder, tmp_path / "cache", "--models", models), env, tmp_path)
    assert code == 0, out[-3000:]
    client = MlflowClient()
    before = ranking_state(client, DATASET)
    assert len(before["ranks"]) == 2 and len(before["alias"]) == 1
    best = "/".join(before["alias"][0])
    order = ",".join(f"models:/{label}" for label in sorted(before["ranks"], key=lambda m: m == best))
    args = _score_args(folder, tmp_path / "cache", "--models", order, "--force", "true")
    with ray_turn():  # the command starts a local Ray cluster
        proc = start_cli([*args, "--executor", "ray", "--num-cpus", "2"], env, tmp_path)
        deadline = time.monotonic() + 240
        stopped = False
        while not stopped and proc.poll() is None and time.monotonic() < deadline:
            below = _descendants(proc.pid)
            if any(cmd.startswith("ray::score_version_remote") for _, cmd in below):
                if stop == "kill the raylet":
                    raylet = next((pid for pid, cmd in below if cmd.split()[0].endswith("/raylet")), None)
                    assert raylet is not None, below
                    os.kill(raylet, signal.SIGKILL)
                else:
                    proc.send_signal(signal.SIGINT)
                stopped = True
            time.sleep(0.05)
        code, out = finish(proc, timeout=300)
    assert stopped, f"no Ray task seen running (exit {code}): {out[-3000:]}"
    assert code == 1, out[-3000:]
    if stop == "kill the raylet":
        assert best in _failed_versions(client), out[-3000:]
    assert best in _cleared(out), out[-3000:]
    _assert_failed_versions_left_the_ranking(client, _cleared(out))


@pytest.mark.slow
def test_an_interrupted_score_leaves_no_stale_score_rank_or_alias(tracking_uri, tmp_path):
    """Ctrl-C (SIGINT) while ``score`` scores its third version: that version, the earlier rank 1,
    loses its score tags and the ranks and alias are recomputed over the versions that hold a score."""
    from mlflow_ccfv.data.synthetic import generate_task

    # volumes large enough that computing features, not the store, takes most of a version's time
    folder = generate_task(DATASET, tmp_path / "data", n_cases=3, shape=(96, 96, 96), seed=0, progress=False)
    versions = register_tiny_bank("interrupt", seeds=(0, 1, 2, 3), prefix="int-unet")
    env = cli_env(tracking_uri, tmp_path / "cache")
    models = ",".join(f"models:/{v.name}/{v.version}" for v in versions)
    code, out = run_cli(_score_args(folder, tmp_path / "cache", "--models", models), env, tmp_path)
    assert code == 0, out[-3000:]
    client = MlflowClient()
    before = ranking_state(client, DATASET)
    best = "/".join(before["alias"][0])
    others = sorted(label for label in before["ranks"] if label != best)
    order = ",".join(f"models:/{label}" for label in [others[0], others[1], best, others[2]])
    proc = start_cli(_score_args(folder, tmp_path / "cache", "--models", order, "--force", "true"), env, tmp_path)
    # The interrupt lands while the third version is scored: sent when the command says it started it
    # (loading a version and computing its features on 96^3 volumes take seconds).
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "[3/4]" in line and line.rstrip().endswith(": started"):
            proc.send_signal(signal.SIGINT)
            break
    out = "".join(lines) + proc.stderr.read() + proc.stdout.read()
    proc.wait(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert f"{best}: its scoring was interrupted, removed its stale tags" in out, out[-3000:]
    _assert_failed_versions_left_the_ranking(client, [best])
    assert others[2] in ranking_state(client, DATASET)["ranks"]  # never started: its earlier score stays


def test_bank_closes_the_run_of_a_killed_process(tracking_uri, monkeypatch):
    """Every command that opens the store closes the RUNNING runs of dead processes, read-only ones too."""
    from click.testing import CliRunner

    from mlflow_ccfv.tracking.server import HTTP_RETRY_DEFAULTS

    for var in HTTP_RETRY_DEFAULTS:  # the command sets them in this process; restored afterwards
        monkeypatch.delenv(var, raising=False)

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.tracking.runs import process_identity

    register_tiny_bank("recover", seeds=(0,))
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = MlflowClient()
    killed = client.create_run("0", tags={T.PROCESS: f"{socket.gethostname()}:{int(done.stdout)}:1"}).info.run_id
    alive = client.create_run("0", tags={T.PROCESS: process_identity()}).info.run_id
    result = CliRunner().invoke(main, ["bank", "--bank", "recover"])
    assert result.exit_code == 0, result.output
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"  # this process is alive


@pytest.mark.slow
def test_a_server_that_dies_mid_score_ends_it_in_one_line_with_status_6(tmp_path, monkeypatch):
    """The tracking server is killed (-9) while ``score`` scores its second version: the command gives up
    within the retry budget, prints one line and exits 6 (not minutes of urllib3 retries); once the
    server is back, ``bank`` closes the run the dead command left RUNNING."""
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    server.wait_ready()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        mlflow.set_tracking_uri(server.url)
        folder = _tiny_target(tmp_path / "data")
        register_tiny_bank("lost", seeds=(0, 1, 2), prefix="lost-unet")
        env = cli_env(server.url, tmp_path / "cache")
        for var in (
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
            "MLFLOW_HTTP_REQUEST_TIMEOUT",
        ):
            env.pop(var, None)  # the command's own defaults
        proc = start_cli(_score_args(folder, tmp_path / "cache", "--bank", "lost"), env, tmp_path)
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "[1/3]" in line and not line.rstrip().endswith(": started"):
                server.kill()
                killed_at = time.monotonic()
                break
        else:
            pytest.fail(f"score ended before its first version: {''.join(lines)[-3000:]}")
        rest = proc.stderr.read()
        proc.wait(timeout=300)
        took = time.monotonic() - killed_at
        assert proc.returncode == 6, "".join(lines) + rest
        assert took < 45, took  # docs/reliability.md: about 17 s of retries, then the run's closing fails at once
        errors = [l for l in rest.splitlines() if l.startswith("score failed:")]
        assert len(errors) == 1 and "stopped answering" in errors[0], rest
        assert "Traceback" not in rest and "Retrying" not in rest and "urllib3" not in rest, rest
        # a command started while the server is down: refused up front, one line, exit 6
        started = time.monotonic()
        code, out = run_cli(["rank", "--dataset", DATASET], env, tmp_path)
        assert code == 6 and time.monotonic() - started < 30, out[-3000:]
        assert [l for l in out.splitlines() if l.strip()] == [l for l in out.splitlines() if "rank failed:" in l], out
        # the server comes back on the same address; the next command closes the dead command's run
        server = MlflowServer(tmp_path / "server", port=server.port)
        server.wait_ready()
        client = MlflowClient(server.url)
        code, out = run_cli(["bank", "--bank", "lost"], env, tmp_path)
        assert code == 0, out[-3000:]
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        status = [r.info.status for r in runs]
        assert "KILLED" in status and "RUNNING" not in status, status  # the score's run, closed by `bank`
    finally:
        mlflow.set_tracking_uri(None)
        if server.process.poll() is None:
            server.stop()
