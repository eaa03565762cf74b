"""Helpers for the reliability tests: command-line processes on a shared store, and registry checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def cli_env(tracking_uri: str, cache: Path, experiment: str | None = None) -> dict[str, str]:
    """The environment of a ``python -m mlflow_ccfv`` child: this worktree's package, the store, one thread."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_CCFV_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # tiny networks; and CPU training is bit-reproducible (resume == uninterrupted)
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_CCFV_ALLOW_PICKLE"):
        env.pop(var, None)
    if experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    return env


def _interruptible() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt. A
    process started in the background by a shell without job control (``cmd &`` in a script, as a CI
    runner may start pytest) inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``python -m mlflow_ccfv <args>`` started in the background (stdout and stderr captured), Ctrl-C
    (SIGINT) interrupting it as in a terminal."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow_ccfv", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Wait for ``proc``; its return code and its output (stdout + stderr)."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    return finish(start_cli(args, env, cwd), timeout)


def ranking_state(client: MlflowClient, dataset: str, bank: str | None = None) -> dict:
    """What the registry says about ``dataset`` (within ``bank``, None: every bank): ``ranks`` {label: rank},
    ``scores`` {label: the default ranking's score}, ``alias`` [(name, version)] of every registered model
    holding ``best-<dataset>``."""
    from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING

    versions = client.search_model_versions(f"tags.`transferability.scored.{dataset}` LIKE '%'", max_results=1000)
    ranks, scores = {}, {}
    for mv in versions:
        if bank is not None and mv.tags.get("ccfv.bank") != bank:
            continue
        label = f"{mv.name}/{mv.version}"
        scores[label] = float(mv.tags[f"transferability.{DEFAULT_RANKING}.{dataset}"])
        if f"transferability.rank.{dataset}" in mv.tags:
            ranks[label] = int(mv.tags[f"transferability.rank.{dataset}"])
    alias = [
        (rm.name, str(rm.aliases[f"best-{dataset}"]))
        for rm in client.search_registered_models(max_results=1000)
        if f"best-{dataset}" in (rm.aliases or {}) and (bank is None or (rm.tags or {}).get("ccfv.bank") == bank)
    ]
    return {"ranks": ranks, "scores": scores, "alias": alias}


def assert_one_ranking(client: MlflowClient, dataset: str, expected: set[str], bank: str | None = None) -> dict:
    """Every version of ``expected`` is ranked (within ``bank``: ranks and the alias are per bank), ranks
    1..n follow the default ranking's scores, one alias holder."""
    state = ranking_state(client, dataset, bank)
    assert set(state["ranks"]) == expected, state
    order = sorted(state["ranks"], key=state["ranks"].get)
    assert [state["ranks"][label] for label in order] == list(range(1, len(expected) + 1)), state
    # ties broken by name and version, as the ranker does (a twin ties with the seed-0 network it copies)
    key = lambda label: (-state["scores"][label], label.split("/")[0], int(label.split("/")[1]))  # noqa: E731
    assert order == sorted(expected, key=key), state
    best_name, best_version = order[0].split("/")
    assert state["alias"] == [(best_name, best_version)], state
    return state


def assert_runs_settled(client: MlflowClient, experiment_ids: list[str]) -> list:
    """No RUNNING run, and one per-version scoring run per (model, dataset, settings) key."""
    runs = client.search_runs(experiment_ids, max_results=5000)
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert not running, f"RUNNING runs left: {running}"
    keys = [r.data.tags["ccfv.run_key"] for r in runs if "ccfv.run_key" in r.data.tags]
    dup = {k for k in keys if keys.count(k) > 1}
    detail = [
        (r.info.run_name, r.info.experiment_id, r.data.tags.get("mlflow.parentRunId"), r.info.end_time)
        for r in runs
        if r.data.tags.get("ccfv.run_key") in dup
    ]
    assert not dup, f"duplicate per-version runs: {sorted(keys)}; {detail}"
    return runs
