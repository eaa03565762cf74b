"""After the demo, the headline commands work as typed: the demo leaves its tasks where ``score`` looks
(``data``) and its models in the bank ``score`` uses (``default``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _option_default(command, name: str):
    return next(p.default for p in command.params if p.name == name)


def test_the_demo_writes_where_score_and_rank_look():
    from mlflow_ccfv.cli import main
    from mlflow_ccfv.pipelines.study_config import DemoSettings
    from mlflow_ccfv.tracking.search import DEFAULT_BANK

    demo, score = main.commands["demo"], main.commands["score"]
    assert _option_default(demo, "data_root") == _option_default(score, "data_root")
    assert _option_default(demo, "bank") == _option_default(score, "bank") == DEFAULT_BANK

    assert DemoSettings().bank == DEFAULT_BANK
    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    for key in ("data_root", "bank"):
        assert entry["demo"]["parameters"][key]["default"] == entry["score"]["parameters"][key]["default"], key
    from mlflow_ccfv.pipelines.study import DEMO_EXTRA_TASKS, DEMO_SOURCES

    # Task07 exists after the demo, with the shipped bank and when pre-training from scratch
    assert _option_default(demo, "sources") == ""
    assert "Task07" in DEMO_EXTRA_TASKS and "Task07" in DEMO_SOURCES and _option_default(demo, "target") != "Task07"
    # one default target everywhere (Task10: where the development study found pre-training matters),
    # and the shipped bank holds no model trained on it
    from mlflow_ccfv.networks.bank_files import read_manifest
    from mlflow_ccfv.pipelines.shipped_bank import SHIPPED_BANK

    target = DemoSettings().target
    assert target == _option_default(demo, "target") == entry["demo"]["parameters"]["target"]["default"] == "Task10"
    assert target not in {m.source_dataset for m in read_manifest(SHIPPED_BANK).models}


def _project_copy(dest: Path) -> Path:
    dest.mkdir()
    shutil.copytree(REPO / "mlflow_ccfv", dest / "mlflow_ccfv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("MLproject", "conda.yaml", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.slow
def test_headline_commands_after_a_tiny_demo(tracking_uri, tmp_path, monkeypatch):
    """In a copy of the project (``mlflow run .`` runs in the project folder): a tiny demo with the
    command's default data root and bank, then, as typed, ``mlflow run . -e score -P dataset=Task07
    --env-manager local``, ``mlflow-ccfv rank --dataset Task07`` and ``mlflow.models.evaluate(...,
    evaluators=["ccfv"])`` on a demo model."""
    import mlflow
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.pipelines.study import demo_config, run_transfer_study
    from mlflow_ccfv.pipelines.study_config import DemoSettings, StudyBudget
    from mlflow_ccfv.tracking import bank_versions, target_dataset

    project = _project_copy(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_CCFV_CACHE", str(tmp_path / "cache"))
    data_root = _option_default(main.commands["demo"], "data_root")
    mlflow.set_experiment("ccfv-demo")
    run_transfer_study(
        demo_config(
            data_root,
            DemoSettings(
                target="Task09",
                sources=("Task03", "Task07"),
                architectures=("UNet",),
                methods="ccfv,logme",
                from_scratch=True,  # the pre-training path (the shipped bank's path: tests/test_demo.py)
                synthetic=SyntheticSettings(n_cases=5, shape=(32, 32, 24)),
                budget=StudyBudget(pretrain_steps=2, finetune_steps=2, patch_size=(24, 24, 24), seeds=(0,)),
            ),
            progress=False,
        ),
        progress=False,
    )
    bank = bank_versions()  # the default bank
    assert sorted(v.tags["source_dataset"] for v in bank) == ["Task03", "Task07", "random-init"]

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", ".", "-e", "score", "-P", "dataset=Task07", "--env-manager", "local"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tags = {f"{v.name}/{v.version}": v.tags for v in bank_versions()}
    assert all("transferability.ccfv.Task07" in t for t in tags.values()), tags

    if "rank" in main.commands:  # the read-only ranking command (another change adds it)
        ranked = CliRunner().invoke(main, ["rank", "--dataset", "Task07"])
        assert ranked.exit_code == 0, ranked.output
        ranked_names = [n for n, t in tags.items() if "transferability.rank.Task07" in t]
        assert ranked_names and all(name.split("/")[0] in ranked.output for name in ranked_names)
        assert all(t["source_dataset"] == "random-init" for n, t in tags.items() if n not in ranked_names)

    best = min(ranked_names, key=lambda k: int(tags[k]["transferability.rank.Task07"]))
    name, version = best.split("/")
    with mlflow.start_run():
        result = mlflow.models.evaluate(
            model=f"models:/{name}/{version}",
            data=target_dataset("Task07", data_root=data_root),
            model_type="segmentation",
            evaluators=["ccfv"],
        )
    # the tag holds 6 significant digits
    assert result.metrics["ccfv"] == pytest.approx(float(tags[best]["transferability.ccfv.Task07"]), rel=1e-5)
