"""Helpers and fixtures for the MLflow tests: a tiny synthetic target, a tiny bank, a real `mlflow server`.

Test modules load the fixtures with ``pytest_plugins = ["mlflow_server"]`` so that the session-scoped
server is started once and shared by the remote-tracking and browser tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TARGET_TASK = "Task07"
TARGET_SHAPE = (32, 32, 24)
TARGET_CASES = 5


def make_target_folder(parent: Path, task: str = TARGET_TASK) -> Path:
    """A synthetic MSD task folder (5 cases of 32x32x24 voxels) under ``parent``."""
    from mlflow_ccfv.data.synthetic import generate_task

    return generate_task(task, parent, n_cases=TARGET_CASES, shape=TARGET_SHAPE, seed=0, progress=False)


def register_tiny_bank(bank: str, seeds=(0, 1, 2), prefix: str = "unet-rand"):
    """Register one randomly initialised small UNet per seed (a clear label: source 'none', tag init)."""
    from mlflow_ccfv.features import small_spec
    from mlflow_ccfv.tracking import register_network
    from mlflow_ccfv.tracking.entrypoints import random_state_dict

    spec = small_spec("UNet", 1, 3)
    return [
        register_network(spec, random_state_dict(spec, s), f"{prefix}-{s}", "none", bank=bank,
                         extra_tags={"init": f"random(seed={s})"})
        for s in seeds
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` process (sqlite backend, local artifacts, one worker)."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        self._log_file = open(self.log, "w")
        self.process = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=root)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A started ``mlflow server`` shared by the session; yields it (``.url``)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def remote_bank(mlflow_server, tmp_path_factory):
    """On the server: a 3-version bank ``ui`` scored on a synthetic Task07 (through ``mlflow run``).

    Returns a dict with the server, the target folder, the score command's output and table.
    """
    import mlflow

    work = tmp_path_factory.mktemp("remote-work")
    target = make_target_folder(work / "data")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server.url
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        mlflow.set_experiment("ccfv-remote")
        versions = register_tiny_bank("ui", seeds=(0, 1, 2))
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": "ccfv-remote",
               "MLFLOW_CCFV_CACHE": str(work / "cache"), "MLFLOW_DISABLE_TELEMETRY": "true"}
        proc = subprocess.run(
            [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "score", "--env-manager", "local",
             "-P", f"dataset={TARGET_TASK}", "-P", f"data_root={work / 'data'}", "-P", "bank=ui",
             "-P", "methods=ccfv,logme"],
            capture_output=True, text=True, env=env, cwd=work, timeout=300,
        )
        yield {"server": mlflow_server, "target": target, "versions": versions, "score": proc, "work": work}
    finally:
        mlflow.set_tracking_uri(None)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
