"""Shared fixtures: the real images in ``../shared/data/real`` and an isolated MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(autouse=True)
def _no_mlflow_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh embedded sqlite tracking store + artifact root under ``tmp_path``; sets MLFLOW_TRACKING_URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # default artifact root ./mlruns lands in tmp_path
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
