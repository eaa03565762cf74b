"""The Kubernetes files (deploy/kubernetes) are what MLflow's Kubernetes backend reads, and their entry
points are the repository's. (Running them needs Docker and a cluster: not tested here.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects._project_spec import load_project

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"


def test_the_kubernetes_backend_config_parses_and_names_the_job_template(monkeypatch):
    monkeypatch.chdir(REPO)  # the template path is relative to where `mlflow run` is started
    config = _parse_kubernetes_config(json.loads((K8S / "kubernetes_config.json").read_text()))
    job = config["kube-job-template"]
    assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]  # the one MLflow fills in
    assert {"image", "command", "env"} <= set(container)
    assert any(e["name"] == "MLFLOW_CCFV_CACHE" for e in container["env"])


def test_the_kubernetes_project_runs_the_repositorys_entry_points_in_docker():
    k8s, root = load_project(str(K8S)), load_project(str(REPO))
    assert k8s.docker_env and k8s.docker_env["image"]
    for name in ("log_dataset", "score", "study"):
        mine, theirs = k8s.get_entry_point(name), root.get_entry_point(name)
        assert mine.command == theirs.command, name
        assert {k: (p.type, p.default) for k, p in mine.parameters.items()} == {
            k: (p.type, p.default) for k, p in theirs.parameters.items()
        }, name
    assert yaml.safe_load((K8S / "MLproject").read_text())["docker_env"]["image"].endswith("mlflow-ccfv:latest")
