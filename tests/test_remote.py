"""`register` and `score` against a real `mlflow server` (remote tracking + proxied artifacts)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import REPO, TARGET_TASK  # noqa: E402


@pytest.mark.slow
def test_mlflow_run_register_and_score_against_server(remote_bank, tmp_path):
    server = remote_bank["server"]
    proc = remote_bank["score"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(server.url)
    versions = [client.get_model_version(v.name, v.version) for v in remote_bank["versions"]]
    scores = {f"{v.name}/{v.version}": float(v.tags[f"transferability.ccfv.{TARGET_TASK}"]) for v in versions}
    ranked = sorted(scores, key=scores.get, reverse=True)
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| ") and "unet-rand" in l]
    assert [r.split("|")[2].strip() for r in rows] == ranked  # the printed table is the ranking
    best_name = ranked[0].split("/")[0]
    assert client.get_model_version_by_alias(best_name, f"best-{TARGET_TASK}").version == "1"
    # Artifacts went through the server's artifact proxy.
    exp = client.get_experiment_by_name("ccfv-remote")
    parents = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert any(a.path == "ranking" for p in parents for a in client.list_artifacts(p.info.run_id))

    # `register` through `mlflow run` on the server; a misspelled -P is rejected with the valid names.
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "MLFLOW_EXPERIMENT_NAME": "ccfv-remote"}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    base = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "-e",
        "register",
        "--env-manager",
        "local",
        "-P",
        "name=unet-remote",
        "-P",
        "source_dataset=none",
        "-P",
        "small_spec=UNet:1:3",
        "-P",
        "random_init=true",
        "-P",
        "bank=remote",
    ]
    ok = subprocess.run(base, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    mv = client.get_model_version("unet-remote", "1")
    assert mv.tags["ccfv.bank"] == "remote" and mv.tags["init"] == "random(seed=0)"
    loaded_uri = mv.source
    mlflow.set_tracking_uri(server.url)
    try:
        from mlflow_ccfv.tracking import load_version

        assert load_version("models:/unet-remote/1").model_id == loaded_uri.removeprefix("models:/")
    finally:
        mlflow.set_tracking_uri(None)
    bad = subprocess.run(
        base + ["-P", "patch_sise=3"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert bad.returncode != 0
    assert "Unknown parameter '--patch_sise'" in bad.stderr and "patch_size" in bad.stderr
    assert len(client.search_model_versions("name = 'unet-remote'")) == 1  # the rejected run created nothing
