"""The study on real MSD-layout folders given as paths (the shipped BRATS cases), at a tiny budget,
and its resumption at the granularity of one (model, target, seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlflow_ccfv.pipelines.study import check_twins, evidence_summary, run_transfer_study, study_config
from mlflow_ccfv.pipelines.study_config import StudyBudget, StudySettings
from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING

CROP = (64, 64, 48)  # voxels of each case kept around its tumour: a quarter of the windows, same folder layout


def _crop_around_label(image: Path, label: Path, dest_image: Path, dest_label: Path) -> None:
    """Copies of one case cut to :data:`CROP` voxels centred on its labelled voxels (nibabel's slicer keeps
    the affine right), written as NIfTI like the shipped files."""
    import nibabel as nib
    import numpy as np

    img, lab = nib.load(image), nib.load(label)
    voxels = np.argwhere(np.asarray(lab.dataobj) > 0)
    centre = (voxels.min(0) + voxels.max(0)) // 2
    start = [int(min(max(c - n // 2, 0), s - n)) for c, n, s in zip(centre, CROP, lab.shape)]
    box = tuple(slice(a, a + n) for a, n in zip(start, CROP))
    nib.save(img.slicer[box], dest_image)
    nib.save(lab.slicer[box], dest_label)


def brats_task(real: Path, root: Path, name: str, cases: range) -> Path:
    """An MSD folder with some of the shipped BRATS cases, each cropped around its tumour (files of the
    task's own: a symbolic link leading out of a task folder is refused, docs/reliability.md)."""
    src = real / "brats2013-6"
    meta = json.loads((src / "dataset.json").read_text())
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = [meta["training"][i] for i in cases]
    for entry in training:
        _crop_around_label(
            (src / entry["image"]).resolve(),
            (src / entry["label"]).resolve(),
            folder / "imagesTr" / Path(entry["image"]).name,
            folder / "labelsTr" / Path(entry["label"]).name,
        )
    (folder / "dataset.json").write_text(
        json.dumps({**meta, "name": name, "numTraining": len(training), "training": training})
    )
    return folder


@pytest.mark.slow
def test_study_on_real_folders_resumes_per_seed(real_data, tracking_uri, tmp_path, one_torch_thread):
    import mlflow

    mlflow.set_experiment("test-study-real")
    a = brats_task(real_data, tmp_path / "real", "Task90_BratsA", range(0, 3))
    b = brats_task(real_data, tmp_path / "real", "Task91_BratsB", range(3, 6))
    config = study_config(
        tmp_path / "synthetic",
        StudySettings(
            targets=(str(a), str(b)),
            architectures=("UNet",),
            curve_every=2,
            early_step=2,
            early_sources=(str(b),),
            budget=StudyBudget(pretrain_steps=4, finetune_steps=2, seeds=(0, 1)),
        ),
        progress=False,
    )
    assert not (tmp_path / "synthetic").exists()  # real targets only: nothing synthesised
    assert [s.path for s in config.sources] == [a.resolve(), b.resolve()]
    config.methods = "ccfv,ccfv_no_variety,gbc,logme"
    config.n_resamples = 50
    result = run_transfer_study(config, progress=False, out_dir=tmp_path / "report")
    frame = result.frame
    # the bank of Task90: the early and final checkpoints of Task91's UNet and the random-init twin
    models90 = set(frame[frame["dataset"] == "Task90"]["model"])
    assert models90 == {"unet-Task91-early/1", "unet-Task91/1", "unet-random-init/1"}
    assert set(frame[frame["dataset"] == "Task91"]["model"]) == {"unet-Task90/1", "unet-random-init/1"}
    client = mlflow.MlflowClient()
    final = client.get_model_version("unet-Task91", "1")
    assert final.tags["pretrain.checkpoint"] == "final" and 0 <= float(final.tags["pretrain.source_dice"]) <= 1
    assert final.tags["finetune.seeds.Task90"] == "0,1" and "finetune.dice_sd.Task90" in final.tags
    ev = result.report.evidence
    assert ev is not None and set(ev.noise["kind"]) == {"seeds"}
    source = result.report.source_dice.set_index("model")
    assert {"unet-Task91/1", "unet-Task91-early/1", "unet-Task90/1"} <= set(source.index)
    for name in (
        "evidence.md",
        "source_dice.md",
        f"dice_vs_{DEFAULT_RANKING}_Task90.png",  # the default ranking
        "noise_ceiling.csv",
        "pretraining_curves.png",
        "pretraining_plateau.md",
    ):
        assert (tmp_path / "report" / name).is_file(), name
    summary = evidence_summary(result)
    assert "noise ceiling" in summary and "| Task90 | CC-FV |" in summary and "| avg | CC-FV |" in summary
    with pytest.raises(ValueError, match="random-init twin"):
        check_twins([final], [])

    def finetune_runs() -> int:
        return len(mlflow.search_runs(search_all_experiments=True, filter_string="tags.`ccfv.stage` = 'finetune'"))

    # a study stopped after one model's seeds finished but before its tags were written: the rerun
    # trains nothing again (the seeds are read back) and only writes that model's summary run
    before = finetune_runs()
    for tag in ("finetune.dice.Task90", "finetune.budget.Task90"):
        client.delete_model_version_tag("unet-Task91", "1", tag)
    again = run_transfer_study(config, progress=False)
    assert finetune_runs() == before + 1
    assert [o.reused for o in again.outcomes].count(False) == 0
    assert float(client.get_model_version("unet-Task91", "1").tags["finetune.dice.Task90"]) == pytest.approx(
        float(final.tags["finetune.dice.Task90"]), abs=1e-6
    )
