"""The demo/study workflow end to end on a tiny budget, and its re-run reusing the bank and the Dice."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner


@pytest.mark.slow
def test_tiny_demo_runs_and_reruns_from_what_exists(tracking_uri, tmp_path):
    """The default demo path at a tiny budget: the shipped bank verified and registered, a control, a
    small target, two fine-tuning seeds; the summary shows the intervals, the selection value and the
    pre-training margin; a rerun reuses the bank and every Dice."""
    import mlflow

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.networks.bank_files import read_manifest
    from mlflow_ccfv.pipelines.shipped_bank import SHIPPED_BANK
    from mlflow_ccfv.pipelines.study import demo_config, demo_evidence, print_summary, run_transfer_study
    from mlflow_ccfv.pipelines.study_config import DEMO_BUDGET, DemoSettings
    from mlflow_ccfv.tracking.search import bank_versions

    mlflow.set_experiment("tiny-demo")
    shipped = read_manifest(SHIPPED_BANK).models

    def make():
        return demo_config(
            tmp_path / "data",
            DemoSettings(
                target="Task10",
                methods="ccfv,ccfv_no_variety,logme,leep",
                synthetic=SyntheticSettings(n_cases=5, shape=(32, 32, 32)),
                budget=dataclasses.replace(DEMO_BUDGET, finetune_steps=2, seeds=(0, 1)),
            ),
            progress=False,
        )

    first = run_transfer_study(make(), progress=False)
    bank = bank_versions("default")
    # the shipped models + the random-init control of their architecture, each scored and fine-tuned on Task10
    assert sorted(v.tags["source_dataset"] for v in bank) == sorted(
        [m.source_dataset for m in shipped] + ["random-init"]
    )
    assert {v.tags["weights.sha256"] for v in bank if v.tags["source_dataset"] != "random-init"} == {
        m.sha256 for m in shipped
    }
    assert all("finetune.dice.Task10" in v.tags and "finetune.dice_sd.Task10" in v.tags for v in bank)
    assert (tmp_path / "data" / "Task07_SynthPancreas").is_dir()  # for the headline score command
    # the estimators scored, and the report-level variants pre-registered in docs/preregistration.md
    assert set(first.frame["method"]) == {
        "ccfv",
        "ccfv_no_variety",
        "logme",
        "leep",
        "ccfv_twin",
        "ccfv_no_variety_twin",
        "rank_aggregate",
    }
    assert first.seconds["finetune"] > 0 and first.seconds["score"] > 0
    text = print_summary(first, ui_hint=True)
    assert "mlflow ui --backend-store-uri" in text and "| 1 |" in text
    evidence = demo_evidence(first)
    assert "top1_dice" in evidence and "random pick" in evidence and "Did pre-training matter? Task10: best" in evidence

    second = run_transfer_study(make(), progress=False)
    assert len(bank_versions("default")) == len(shipped) + 1  # the bank is reused, not registered again
    assert all(o.reused for o in second.outcomes) and "finetune" not in second.seconds
    assert second.frame.sort_values(["model", "method"])["dice"].tolist() == pytest.approx(
        first.frame.sort_values(["model", "method"])["dice"].tolist()
    )

    result = CliRunner().invoke(main, ["report", "--bank", "default", "--datasets", "Task10"])
    assert result.exit_code == 0, result.output
    assert "Table 1" in result.output and "CC-FV" in result.output
    bad = CliRunner().invoke(main, ["finetune", "--model", "models:/x/1", "--dataset", "Task10", "--stpes", "3"])
    assert bad.exit_code != 0 and "Valid parameters" in bad.output


@pytest.mark.slow
def test_leave_one_out_over_two_targets_scores_and_reports_both(tracking_uri, tmp_path):
    """The study's per-target loop: each target scored in its own run, its bank leaving itself out."""
    import mlflow

    from mlflow_ccfv.data.synthetic import SyntheticSettings
    from mlflow_ccfv.pipelines.study import Source, StudyConfig, ensure_synthetic, run_transfer_study
    from mlflow_ccfv.tracking.search import bank_versions
    from mlflow_ccfv.training import TrainConfig

    mlflow.set_experiment("tiny-study")
    folders = ensure_synthetic(
        tmp_path / "data", ["Task03", "Task09"], SyntheticSettings(n_cases=5, shape=(32, 32, 24)), progress=False
    )
    tiny = TrainConfig(steps=3, patch_size=(24, 24, 24), learning_rate=3e-3, seed=0)
    config = StudyConfig(
        targets=folders,
        sources=[Source(f) for f in folders],
        bank="tiny",
        methods="ccfv,logme",
        architectures=("UNet",),
        pretrain=tiny,
        finetune=tiny,
    )
    result = run_transfer_study(config, progress=False)

    assert set(result.frame["dataset"]) == {"Task03", "Task09"}
    by_source = {v.tags["source_dataset"]: v.tags for v in bank_versions("tiny")}
    # leave-one-task-out: a model is scored and fine-tuned on the other target only (controls on both)
    assert (
        "transferability.ccfv.Task09" in by_source["Task03"]
        and "transferability.ccfv.Task03" not in by_source["Task03"]
    )
    assert "finetune.dice.Task03" in by_source["Task09"] and "finetune.dice.Task09" not in by_source["Task09"]
    assert {"finetune.dice.Task03", "finetune.dice.Task09"} <= set(by_source["random-init"])
    score_runs = mlflow.search_runs(filter_string="attributes.run_name LIKE 'score %'")
    assert sorted(score_runs["params.ccfv.dataset"]) == ["Task03", "Task09"]


@pytest.mark.slow
def test_pretrain_and_finetune_entry_points_under_mlflow_run(tracking_uri, tmp_path):
    """`mlflow run` logs the entry point's string parameters on its run first; the commands must
    log their own parameters without colliding with them (they write to a child run)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mlflow

    from mlflow_ccfv.data.synthetic import generate_task
    from mlflow_ccfv.tracking.search import bank_versions

    repo = Path(__file__).resolve().parents[1]
    for task in ("Task03", "Task09"):
        generate_task(task, tmp_path / "data", n_cases=5, shape=(32, 32, 24), progress=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}

    def mlflow_run(entry, *params):
        args = [sys.executable, "-m", "mlflow", "run", str(repo), "-e", entry, "--env-manager", "local"]
        for p in params:
            args += ["-P", p]
        done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    data = f"data_root={tmp_path / 'data'}"
    mlflow_run("pretrain", "dataset=Task03", data, "steps=2", "patch_size=24,24,24", "name=unet-tiny", "bank=tiny")
    mlflow_run("finetune", "model=models:/unet-tiny/1", "dataset=Task09", data, "steps=2", "patch_size=24,24,24")
    (version,) = bank_versions("tiny")
    assert version.tags["source_dataset"] == "Task03" and 0.0 <= float(version.tags["finetune.dice.Task09"]) <= 1.0
    runs = mlflow.search_runs(search_all_experiments=True)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert {"pretrain unet-tiny", "finetune unet-tiny/1 on Task09"} <= set(children["tags.mlflow.runName"])
