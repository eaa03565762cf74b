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
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.tracking import register_network

    spec = small_spec("UNet", 1, 3)
    return [
        register_network(
            spec,
            random_state_dict(spec, s),
            f"{prefix}-{s}",
            "none",
            bank=bank,
            extra_tags={"init": f"random(seed={s})"},
        )
        for s in seeds
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` process (sqlite backend unless ``backend_store_uri``, served artifacts
    under ``root/artifacts``, ``workers`` processes) in its own process group; ``port`` (default a free
    one) lets a restarted server take its predecessor's address."""

    def __init__(self, root: Path, backend_store_uri: str | None = None, workers: int = 1, port: int | None = None):
        self.root = root
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_store_uri or f"sqlite:///{root / 'server.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        self._log_file = open(self.log, "a")
        self.process = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """``kill -9`` the server and every process it started (a server that dies)."""
        import signal

        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log_file.close()

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
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "MLFLOW_EXPERIMENT_NAME": "ccfv-remote",
            "MLFLOW_CCFV_CACHE": str(work / "cache"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.pop("MLFLOW_EXPERIMENT_ID", None)  # set by mlflow.set_experiment; the name is enough
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlflow",
                "run",
                str(REPO),
                "-e",
                "score",
                "--env-manager",
                "local",
                "-P",
                f"dataset={TARGET_TASK}",
                "-P",
                f"data_root={work / 'data'}",
                "-P",
                "bank=ui",
                "-P",
                "methods=ccfv,logme",
                "-P",  # the bank's three versions only (the default twin is tested in test_score and test_deploy)
                "add_twins=false",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=300,
        )
        yield {"server": mlflow_server, "target": target, "versions": versions, "score": proc, "work": work}
    finally:
        mlflow.set_tracking_uri(None)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable, or None when none is installed."""
    import shutil

    # Debian's /usr/bin/chromium is a wrapper script; start the browser binary itself.
    return (
        next((p for p in ("/usr/lib/chromium/chromium",) if os.access(p, os.X_OK)), None)
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


def require_chromium() -> None:
    """Skip the calling test when no Chromium is installed, except in CI (``CI=true``), where it fails."""
    if find_chromium() is not None:
        return
    message = "no Chromium installed (Debian/Ubuntu: `apt install chromium`, listed in .ci/apt-packages)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must run the browser test")
    pytest.skip(f"{message}; the browser test runs in CI")


class Chromium:
    """Headless Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``).

    No driver package needed: commands are NUL-terminated JSON on fd 3, replies and events on fd 4.
    """

    def __init__(self, profile_dir: Path, width: int = 1500, height: int = 900):
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("chromium not found; install Debian's `chromium` (listed in .ci/apt-packages)")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def _fds():  # runs in the child: move the pipe ends to fds 3 and 4 (above 10 first, no clobbering)
            import fcntl

            high_r, high_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--window-size={width},{height}",
                f"--user-data-dir={profile_dir}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buffer = b""
        self._next_id = 0
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def _read_message(self, timeout: float) -> dict:
        import json
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._out_r], [], [], timeout)
            if not ready:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60.0) -> dict:
        import json

        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def js(self, expression: str):
        """Evaluate ``expression`` in the page (promises awaited); returns its JSON value."""
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while time.monotonic() < deadline:
            value = self.js(guarded)
            if value:
                return value
            time.sleep(0.3)
        raise TimeoutError(f"page never satisfied: {expression}")

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)
