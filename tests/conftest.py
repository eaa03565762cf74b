"""Shared fixtures: the real images in ``../shared/data/real`` and an isolated MLflow store."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Test processes (pytest-xdist workers, `-n auto` in pyproject.toml): at most this many, and never more
# than the machine has cores. Each worker imports torch, MONAI and MLflow (~0.6 GiB) and many tests start
# command-line processes of their own, so more workers mostly add contention.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def pytest_configure(config: pytest.Config) -> None:
    """With worker processes, one torch thread in each (set before the workers start, so they and the
    processes they start inherit it): two processes with a thread per core each oversubscribe the cores
    (docs/development.md)."""
    if getattr(config.option, "numprocesses", None):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def _shared_root() -> Path:
    return Path(os.environ.get("MLFLOW_CCFV_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` (override with ``MLFLOW_CCFV_SHARED``). Required in CI, skipped elsewhere."""
    root = _shared_root() / "data" / "real"
    if not root.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real test data not found at {root}; CI expects ../shared beside the clone")
        pytest.skip(f"real test data not found at {root} (set MLFLOW_CCFV_SHARED)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: on a loaded 2-core machine more threads oversubscribe
    the cores (measured ~20x slower for these small networks)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_turn(tmp_path_factory) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A context manager to hold while a local Ray cluster runs. Ray does not support two local clusters
    on one machine at once (``ray.init``'s documentation; they can pick the same port), and two test
    workers could each start one: they take turns through a lock file that the workers of a run share
    (the parent of each worker's base temporary folder)."""
    lock = tmp_path_factory.getbasetemp().parent / "ray-cluster.lock"

    @contextlib.contextmanager
    def turn() -> Iterator[None]:
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return turn


@pytest.fixture(autouse=True)
def _no_mlflow_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory) -> Path:
    """A sqlite store that MLflow created (and migrated) once per session, in an empty folder.

    Creating a store runs MLflow's schema migrations, about a second each time; ``tracking_uri`` copies
    this one instead (same schema, same Default experiment, its artifact root moved to the test's folder).
    """
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("store-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # the Default experiment's artifact root, ./mlruns, resolves here
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder


def _copy_store(template: Path, folder: Path) -> None:
    """``template``'s store as ``folder/mlflow.db``, through sqlite's backup API (a consistent copy
    whatever MLflow still holds open), with the artifact locations moved from ``template`` to ``folder``."""
    import sqlite3

    source = sqlite3.connect(template / "mlflow.db")
    copy = sqlite3.connect(folder / "mlflow.db")
    try:
        source.backup(copy)
        with copy:
            copy.execute(
                "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                (str(template), str(folder)),
            )
    finally:
        source.close()
        copy.close()


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, _store_template) -> str:
    """A fresh embedded sqlite tracking store + artifact root under ``tmp_path``; sets MLFLOW_TRACKING_URI."""
    import mlflow

    _copy_store(_store_template, tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _reset_mlflow_state()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # default artifact root ./mlruns lands in tmp_path
    mlflow.set_tracking_uri(uri)
    yield uri
    _reset_mlflow_state()
    mlflow.set_tracking_uri(None)


def _reset_mlflow_state() -> None:
    """Forget the active run and experiment a previous test left in this process.

    ``mlflow.set_experiment`` caches the experiment id (and exports MLFLOW_EXPERIMENT_ID); with a
    fresh store per test, a cached id from another store makes every later call fail with
    "No Experiment with id=1 exists".
    """
    import mlflow
    from mlflow.tracking import fluent

    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent._active_experiment_id = None
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(var, None)  # not monkeypatch: it would restore a stale id afterwards
