"""Sampling on real data through mlflow_ccfv.data: the BRATS cases and the TotalSegmentator spleen task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.data.derive import derive_task
from mlflow_ccfv.features import SamplerConfig, sample_features
from mlflow_ccfv.networks import NetworkSpec, small_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# No window overlap keeps the forward passes (the cost) near one per voxel.
CONFIG = dict(layer_budgets=(25, 50, 100), floor=5, cap=300, global_samples=64, sw_batch_size=4, overlap=0.0)


@pytest.fixture(scope="module")
def brats(real_data):
    ds = MSDDataset.load(real_data / "brats2013-6")
    return ds, list(ds.iter_cases(progress=False))


@pytest.fixture(scope="module")
def spleen(real_data, tmp_path_factory):
    folder = real_data / "totalseg-ct"
    task = derive_task(
        folder / "example_ct_sm.nii.gz",
        folder / "example_seg.nii.gz",
        tmp_path_factory.mktemp("tasks"),
        {1: "spleen"},
        "Task09_Spleen",
    )
    ds = MSDDataset.load(task)
    return ds, list(ds.iter_cases(progress=False))


def _check_samples(fs, cases, n_labels):
    for case in cases:
        cs = fs.case(case.case_id)
        label = case.label.numpy()
        x, y, z = cs.coords.T
        np.testing.assert_array_equal(cs.labels, label[x, y, z])
        counts = np.bincount(label.reshape(-1), minlength=n_labels)
        present = {k for k in range(1, n_labels) if counts[k] > 0}
        assert set(fs.class_features(-1, case.case_id)) == present
        assert fs.global_features(0, case.case_id).shape[0] == CONFIG["global_samples"]
        for layer in fs.layers:
            assert np.isfinite(cs.features[layer]).all()
    feats, labels, probs = fs.baseline_inputs()
    assert 0 in labels and feats.shape[0] == probs.shape[0] == labels.shape[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_brats_multichannel_multiclass(brats):
    ds, cases = brats
    assert ds.n_channels == 2
    # A light MONAI UNet (the cost is the forward passes over every voxel of six volumes).
    model = NetworkSpec(
        "UNet",
        {
            "spatial_dims": 3,
            "in_channels": ds.n_channels,
            "out_channels": len(ds.labels),
            "channels": (4, 8, 16, 32),
            "strides": (2, 2, 2),
            "num_res_units": 0,
        },
    ).build()
    torch.manual_seed(0)
    fs = sample_features(model, cases, config=SamplerConfig(**CONFIG), progress=False)
    assert fs.case_ids == ds.case_ids
    _check_samples(fs, cases, len(ds.labels))
    # class budgets follow the voxel counts: in every case the largest tumour class gets the most samples
    for case in cases:
        counts = np.bincount(case.label.numpy().reshape(-1), minlength=5)[1:]
        per_class = {k: len(v) for k, v in fs.class_features(-1, case.case_id).items()}
        assert max(per_class, key=per_class.get) == 1 + int(np.argmax(counts))
    ccfv = fs.ccfv_inputs()
    assert [c[0][0][next(iter(c[0][0]))].shape[1] for c in ccfv] == [8, 8]


def test_totalseg_spleen_padded_and_aligned(spleen):
    ds, cases = spleen
    (case,) = cases
    assert case.label.shape[2] < 32  # 30 slices: the sampler must pad like sliding_window_inference
    model = small_spec("DynUNet", 1, 2).build()
    fs = sample_features(model, ds, config=SamplerConfig(**CONFIG), progress=False)  # the dataset itself
    assert fs.case_ids == ds.case_ids
    _check_samples(fs, cases, 2)
    cs = fs.case(case.case_id)
    assert cs.padding.tolist() == [0, 0, 1]
    n_spleen = int((case.label == 1).sum())
    assert len(fs.class_features(-1, case.case_id)[1]) == min(n_spleen, CONFIG["layer_budgets"][-1])

    # A network that reproduces its input: every feature is the pre-processed CT at its coordinate.
    class Echo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = torch.nn.Identity()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.decoder(x) * self.scale

    echo = sample_features(Echo(), cases, layers=["decoder"], config=SamplerConfig(**CONFIG), progress=False)
    ec = echo.case(case.case_id)
    x, y, z = ec.coords.T
    np.testing.assert_allclose(ec.features["decoder"][:, 0], case.image[0].numpy()[x, y, z], atol=1e-6)
