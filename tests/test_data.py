"""mlflow_ccfv.data on real NIfTI files: the BRATS six-case task and the TotalSegmentator CT."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mlflow_ccfv.data import DatasetError, MSDDataset, PreprocessConfig, Split, resolve_dataset
from mlflow_ccfv.data.derive import derive_task


@pytest.fixture(scope="session")
def brats(real_data) -> MSDDataset:
    return MSDDataset.load(real_data / "brats2013-6")


@pytest.fixture(scope="session")
def totalseg(real_data) -> tuple[Path, Path]:
    folder = real_data / "totalseg-ct"
    return folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"


@pytest.fixture(scope="session")
def spleen_task(totalseg, tmp_path_factory) -> Path:
    ct, seg = totalseg
    return derive_task(ct, seg, tmp_path_factory.mktemp("derived"), {1: "spleen"}, "Task09_Spleen")


@pytest.fixture
def two_case_ct(totalseg, tmp_path) -> Path:
    """A two-case CT task (the same real CT twice, spleen labels) to break in tests."""
    ct, seg = totalseg
    return derive_task([ct, ct], [seg, seg], tmp_path, {1: "spleen"}, "Task09_Spleen", case_ids=["a", "b"])


# ---------------------------------------------------------------- BRATS (4D MRI)
def test_brats_loads_and_verifies(brats):
    assert brats.name == "BRATS2013-6"
    assert brats.modalities == {0: "FLAIR", 1: "T1c"}
    assert brats.labels[0] == "background" and sorted(brats.labels) == [0, 1, 2, 3, 4]
    assert not brats.is_ct
    assert brats.case_ids == [f"brats_{i:03d}" for i in range(6)]
    assert all(c.image.is_file() and c.label.is_file() for c in brats.cases)
    report = brats.verify(progress=False)
    assert report.n_cases == 6
    assert all(c.shape == (120, 120, 77) and c.spacing == (2.0, 2.0, 2.0) for c in report.cases)
    voxels = report.label_voxels()
    assert all(voxels[k] > 0 for k in range(5)) and voxels[0] > 20 * sum(voxels[k] for k in range(1, 5))
    assert "BRATS2013-6" in report.summary() and "edema" in report.summary()


def test_brats_split_is_seeded_stable_and_80_20(brats):
    split = brats.split(seed=0)
    assert (len(split.train), len(split.test)) == (5, 1)
    assert sorted(split.train + split.test) == brats.case_ids
    assert not set(split.train) & set(split.test)
    assert brats.split(seed=0) == split
    assert MSDDataset.load(brats.root).split(seed=0) == split
    assert Split.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    tests = {tuple(brats.split(seed=s).test) for s in range(10)}
    assert len(tests) > 1, "the seed must change the split"
    assert brats.split(seed=3, test_fraction=0.5).to_dict()["test_fraction"] == 0.5
    assert len(brats.split(seed=3, test_fraction=0.5).test) == 3


def test_brats_preprocesses_to_zscored_two_channel_volume(brats):
    case = brats.load_case("brats_000")
    assert case.case_id == "brats_000"
    assert case.image.dtype == torch.float32 and case.label.dtype == torch.int64
    assert tuple(case.image.shape) == (2, 120, 120, 77) and tuple(case.label.shape) == (120, 120, 77)
    assert case.spacing == (2.0, 2.0, 2.0)
    assert set(torch.unique(case.label).tolist()) == {0, 1, 2, 3, 4}
    mask = (case.image != 0).any(0)
    for c in range(2):
        values = case.image[c][mask].double()
        assert abs(values.mean().item()) < 1e-4 and abs(values.std().item() - 1) < 1e-3
    # RAS: the file is stored LPS, so the first two axes are flipped relative to the raw array.
    raw = np.asarray(nib.load(str(brats.case("brats_000").label)).dataobj)
    np.testing.assert_array_equal(case.label.numpy(), raw[::-1, ::-1, :])
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")


def test_brats_resampling_and_iteration(brats):
    config = PreprocessConfig(target_spacing=(4.0, 4.0, 4.0))
    cases = list(brats.iter_cases(["brats_001", "brats_002"], config=config, progress=False))
    assert [c.case_id for c in cases] == ["brats_001", "brats_002"]
    for case in cases:
        assert tuple(case.image.shape) == (2, 60, 60, 39) and tuple(case.label.shape) == (60, 60, 39)
        assert np.allclose(case.spacing, (4.0, 4.0, 4.0))
        assert set(torch.unique(case.label).tolist()) <= {0, 1, 2, 3, 4}
    assert config.to_dict()["target_spacing"] == [4.0, 4.0, 4.0]
    json.dumps(config.to_dict())


# ---------------------------------------------------------------- TotalSegmentator CT
def test_totalseg_spleen_task_loads_verifies_and_normalises_ct(spleen_task, totalseg):
    ds = MSDDataset.load(spleen_task)
    assert ds.is_ct and ds.labels == {0: "background", 1: "spleen"} and len(ds) == 1
    report = ds.verify(progress=False)
    assert report.label_voxels()[1] == int((np.asarray(nib.load(str(totalseg[1])).dataobj) == 1).sum())
    # the image is the real CT byte for byte
    assert ds.cases[0].image.read_bytes() == totalseg[0].read_bytes()

    raw = np.asarray(nib.load(str(totalseg[0])).dataobj).astype(np.float64)  # RAS, 3 mm already
    fg = np.asarray(nib.load(str(totalseg[1])).dataobj) == 1
    lo, hi = np.percentile(raw[fg], [0.5, 99.5])
    clipped_fg = np.clip(raw[fg], lo, hi)
    expected = (np.clip(raw, lo, hi) - clipped_fg.mean()) / clipped_fg.std()
    for mode in ("case", "dataset"):
        case = ds.load_case(ds.case_ids[0], PreprocessConfig(ct_statistics=mode))
        assert tuple(case.image.shape) == (1, 122, 101, 30) and case.spacing == (3.0, 3.0, 3.0)
        np.testing.assert_allclose(case.image[0].numpy(), expected, atol=1e-4)
        values = case.image[0][case.label > 0].double()
        assert abs(values.mean().item()) < 1e-5 and abs(values.std().item() - 1) < 1e-4
        # clipping: air (-1000 HU) lands at the lower clip value, far below the spleen
        assert case.image.min().item() == pytest.approx((lo - clipped_fg.mean()) / clipped_fg.std(), abs=1e-4)
    np.testing.assert_array_equal(case.label.numpy(), fg.astype(np.int64))


def test_totalseg_multi_organ_task(totalseg, tmp_path):
    ct, seg = totalseg
    organs = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 7: "pancreas"}
    root = derive_task(ct, seg, tmp_path, organs, "Task90_Abdomen")
    ds = MSDDataset.load("Task90", data_root=tmp_path)
    assert ds.root == root.resolve()
    assert ds.labels == {0: "background", 1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "pancreas"}
    ds.verify(progress=False)
    source = np.asarray(nib.load(str(seg)).dataobj)
    case = ds.load_case(ds.case_ids[0])
    for new_id, old_id in enumerate(organs, start=1):
        np.testing.assert_array_equal(case.label.numpy() == new_id, source == old_id)
    assert int((case.label > 0).sum()) == int(np.isin(source, list(organs)).sum())
    with pytest.raises(DatasetError, match="occur in none"):
        derive_task(ct, seg, tmp_path, {200: "nothing"}, "Task91_Empty")


# ---------------------------------------------------------------- integrity failures
def _save_like(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _verify_fails(root: Path, *needles: str) -> str:
    with pytest.raises(DatasetError) as info:
        MSDDataset.load(root).verify(progress=False)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    return message


def test_integrity_missing_file(two_case_ct):
    path = two_case_ct / "labelsTr" / "b.nii.gz"
    path.unlink()
    message = _verify_fails(two_case_ct, "case 'b'", str(path), "does not exist")
    assert "case 'a'" not in message


def test_integrity_corrupt_bytes(two_case_ct):
    path = two_case_ct / "imagesTr" / "a.nii.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\x00" * 4096
    path.write_bytes(bytes(data))
    _verify_fails(two_case_ct, "case 'a'", str(path), "cannot be read as NIfTI")


def test_integrity_truncated_file(two_case_ct):
    path = two_case_ct / "labelsTr" / "a.nii.gz"
    path.write_bytes(gzip.compress(path.read_bytes())[:50])
    _verify_fails(two_case_ct, "case 'a'", str(path), "cannot be read")


def test_integrity_shape_mismatch(two_case_ct):
    path = two_case_ct / "labelsTr" / "b.nii.gz"
    img = nib.load(str(path))
    _save_like(path, np.asarray(img.dataobj)[:, :, :-2], img.affine)
    _verify_fails(two_case_ct, "case 'b'", str(path), "(122, 101, 28)", "(122, 101, 30)")


def test_integrity_affine_mismatch(two_case_ct):
    path = two_case_ct / "labelsTr" / "b.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[0, 3] += 1.5  # a 1.5 mm shift
    _save_like(path, np.asarray(img.dataobj), affine)
    _verify_fails(two_case_ct, "case 'b'", str(path), "different affine")
    affine[0, 3] -= 1.5 - 1e-5  # within tolerance passes
    _save_like(path, np.asarray(img.dataobj), affine)
    MSDDataset.load(two_case_ct).verify(progress=False)


def test_integrity_undeclared_label(two_case_ct):
    path = two_case_ct / "labelsTr" / "a.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    _save_like(path, data, img.affine)
    _verify_fails(two_case_ct, "case 'a'", str(path), "[7]", "not declared")


def test_integrity_nan_and_channel_count(two_case_ct):
    path = two_case_ct / "imagesTr" / "b.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[5, 6, 7] = np.nan
    _save_like(path, data, img.affine)
    two = two_case_ct / "imagesTr" / "a.nii.gz"
    _save_like(two, np.stack([data, data], axis=-1), img.affine)
    message = _verify_fails(two_case_ct, "case 'b'", str(path), "NaN", "(5, 6, 7)", "case 'a'", "2 channels")
    assert "2 of 2 cases" in message


def test_dataset_json_errors(two_case_ct):
    meta_path = two_case_ct / "dataset.json"
    meta = json.loads(meta_path.read_text())
    del meta["labels"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="'labels'"):
        MSDDataset.load(two_case_ct)
    meta_path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        MSDDataset.load(two_case_ct)
    meta_path.unlink()
    with pytest.raises(DatasetError, match="no dataset.json"):
        MSDDataset.load(two_case_ct)


def test_load_case_unknown_case(spleen_task):
    with pytest.raises(DatasetError, match="no case 'nope'"):
        MSDDataset.load(spleen_task).load_case("nope")


# ---------------------------------------------------------------- names, manifest, digest
def test_resolve_dataset(tmp_path, monkeypatch):
    for name in ("Task07_Pancreas", "Task09_Spleen", "Task09_SpleenB", "Task1"):
        (tmp_path / name).mkdir()
    assert resolve_dataset("Task07", tmp_path) == (tmp_path / "Task07_Pancreas").resolve()
    assert resolve_dataset("Task09_Spleen", tmp_path) == (tmp_path / "Task09_Spleen").resolve()
    assert resolve_dataset("Task1", tmp_path) == (tmp_path / "Task1").resolve()
    assert resolve_dataset(tmp_path / "Task07_Pancreas") == (tmp_path / "Task07_Pancreas").resolve()
    with pytest.raises(DatasetError, match="ambiguous.*Task09_Spleen, Task09_SpleenB"):
        resolve_dataset("Task09", tmp_path)
    with pytest.raises(DatasetError, match="No dataset folder.*Available folders: Task07_Pancreas"):
        resolve_dataset("Task03", tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        resolve_dataset("Task03", tmp_path / "missing")
    monkeypatch.setenv("MLFLOW_CCFV_DATA", str(tmp_path))
    assert resolve_dataset("Task07") == (tmp_path / "Task07_Pancreas").resolve()


def test_manifest_and_digest_track_content(two_case_ct, tmp_path):
    ds = MSDDataset.load(two_case_ct)
    manifest = ds.manifest()
    assert list(manifest.columns) == ["case_id", "image", "label", "image_sha256", "label_sha256", "split"]
    assert manifest["case_id"].tolist() == ["a", "b"]
    assert manifest["image"].tolist() == ["imagesTr/a.nii.gz", "imagesTr/b.nii.gz"]
    split = ds.split()
    assert manifest.set_index("case_id")["split"].to_dict() == {c: split.of(c) for c in ("a", "b")}
    digest = ds.digest()
    assert len(digest) == 64 and MSDDataset.load(two_case_ct).digest() == digest

    copy = shutil.copytree(two_case_ct, tmp_path / "elsewhere" / "Task09_Spleen")
    assert MSDDataset.load(copy).digest() == digest, "the digest depends on content, not location"

    path = copy / "labelsTr" / "b.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 1
    _save_like(path, data, img.affine)
    changed = MSDDataset.load(copy)
    assert changed.digest() != digest
    new_manifest = changed.manifest()
    assert (new_manifest["label_sha256"] != manifest["label_sha256"]).tolist() == [False, True]
    assert (new_manifest["image_sha256"] == manifest["image_sha256"]).all()


# ---------------------------------------------------------------- command line
def test_verify_command(spleen_task, two_case_ct, tmp_path):
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main

    csv = tmp_path / "manifest.csv"
    result = CliRunner().invoke(
        main, ["verify", "Task09", "--data-root", str(spleen_task.parent), "--manifest", str(csv)]
    )
    assert result.exit_code == 0, result.output
    assert "Task09_Spleen" in result.output and "spleen" in result.output
    assert MSDDataset.load(spleen_task).digest() in result.output
    assert csv.read_text().splitlines()[0] == "case_id,image,label,image_sha256,label_sha256,split"

    (two_case_ct / "labelsTr" / "a.nii.gz").unlink()
    result = CliRunner().invoke(main, ["verify", str(two_case_ct)])
    assert result.exit_code != 0 and "case 'a'" in result.output and "does not exist" in result.output


# ---------------------------------------------------------------- split invariants
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlflow_ccfv.data import CaseFiles  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**31), fraction=st.sampled_from([0.0, 0.1, 0.2, 0.5]))
def test_split_partitions_and_ignores_listing_order(n, seed, fraction):
    ids = [f"case_{i:03d}" for i in range(n)]
    cases = [CaseFiles(i, Path(f"{i}.nii.gz"), Path(f"l{i}.nii.gz")) for i in ids]
    ds = MSDDataset("t", Path("."), {0: "background"}, {0: "CT"}, cases)
    reordered = MSDDataset("t", Path("."), {0: "background"}, {0: "CT"}, cases[::-1])
    split = ds.split(seed=seed, test_fraction=fraction)
    assert sorted(split.train + split.test) == ids
    assert split == reordered.split(seed=seed, test_fraction=fraction)
    expected = 0 if fraction == 0 or n < 2 else min(max(round(fraction * n), 1), n - 1)
    assert len(split.test) == expected


# ---------------------------------------------------------------- a model's own intensity normalisation
def _hu(totalseg) -> np.ndarray:
    return np.asarray(nib.load(str(totalseg[0])).dataobj).astype(np.float64)[None]  # [1, X, Y, Z] HU


def test_ct_normalisation_of_nnunet_plans_on_real_hu(totalseg):
    from mlflow_ccfv.data import IntensityNormalization

    record = [{"channel": "CT", "scheme": "CTNormalization", "mean": 99.4, "std": 39.4, "lower": -17.0, "upper": 201.0}]
    norm = IntensityNormalization.from_records(record)
    assert IntensityNormalization.from_json(norm.to_json()) == norm and norm.to_records() == record
    assert norm.describe() == "CT: CTNormalization(clip [-17, 201], (x - 99.4) / 39.4)"
    hu = _hu(totalseg)
    out = norm.apply(hu)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, (np.clip(hu, -17.0, 201.0) - 99.4) / 39.4, rtol=1e-6)
    assert out.min() == pytest.approx((-17.0 - 99.4) / 39.4) and out.max() == pytest.approx((201 - 99.4) / 39.4)
    with pytest.raises(DatasetError, match="normalises 1 input channel"):
        norm.apply(np.concatenate([hu, hu]))


def test_bundle_normalisations_equal_monai_transforms(totalseg):
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange

    from mlflow_ccfv.data import IntensityNormalization

    hu = _hu(totalseg)
    two = np.concatenate([hu, np.where(hu > 0, hu / 3, 0)])  # a second channel with zeros
    cases = [
        ({"a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}, ScaleIntensityRange, hu),
        ({"a_min": -1000, "a_max": 1000, "b_min": -1.0, "b_max": 1.0, "clip": False}, ScaleIntensityRange, hu),
        ({"nonzero": True, "channel_wise": True}, NormalizeIntensity, two),
        ({"nonzero": False, "channel_wise": False}, NormalizeIntensity, two),
    ]
    for args, transform, image in cases:
        scheme = transform.__name__
        norm = IntensityNormalization.from_records([{"scheme": scheme, **args}])
        expected = np.asarray(transform(**args)(image.astype(np.float32)))
        np.testing.assert_allclose(norm.apply(image), expected, rtol=1e-5, atol=1e-5, err_msg=str(args))


def test_zscore_with_nnunet_mask_and_bad_records():
    from mlflow_ccfv.data import IntensityNormalization

    image = np.zeros((1, 8, 8, 8))
    image[0, 2:6, 2:6, 2:6] = np.arange(64).reshape(4, 4, 4) + 1.0
    image[0, 3, 3, 3] = 0.0  # a hole inside the region: nnU-Net fills it, it is normalised too
    norm = IntensityNormalization.from_records(
        [{"channel": "MR", "scheme": "ZScoreNormalization", "use_mask_for_norm": True}]
    )
    out = norm.apply(image)
    region = np.zeros((8, 8, 8), bool)
    region[2:6, 2:6, 2:6] = True
    values = image[0][region]
    np.testing.assert_allclose(out[0][region], (values - values.mean()) / values.std(), rtol=1e-6)
    assert not out[0][~region].any()
    whole = IntensityNormalization.from_records([{"scheme": "ZScoreNormalization"}]).apply(image)
    np.testing.assert_allclose(whole, (image - image.mean()) / image.std(), rtol=1e-6)
    with pytest.raises(ValueError, match="'WindowNormalization' is not supported; supported: CTNormalization"):
        IntensityNormalization.from_records([{"scheme": "WindowNormalization"}])
    with pytest.raises(ValueError, match="CTNormalization of channel CT needs a finite number 'lower'"):
        IntensityNormalization.from_records([{"channel": "CT", "scheme": "CTNormalization", "mean": 1, "std": 1}])
    assert IntensityNormalization.from_json(None) is None and IntensityNormalization.from_json("[]") is None


def test_preprocess_with_a_model_normalisation_replaces_the_targets(spleen_task, totalseg):
    from mlflow_ccfv.data import IntensityNormalization

    ds = MSDDataset.load(spleen_task)
    norm = IntensityNormalization.from_records(
        [{"scheme": "ScaleIntensityRange", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}]
    )
    own = ds.load_case(ds.case_ids[0], normalization=norm)
    default = ds.load_case(ds.case_ids[0])
    hu = _hu(totalseg)[0]
    np.testing.assert_allclose(own.image[0].numpy(), np.clip((hu + 57) / 221, 0, 1), atol=1e-5)
    assert torch.equal(own.label, default.label) and own.spacing == default.spacing
    assert not torch.allclose(own.image, default.image)
