"""A real PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` on a temporary folder and a free port.

Debian's PostgreSQL (``.ci/apt-packages``: ``postgresql``) puts ``initdb``/``pg_ctl`` under
``pg_config --bindir`` (``/usr/lib/postgresql/<major>/bin``), not on PATH. ``initdb`` and ``postgres``
refuse to run as root, and CI runs the tests as root: then the cluster is created and run as the
``postgres`` system user (created by the Debian package; ``nobody`` otherwise) through ``runuser``,
in a folder under /tmp that user owns. Authentication is ``trust`` on 127.0.0.1 only.

Without the binaries the fixture skips, unless ``CI`` is set (then it fails: CI must test this).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl``: ``pg_config --bindir``, else Debian's newest, else PATH."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_user() -> str | None:
    """None when not root; else the unprivileged user the server runs as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


class PostgresServer:
    """A throw-away PostgreSQL cluster; ``uri(db)`` is a SQLAlchemy URL for MLflow."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.user = _service_user()
        self.root = Path(tempfile.mkdtemp(prefix="ccfv-pg-"))  # /tmp: reachable by the service user
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self._as_user([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._as_user([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start"])

    def _as_user(self, cmd: list[str]) -> None:
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{log}")

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its ``postgresql+psycopg2://`` URI."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.uri(name)

    def uri(self, db: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        try:
            self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A started PostgreSQL shared by the session (skipped without the binaries unless CI is set)."""
    bindir = postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's postgresql (.ci/apt-packages)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_mlflow_server(postgres_server, tmp_path_factory):
    """``mlflow server`` on the PostgreSQL ``mlflow`` database, artifacts served from a local folder
    (``--serve-artifacts --artifacts-destination``), two workers; yields it (``.url``)."""
    from mlflow_server import MlflowServer

    uri = postgres_server.create_database("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("pg-mlflow"), backend_store_uri=uri, workers=2)
    try:
        server.wait_ready(timeout=240)
        yield server
    finally:
        server.stop()


@pytest.fixture
def on_server(pg_mlflow_server, monkeypatch):
    """This test's MLflow client points at the PostgreSQL-backed server (fresh fluent state)."""
    import mlflow
    from conftest import _reset_mlflow_state

    _reset_mlflow_state()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_mlflow_server.url)
    mlflow.set_tracking_uri(pg_mlflow_server.url)
    yield pg_mlflow_server
    _reset_mlflow_state()
    mlflow.set_tracking_uri(None)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
