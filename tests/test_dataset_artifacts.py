"""Target datasets as MLflow artifacts: `log-dataset`, content addressing, download + checksum checks,
and scoring / evaluating from the reference with no local copy of the data (embedded sqlite store)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ccfv.cli import main
from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import (
    DATASET_EXPERIMENT,
    FILE_LIST,
    is_dataset_reference,
    load_msd_dataset,
    resolve_dataset_reference,
)

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402


def _log(runner, folder: Path) -> str:
    result = runner.invoke(main, ["log-dataset", "--dataset", str(folder)])
    assert result.exit_code == 0, result.output
    return result.output.strip().rsplit(" ", 1)[-1]


@pytest.mark.slow
def test_log_dataset_stores_once_and_scores_the_same_from_the_reference(tracking_uri, tmp_path, one_torch_thread):
    folder = make_target_folder(tmp_path / "data")
    runner = CliRunner()
    uri = _log(runner, folder)
    assert uri.startswith("runs:/") and uri.endswith(f"/{folder.name}")
    again = runner.invoke(main, ["log-dataset", "--dataset", str(folder)])
    assert again.exit_code == 0 and "already logged" in again.output and again.output.strip().endswith(uri)
    versions = register_tiny_bank("dsref", seeds=(0, 1))
    flag = ["score", "--dataset", str(folder), "--bank", "dsref", "--methods", "ccfv", "--log-dataset", "true"]
    assert runner.invoke(main, [*flag, "--cache-dir", str(tmp_path / "c0")]).exit_code == 0

    client = MlflowClient()
    exp = client.get_experiment_by_name(DATASET_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # logged three times (twice, and by score --log-dataset), stored once
    run = runs[0]
    digest = MSDDataset.load(folder).digest()
    assert run.data.tags[T.RUN_DATASET_DIGEST] == digest and run.info.status == "FINISHED"
    top = {a.path for a in client.list_artifacts(run.info.run_id, folder.name)}
    assert top == {f"{folder.name}/dataset.json", f"{folder.name}/imagesTr", f"{folder.name}/labelsTr"}
    (ds_input,) = run.inputs.dataset_inputs
    assert ds_input.dataset.source_type == "mlflow_run_artifact" and uri in ds_input.dataset.source

    # From another working folder, with the original data gone: downloaded once, verified, same digest.
    work = tmp_path / "elsewhere"
    work.mkdir()
    os.chdir(work)
    moved = shutil.move(str(folder.parent), str(tmp_path / "hidden"))
    cache = tmp_path / "cache"
    local = resolve_dataset_reference(uri, cache)
    assert local == cache / "datasets" / digest / folder.name
    assert MSDDataset.load(local).digest() == digest
    stamp = (local / "dataset.json").stat().st_mtime_ns
    assert resolve_dataset_reference(uri, cache) == local and (local / "dataset.json").stat().st_mtime_ns == stamp
    assert not [p for p in (cache / "datasets").iterdir() if p.name.startswith(".")]  # no staging left

    from_ref = make_target(load_msd_dataset(uri, cache_dir=cache), "train")
    from_folder = make_target(MSDDataset.load(Path(moved) / folder.name), "train")
    assert from_ref.digest == from_folder.digest and from_ref.name == from_folder.name == TARGET_TASK
    a = score_versions(versions, from_ref, ScoreConfig(["ccfv", "logme"], cache_dir=tmp_path / "fa"), log=False)
    b = score_versions(versions, from_folder, ScoreConfig(["ccfv", "logme"], cache_dir=tmp_path / "fb"), log=False)
    pd.testing.assert_frame_equal(
        a[["model", "ccfv", "logme", "rank"]].reset_index(drop=True),
        b[["model", "ccfv", "logme", "rank"]].reset_index(drop=True),
        check_exact=True,
    )

    # The CLI's `score` and the evaluator take the same reference.
    scored = runner.invoke(
        main,
        ["score", "--dataset", uri, "--bank", "dsref", "--methods", "ccfv", "--cache-dir", str(cache)],
    )
    assert scored.exit_code == 0, scored.output
    mv = client.get_model_version(versions[0].name, versions[0].version)
    assert float(mv.tags[T.score_tag("ccfv", TARGET_TASK)]) == pytest.approx(float(a["ccfv"].iloc[0]), rel=1e-5)
    with mlflow.start_run():
        result = mlflow.models.evaluate(
            model=f"models:/{versions[0].name}/{versions[0].version}",
            data=pd.DataFrame({"case_id": ["unused"]}),
            model_type="segmentation",
            evaluators=["ccfv"],
            evaluator_config={"ccfv": {"dataset": uri, "cache_dir": str(cache), "methods": ["ccfv"]}},
        )
    row = a.set_index("model").loc[f"{versions[0].name}/{versions[0].version}"]
    assert result.metrics["ccfv"] == pytest.approx(float(row["ccfv"]), rel=1e-9)


def test_a_damaged_upload_or_a_bad_reference_is_refused_and_leaves_no_cache(tracking_uri, tmp_path):
    folder = make_target_folder(tmp_path / "data")
    uri = _log(CliRunner(), folder)
    run_id = uri.split("/")[1]
    artifacts = Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    label = next((artifacts / folder.name / "labelsTr").iterdir())
    label.write_bytes(label.read_bytes()[:-7] + b"corrupt")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="checksum differs"):
        resolve_dataset_reference(uri, cache)
    assert not any((cache / "datasets").iterdir())  # nothing half-written
    with pytest.raises(DatasetError, match="no run"):
        resolve_dataset_reference("runs:/" + "0" * 32 + f"/{folder.name}", cache)
    with pytest.raises(DatasetError, match="names no run"):
        resolve_dataset_reference("s3://bucket/somewhere/Task07", cache)
    with pytest.raises(DatasetError, match="no complete dataset upload"):
        resolve_dataset_reference(f"runs:/{run_id}/{FILE_LIST}", cache)
    assert is_dataset_reference(uri) and is_dataset_reference("mlflow-artifacts:/1/x/artifacts/T")
    assert not is_dataset_reference("Task07") and not is_dataset_reference(str(folder))


def test_a_study_target_given_as_a_logged_dataset_resolves_from_another_folder(tracking_uri, tmp_path, monkeypatch):
    from mlflow_ccfv.pipelines.study import study_config
    from mlflow_ccfv.pipelines.study_config import StudySettings

    folder = make_target_folder(tmp_path / "data")
    uri = _log(CliRunner(), folder)
    digest = MSDDataset.load(folder).digest()
    shutil.move(str(folder.parent), str(tmp_path / "hidden"))  # no local copy of the data left
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_CCFV_CACHE", raising=False)
    config = study_config(tmp_path / "synthetic", StudySettings(targets=(uri,), early_sources=()), progress=False)
    local = work / ".ccfv-cache" / "datasets" / digest / folder.name  # the digest-keyed cache of this folder
    assert config.targets == [local] and [s.path for s in config.sources] == [local]  # leave-one-out: itself
    assert MSDDataset.load(local).digest() == digest
    # Ray workers are sent the reference, not this machine's folder; other datasets keep their path
    assert config.references == {str(local): uri} and config.location(local) == uri
    assert config.location(tmp_path) == str(tmp_path)
    assert not (tmp_path / "synthetic").exists()  # no synthetic task generated for a logged target


def test_a_cached_file_replaced_by_another_valid_one_of_the_same_size_is_downloaded_again(tracking_uri, tmp_path):
    import json

    import nibabel as nib
    import numpy as np

    folder = make_target_folder(tmp_path / "data")
    meta = json.loads((folder / "dataset.json").read_text())
    for entry in meta["training"]:  # uncompressed labels: an edited label keeps its size to the byte
        gz = folder / entry["label"]
        plain = gz.with_name(gz.name.removesuffix(".gz"))
        img = nib.load(str(gz))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), str(plain))
        gz.unlink()
        entry["label"] = entry["label"].removesuffix(".gz")
    (folder / "dataset.json").write_text(json.dumps(meta))
    uri = _log(CliRunner(), folder)
    cache = tmp_path / "cache"
    local = resolve_dataset_reference(uri, cache)
    victim = local / meta["training"][0]["label"]
    uploaded = victim.read_bytes()
    img = nib.load(str(victim))
    labels = np.asarray(img.dataobj).copy()
    labels[labels == 0] = 1  # a valid label map of the same grid, dtype and size: another segmentation
    nib.save(nib.Nifti1Image(labels, img.affine, img.header), str(victim))
    assert victim.stat().st_size == len(uploaded) and victim.read_bytes() != uploaded

    assert resolve_dataset_reference(uri, cache) == local
    assert victim.read_bytes() == uploaded  # the damaged copy was not used: downloaded again
    assert not [p for p in (cache / "datasets").iterdir() if p.name.startswith(".")]  # nothing set aside is left
    victim.unlink()
    assert resolve_dataset_reference(uri, cache) == local and victim.read_bytes() == uploaded
