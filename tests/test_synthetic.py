"""The synthetic CT task family: determinism, labels, imbalance, integrity, relationships, speed."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from mlflow_ccfv.data import DatasetError, MSDDataset, PreprocessConfig
from mlflow_ccfv.data.synthetic import (
    SYNTHETIC_TASKS,
    SyntheticSettings,
    generate_family,
    generate_task,
    get_task,
    synthesize_case,
)

SMALL = (48, 48, 32)
SMALL_SPACING = (6.5, 6.5, 7.5)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    return generate_family(
        root, settings=SyntheticSettings(n_cases=3, shape=SMALL, spacing=SMALL_SPACING, progress=False)
    )


def _labels(root):
    return [np.asarray(nib.load(str(c.label)).dataobj) for c in MSDDataset.load(root).cases]


def test_family_has_five_distinct_msd_like_tasks(family):
    assert len(SYNTHETIC_TASKS) >= 5
    assert {t.alias for t in SYNTHETIC_TASKS.values()} >= {"liver", "lung", "pancreas", "spleen", "colon"}
    assert list(family) == list(SYNTHETIC_TASKS)
    for name, root in family.items():
        assert root.name == name
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["modality"] == {"0": "CT"} and meta["numTraining"] == 3
        ds = MSDDataset.load(root)
        assert ds.is_ct and ds.labels == SYNTHETIC_TASKS[name].labels
        report = ds.verify(progress=False)
        voxels = report.label_voxels()
        total = sum(voxels.values())
        assert all(voxels[k] > 0 for k in ds.labels), f"{name}: a declared class never occurs: {voxels}"
        assert voxels[0] / total > 0.9, f"{name}: background should dominate like real CT"
        for k in ds.foreground_labels:
            assert voxels[k] / total < 0.1
        img = nib.load(str(ds.cases[0].image))
        assert img.get_data_dtype() == np.int16 and nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert np.allclose(img.header.get_zooms(), SMALL_SPACING)


def test_class_imbalance_resembles_the_msd_tasks(family):
    share = {}
    for name, root in family.items():
        labels = np.stack(_labels(root))
        share[SYNTHETIC_TASKS[name].alias] = {k: float((labels == k).mean()) for k in SYNTHETIC_TASKS[name].labels if k}
    assert share["liver"][1] > 0.02 and share["liver"][2] < share["liver"][1] / 20  # large organ, small tumours
    assert share["lung"][1] < min(0.003, share["spleen"][1] / 2)  # small nodules: the smallest target
    assert share["spleen"][1] < share["liver"][1] / 3  # medium organ
    assert share["pancreas"][1] < share["spleen"][1] and share["pancreas"][2] < share["pancreas"][1]
    assert share["colon"][1] < 0.002


def test_deterministic_by_seed_and_prefix_stable(tmp_path):
    a = generate_task("spleen", tmp_path / "a", n_cases=2, shape=SMALL, spacing=SMALL_SPACING, seed=7, progress=False)
    b = generate_task("Task09", tmp_path / "b", n_cases=2, shape=SMALL, spacing=SMALL_SPACING, seed=7, progress=False)
    assert MSDDataset.load(a).digest() == MSDDataset.load(b).digest()
    c = generate_task("spleen", tmp_path / "c", n_cases=2, shape=SMALL, spacing=SMALL_SPACING, seed=8, progress=False)
    assert MSDDataset.load(c).digest() != MSDDataset.load(a).digest()
    one = generate_task("spleen", tmp_path / "d", n_cases=1, shape=SMALL, spacing=SMALL_SPACING, seed=7, progress=False)
    assert MSDDataset.load(one).manifest()["image_sha256"][0] == MSDDataset.load(a).manifest()["image_sha256"][0]
    first = [np.asarray(nib.load(str(c.image)).dataobj) for c in MSDDataset.load(a).cases]
    assert not np.array_equal(first[0], first[1]), "cases of one task must differ"
    with pytest.raises(DatasetError, match="already exists"):
        generate_task("spleen", tmp_path / "a", n_cases=1, shape=SMALL, progress=False)


def test_tasks_differ_and_relate_as_documented():
    def render(task):
        return synthesize_case(task, np.random.default_rng(3), SMALL, SMALL_SPACING)

    cases = {t.alias: render(t.name) for t in SYNTHETIC_TASKS.values()}
    for a in cases:
        for b in cases:
            if a < b:
                assert not np.array_equal(cases[a][0], cases[b][0])
    # liver and spleen share the scanner: the same parenchymal HU range and noise level
    liver_img, liver_lab = cases["liver"]
    spleen_img, spleen_lab = cases["spleen"]
    assert abs(liver_img[liver_lab == 1].mean() - spleen_img[spleen_lab == 1].mean()) < 25
    assert get_task("spleen").protocol is get_task("liver").protocol
    # the other abdominal tasks share the anatomy but not the acquisition
    assert get_task("pancreas").protocol.hu["liver"] < get_task("liver").protocol.hu["liver"] - 20
    assert len({get_task(t).protocol.name for t in ("liver", "pancreas", "colon", "lung")}) == 4
    assert {get_task(t).region for t in ("liver", "pancreas", "colon", "spleen")} == {"abdomen"}

    # the chest is mostly air-filled lung inside the body; the abdomen is not
    def lung_share(img):
        body = img > -500
        inside = np.zeros_like(body)
        for z in range(img.shape[2]):
            from scipy import ndimage

            inside[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
        return float(((img < -600) & inside).sum() / inside.sum())

    assert lung_share(cases["lung"][0]) > 0.2 > lung_share(cases["liver"][0])
    # lesions are inside their host: liver tumours in the liver region, nodules surrounded by lung
    assert (cases["lung"][0][cases["lung"][1] == 1] > -400).mean() > 0.8


def test_stored_lps_loads_back_to_the_rendered_ras_case(tmp_path):
    root = generate_task("pancreas", tmp_path, n_cases=1, shape=SMALL, spacing=SMALL_SPACING, seed=4, progress=False)
    from mlflow_ccfv.data.synthetic import _case_rng

    image, label = synthesize_case("pancreas", _case_rng(4, get_task("pancreas"), 0), SMALL, SMALL_SPACING)
    ds = MSDDataset.load(root)
    case = ds.load_case(ds.case_ids[0], PreprocessConfig(ct_statistics="case"))
    assert tuple(case.image.shape) == (1, *SMALL) and case.image.dtype == torch.float32
    np.testing.assert_array_equal(case.label.numpy(), label.astype(np.int64))
    fg = label > 0
    lo, hi = np.percentile(image[fg], [0.5, 99.5])
    clipped = np.clip(image[fg].astype(np.float64), lo, hi)
    expected = (np.clip(image.astype(np.float64), lo, hi) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(case.image[0].numpy(), expected, atol=1e-4)


def test_speed_at_the_default_size():
    start = time.perf_counter()
    image, label = synthesize_case("liver", np.random.default_rng(0))
    elapsed = time.perf_counter() - start
    assert image.shape == (64, 64, 48) and label.shape == (64, 64, 48)
    assert elapsed < 5.0, f"one default-size case took {elapsed:.2f} s"


def test_task_lookup_and_bad_arguments(tmp_path):
    assert get_task("liver") is get_task("Task03") is get_task("Task03_SynthLiver")
    with pytest.raises(DatasetError, match="Unknown synthetic task 'brain'.*Task09_SynthSpleen"):
        get_task("brain")
    with pytest.raises(ValueError, match="shape"):
        synthesize_case("liver", np.random.default_rng(0), shape=(8, 8, 8))
    with pytest.raises(ValueError, match="n_cases"):
        generate_task("liver", tmp_path, n_cases=0)


def test_synth_command_and_figure(tmp_path):
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main

    png = tmp_path / "tasks.png"
    result = CliRunner().invoke(
        main,
        [
            "synth",
            "--out",
            str(tmp_path / "out"),
            "--task",
            "lung",
            "--task",
            "colon",
            "--n-cases",
            "1",
            "--shape",
            "48,48,32",
            "--spacing",
            "6.5,6.5,7.5",
            "--figure",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Task06_SynthLung", "Task10_SynthColon"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    MSDDataset.load("Task10", data_root=tmp_path / "out").verify(progress=False)
    bad = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "x"), "--shape", "48,48"])
    assert bad.exit_code != 0 and "three numbers" in bad.output
    again = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "out"), "--task", "lung", "--n-cases", "1"])
    assert again.exit_code != 0 and "already exists" in again.output
