"""pretrain -> register -> score -> finetune -> report through a real sqlite MLflow store (tiny budgets)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.pipelines.controls import register_control
from mlflow_ccfv.pipelines.finetune import finetune_version
from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest
from mlflow_ccfv.pipelines.pretrain import PretrainRequest, pretrain_and_register
from mlflow_ccfv.study import pearson, weighted_tau
from mlflow_ccfv.tracking.search import bank_versions
from mlflow_ccfv.training import TrainConfig
from mlflow_ccfv.training.dice import constant_predictor_dice

SHAPE = (32, 32, 32)


def write_blob_task(root: Path, name: str, n: int, seed: int, bright: float) -> Path:
    """An easy MSD task: a ball of intensity ``bright`` (class 1) in noise, 2 mm isotropic."""
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    training = []
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for i in range(n):
        centre = rng.uniform(10, 22, size=3)
        label = (((grid - centre[:, None, None, None]) ** 2).sum(0) < rng.uniform(5, 8) ** 2).astype(np.uint8)
        image = (rng.normal(100, 20, SHAPE) + bright * label).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "name": name,
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "ball"},
                "numTraining": n,
                "training": training,
                "test": [],
            }
        )
    )
    return folder


@pytest.mark.slow
def test_pretrain_score_finetune_report(tracking_uri, tmp_path):
    import mlflow

    from mlflow_ccfv.data import make_target
    from mlflow_ccfv.pipelines.report import report_bank, scores_from_tags
    from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions

    mlflow.set_experiment("test-finetune")
    source = write_blob_task(tmp_path, "Task01_Bright", 4, seed=1, bright=150)
    target = write_blob_task(tmp_path, "Task02_Dim", 5, seed=2, bright=80)
    pre = TrainConfig(steps=12, patch_size=(24, 24, 24), learning_rate=1e-2, seed=0)
    mv = pretrain_and_register(PretrainRequest(source, "UNet", pre, bank="t"), progress=False)
    assert mv.tags["source_dataset"] == "Task01" and mv.tags["pretrain.steps"] == "12"
    again = pretrain_and_register(PretrainRequest(source, "UNet", pre, bank="t"), progress=False)
    assert again.version == mv.version  # reused, not trained again
    register_control("UNet", 1, 2, (24, 24, 24), bank="t")
    short = TrainConfig(steps=4, patch_size=(24, 24, 24), seed=1)
    pretrain_and_register(PretrainRequest(source, "UNet", short, name="unet-short", bank="t"), progress=False)
    bank = bank_versions("t")
    assert {v.tags["source_dataset"] for v in bank} == {"Task01", "random-init"} and len(bank) == 3

    score_versions(bank, make_target(MSDDataset.load(target), "train"), ScoreConfig(["ccfv", "logme", "gbc"]))

    ft = TrainConfig(steps=30, patch_size=(24, 24, 24), learning_rate=1e-2, seed=0)
    outcomes = [
        finetune_version(FinetuneRequest(f"models:/{v.name}/{v.version}", target, ft, progress=False)) for v in bank
    ]
    ds = MSDDataset.load(target)
    test_cases = list(ds.iter_cases(ds.split().test, progress=False))
    floor = constant_predictor_dice(test_cases, 2)
    for o in outcomes:
        assert 0.0 <= o.dice.mean <= 1.0
        assert o.dice.mean > floor, (o.model, o.dice.mean, floor)
    bank = bank_versions("t")
    for v, o in zip(bank, outcomes):
        assert float(v.tags["finetune.dice.Task02"]) == pytest.approx(o.dice.mean, abs=1e-6)
        run = mlflow.get_run(v.tags["finetune.run.Task02"])
        assert run.data.params["train.steps"] == "30" and run.data.params["train.seed"] == "0"
        assert "finetune_dice" in run.data.metrics and "dice.ball" in run.data.metrics
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
        assert len(history) == 30
        # the bank version's LoggedModel carries the Dice, linked to the target dataset
        model_id = v.source.removeprefix("models:/")
        logged = mlflow.get_logged_model(model_id)
        linked = [m for m in logged.metrics if m.key == "finetune_dice"]
        assert linked and linked[-1].dataset_name == "Task02"
    # same budget again: reused from the tags, no new run
    again = finetune_version(FinetuneRequest(f"models:/{bank[0].name}/{bank[0].version}", target, ft, progress=False))
    assert again.reused and again.dice.mean == pytest.approx(outcomes[0].dice.mean, abs=1e-6)

    report = report_bank("t", out_dir=tmp_path / "report")
    frame = scores_from_tags(bank_versions("t"))
    assert set(frame["method"]) == {"ccfv", "logme", "gbc"} and frame["model"].nunique() == 3
    sub = frame[frame["method"] == "ccfv"]
    row = report.correlations.set_index("method").loc["ccfv"]
    assert row["weighted_tau"] == pytest.approx(weighted_tau(sub["score"].to_numpy(), sub["dice"].to_numpy()))
    assert row["pearson"] == pytest.approx(pearson(sub["score"].to_numpy(), sub["dice"].to_numpy()))
    assert row["top1_regret"] >= 0.0
    assert (tmp_path / "report" / "table1.md").is_file() and (tmp_path / "report" / "scatter_Task02.png").is_file()
    runs = mlflow.search_runs(filter_string="tags.`ccfv.stage` = 'report'")
    assert len(runs) == 1 and "metrics.Task02.ccfv.weighted_tau" in runs.columns


@pytest.mark.slow
def test_multi_seed_finetune_tags_mean_and_sd_and_resumes_per_seed(tracking_uri, tmp_path, one_torch_thread):
    """Seeds 0,1,2: a parent run with the per-case, per-seed table; the version tags hold the mean and
    sd; a seed measured before (here by a single-seed run) is read back, not trained again."""
    import mlflow
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.tracking.runs import run_csv

    mlflow.set_experiment("test-seeds")
    target = write_blob_task(tmp_path, "Task02_Dim", 5, seed=2, bright=80)
    mv = register_control("UNet", 1, 2, (24, 24, 24), bank="s")
    uri = f"models:/{mv.name}/{mv.version}"
    ft = TrainConfig(steps=4, patch_size=(24, 24, 24), learning_rate=1e-2, seed=0)
    single = finetune_version(FinetuneRequest(uri, target, ft, progress=False, log_finetuned_model=False))
    assert single.run_id and math.isnan(single.dice_sd)

    def n_finetune_runs() -> int:
        return len(mlflow.search_runs(search_all_experiments=True, filter_string="tags.`ccfv.stage` = 'finetune'"))

    before = n_finetune_runs()
    result = CliRunner().invoke(
        main,
        [
            "finetune",
            "--model",
            uri,
            "--dataset",
            str(target),
            "--steps",
            "4",
            "--patch-size",
            "24,24,24",
            "--learning-rate",
            "0.01",
            "--seeds",
            "0,1,2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "over seeds" in result.output
    assert n_finetune_runs() == before + 3  # the parent and seeds 1, 2; seed 0 was read back
    v = mlflow.MlflowClient().get_model_version(mv.name, mv.version)
    tags = v.tags
    assert tags["finetune.seeds.Task02"] == "0,1,2"
    parent = mlflow.get_run(tags["finetune.run.Task02"])
    seed_dice = [parent.data.metrics[f"finetune_dice.seed{s}"] for s in (0, 1, 2)]
    assert seed_dice[0] == pytest.approx(single.dice.mean)
    assert float(tags["finetune.dice.Task02"]) == pytest.approx(np.mean(seed_dice), abs=1e-6)
    assert float(tags["finetune.dice_sd.Task02"]) == pytest.approx(np.std(seed_dice, ddof=1), abs=1e-6)
    assert parent.data.metrics["finetune_dice_sd"] == pytest.approx(np.std(seed_dice, ddof=1))
    table = run_csv(parent.info.run_id, "dice_per_case.csv")
    assert sorted(table["seed"].unique()) == [0, 1, 2] and set(table.columns) == {"case_id", "seed", "ball"}
    assert table.groupby("seed")["case_id"].nunique().tolist() == [1, 1, 1]  # 5 cases: 4 train, 1 held out
    # the same budget again: reused from the tags, no run at all
    again = finetune_version(FinetuneRequest(uri, target, ft, seeds=(0, 1, 2), progress=False))
    assert again.reused and n_finetune_runs() == before + 3
    assert again.dice_sd == pytest.approx(float(tags["finetune.dice_sd.Task02"]))
    with pytest.raises(ValueError, match="distinct"):
        finetune_version(FinetuneRequest(uri, target, ft, seeds=(1, 1), progress=False))


@pytest.mark.slow
def test_pretrain_curve_registers_an_early_and_a_final_checkpoint_with_source_dice(
    tracking_uri, tmp_path, one_torch_thread
):
    import mlflow
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.pipelines.pretrain import PretrainRequest, pretrain_checkpoints

    source = write_blob_task(tmp_path, "Task01_Bright", 5, seed=1, bright=150)
    config = TrainConfig(steps=6, patch_size=(24, 24, 24), learning_rate=1e-2, seed=0)
    with pytest.raises(ValueError, match="multiple of curve_every"):
        PretrainRequest(source, "UNet", config, bank="c", curve_every=4, early_step=3)
    result = CliRunner().invoke(
        main,
        [
            "pretrain",
            "--dataset",
            str(source),
            "--bank",
            "c",
            "--steps",
            "6",
            "--patch-size",
            "24,24,24",
            "--learning-rate",
            "0.01",
            "--seed",
            "0",
            "--curve-every",
            "3",
            "--early-step",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    request = PretrainRequest(source, "UNet", config, bank="c", curve_every=3, early_step=3)
    early, final = pretrain_checkpoints(request, progress=False)
    assert early.name == "unet-Task01-early" and final.name == "unet-Task01"
    assert str(early.version) == "1" and str(final.version) == "1"  # reused, not trained again
    assert early.tags["pretrain.checkpoint"] == "early" and early.tags["pretrain.steps"] == "3"
    assert final.tags["pretrain.checkpoint"] == "final" and final.tags["pretrain.steps"] == "6"
    assert early.tags["pretrain.run_id"] == final.tags["pretrain.run_id"]  # one run, two checkpoints
    for v in (early, final):
        assert 0.0 <= float(v.tags["pretrain.source_dice"]) <= 1.0
    run = mlflow.get_run(final.tags["pretrain.run_id"])
    assert run.data.params["n_cases"] == "4" and run.data.params["n_held_out"] == "1"  # the 80/20 split
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "source_dice")
    assert [m.step for m in history] == [3, 6]
    assert history[0].value == pytest.approx(float(early.tags["pretrain.source_dice"]), abs=1e-6)
    assert history[1].value == pytest.approx(float(final.tags["pretrain.source_dice"]), abs=1e-6)
