"""sample_features: equivalence with the naive upsample-and-index path, alignment, budgets, seeds, errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from torch import nn

from mlflow_ccfv.features import FeatureSet, SamplerConfig, sample_features, sample_voxels
from mlflow_ccfv.features.voxel_plan import _draw_class, class_budgets
from mlflow_ccfv.networks import decoder_layers, small_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(layer_budgets=(10, 20, 40), floor=4, cap=80, global_samples=24)


@dataclass
class Case:
    case_id: str
    image: object
    label: object


def _random_case(case_id, shape, channels=2, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(channels, *shape, generator=g)
    label = torch.zeros(shape, dtype=torch.int64)
    # blobs so that classes are spatially coherent and of different sizes
    for k in range(1, n_classes):
        c = [int(torch.randint(0, s, (1,), generator=g)) for s in shape]
        r = 3 + 3 * k
        sl = tuple(slice(max(ci - r, 0), ci + r) for ci in c)
        label[sl] = k
    return Case(case_id, image, label)


def _monai_windows(shape, roi, overlap):
    padded = tuple(max(s, r) for s, r in zip(shape, roi))
    slices = dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, 3, (overlap,) * 3))
    return {tuple(s.start for s in w) for w in slices}


def _naive_check(model, case, fs: FeatureSet, roi, overlap):
    """Recompute every sample the slow way: window forward, F.interpolate to the ROI, index."""
    layers = fs.layers
    cs = fs.case(case.case_id)
    shape = tuple(case.label.shape)
    diff = [max(r - s, 0) for s, r in zip(shape, roi)]
    assert cs.padding.tolist() == [d // 2 for d in diff]
    pad = []
    for d in reversed(diff):
        pad += [d // 2, d - d // 2]
    image = F.pad(torch.as_tensor(case.image), pad)
    windows = _monai_windows(shape, roi, overlap)
    modules = dict(model.named_modules())
    points = cs.coords + cs.padding
    for start in {tuple(s) for s in cs.window_starts.tolist()}:
        assert start in windows
        rows = np.flatnonzero((cs.window_starts == start).all(axis=1))
        local = points[rows] - np.asarray(start)
        assert (local >= 0).all() and (local < np.asarray(roi)).all()
        crop = image[:, start[0] : start[0] + roi[0], start[1] : start[1] + roi[1], start[2] : start[2] + roi[2]]
        outs = {}
        handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)) for n in layers]
        with torch.no_grad():
            logits = model.eval()(crop[None])
        for h in handles:
            h.remove()
        i, j, k = (torch.as_tensor(local[:, d]) for d in range(3))
        for n in layers:
            up = F.interpolate(outs[n], size=tuple(roi), mode="trilinear", align_corners=False)[0]
            expected = up[:, i, j, k].T.numpy()
            np.testing.assert_allclose(cs.features[n][rows], expected, atol=1e-5, rtol=0)
        probs = torch.softmax(logits[0][:, i, j, k].T, dim=1).numpy()
        np.testing.assert_allclose(cs.probs[rows], probs, atol=1e-5, rtol=0)
    return len({tuple(s) for s in cs.window_starts.tolist()})


@pytest.mark.parametrize(
    "arch,roi,shape",
    [
        ("UNet", (24, 24, 24), (40, 17, 30)),  # multi-window on x and z, padded on y
        ("UNETR", (32, 32, 32), (45, 20, 33)),  # transformer: every feature depends on the whole window
    ],
)
def test_equivalence_with_naive_upsampling(arch, roi, shape):
    model = small_spec(arch, 2, 3, roi).build()
    torch.manual_seed(0)
    cases = [_random_case("c0", shape, seed=1), _random_case("c1", shape[::-1], seed=2)]
    config = SamplerConfig(roi_size=roi, overlap=0.25, sw_batch_size=3, **SMALL)
    fs = sample_features(model, cases, config=config, progress=False)
    assert fs.layers == decoder_layers(model)
    n_windows = [_naive_check(model, c, fs, roi, 0.25) for c in cases]
    assert min(n_windows) > 1
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


class Echo(nn.Module):
    """Reproduces its input: ``decoder`` is an identity 1x1x1 conv, ``coarse`` a 2x average pooling."""

    def __init__(self, channels: int):
        super().__init__()
        self.decoder = nn.Conv3d(channels, channels, 1)
        with torch.no_grad():
            self.decoder.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1, 1))
            self.decoder.bias.zero_()
        self.coarse = nn.AvgPool3d(2)
        self.head = nn.Conv3d(channels, 2, 1)

    def forward(self, x):
        self.coarse(x)
        return self.head(self.decoder(x))


def _coordinate_case(case_id, shape, seed):
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    noise = torch.rand(shape, generator=g)
    image = torch.stack([*grids, noise])
    label = torch.randint(0, 4, shape, generator=g)
    return Case(case_id, image.double().numpy(), label.numpy())  # float64 arrays, not tensors, on purpose


@pytest.mark.parametrize(
    "shape",
    [(37, 12, 29), (10, 9, 7), (50, 40, 21)],
    ids=["non-cubic, partly padded", "smaller than the ROI", "multi-window"],
)
def test_alignment_features_equal_image_at_recorded_coordinates(shape):
    roi = (16, 16, 16)
    case = _coordinate_case("echo", shape, seed=3)
    config = SamplerConfig(
        roi_size=roi, overlap=0.5, sw_batch_size=2, layer_budgets=(30, 60), floor=5, cap=200, global_samples=50, seed=7
    )
    fs = sample_features(Echo(4), [case], layers=["coarse", "decoder"], config=config, progress=False)
    cs = fs.case("echo")
    x, y, z = cs.coords.T
    assert (cs.coords >= 0).all() and (cs.coords < np.asarray(shape)).all()
    np.testing.assert_array_equal(cs.labels, case.label[x, y, z])
    feats = cs.features["decoder"]
    np.testing.assert_allclose(feats[:, :3], cs.coords.astype(np.float32), atol=1e-5)
    np.testing.assert_allclose(feats[:, 3], case.image[3, x, y, z], atol=1e-6)
    # The half-resolution map, upsampled, reproduces a linear (coordinate) image away from the
    # window faces, where trilinear upsampling clamps; padding breaks linearity, so unpadded only.
    if not cs.padding.any():
        local = cs.coords + cs.padding - cs.window_starts
        inner = ((local >= 1) & (local <= np.asarray(roi) - 2)).all(axis=1)
        assert inner.sum() > len(inner) // 2
        np.testing.assert_allclose(cs.features["coarse"][inner, :3], cs.coords[inner], atol=1e-4)
    if shape == (50, 40, 21):
        assert len({tuple(s) for s in cs.window_starts.tolist()}) > 4


def _volume_with_classes(sizes: dict[int, int], shape=(30, 30, 30), seed=0):
    rng = np.random.default_rng(seed)
    flat = np.zeros(int(np.prod(shape)), dtype=np.int64)
    perm = rng.permutation(flat.size)
    pos = 0
    for k, n in sizes.items():
        flat[perm[pos : pos + n]] = k
        pos += n
    return flat.reshape(shape)


def test_budgets_proportional_floor_cap_and_prefixes():
    config = SamplerConfig(layer_budgets=(100, 200, 400), floor=10, cap=600, global_samples=30)
    label = _volume_with_classes({1: 6000, 2: 2000, 3: 5, 5: 300})  # class 4 missing
    plan = sample_voxels(label, config, 3, "case")
    cls = ~plan.is_global
    counts = {k: int(((plan.labels == k) & cls).sum()) for k in range(6)}
    total_fg = 6000 + 2000 + 5 + 300
    # share of 400 * 4 classes: class 1 -> 1157 capped to 600, class 2 -> 386, class 3 all 5 voxels, class 5 -> 58
    assert counts[1] == 600 and counts[2] == round(1600 * 2000 / total_fg) and counts[3] == 5
    assert counts[5] == round(1600 * 300 / total_fg) and counts[4] == 0
    assert counts[0] == 400  # background: the largest layer budget
    assert plan.is_global.sum() == 30
    for layer_budget, per_class in zip((100, 200, 400), plan.budgets):
        assert per_class[2] == round(counts[2] * layer_budget / 400)
        assert per_class[3] == 5 and per_class[0] == layer_budget
        assert 4 not in per_class
    # every planned voxel carries the label found at its coordinates, each class voxel at most once
    x, y, z = plan.coords.T
    np.testing.assert_array_equal(plan.labels, label[x, y, z])
    for k in (0, 1, 2, 3, 5):
        sel = plan.coords[cls & (plan.labels == k)]
        assert len({tuple(c) for c in sel.tolist()}) == len(sel)


def test_background_only_when_asked():
    label = _volume_with_classes({1: 500, 2: 80})
    with_bg = sample_voxels(label, SamplerConfig(global_samples=40), 3, "c")
    without = sample_voxels(label, SamplerConfig(global_samples=40, include_background=False), 3, "c")
    assert ((with_bg.labels == 0) & ~with_bg.is_global).sum() == 400
    assert ((without.labels == 0) & ~without.is_global).sum() == 0
    assert all(0 not in per_class for per_class in without.budgets)
    assert (without.labels[without.is_global] == 0).any()  # global samples still cover the whole case


def test_budget_rule_for_more_layers_than_budgets():
    c = SamplerConfig(layer_budgets=(100, 200, 400), floor=30)
    assert c.budgets_for(2) == (200, 400)
    assert c.budgets_for(5) == (30, 50, 100, 200, 400)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.dictionaries(st.integers(0, 6), st.integers(1, 10**6), min_size=1, max_size=6),
    floor=st.integers(1, 50),
    n_layers=st.integers(1, 6),
)
def test_budget_invariants(counts, floor, n_layers):
    config = SamplerConfig(floor=floor, cap=max(floor, 900))
    planned, per_layer = class_budgets(counts, config, n_layers)
    assert len(per_layer) == n_layers
    for k, p in planned.items():
        assert min(counts[k], floor) <= p <= counts[k]
        layer_counts = [pl[k] for pl in per_layer]
        assert all(min(counts[k], floor) <= m <= p for m in layer_counts)
        assert layer_counts == sorted(layer_counts)  # fewer near the bottleneck
    assert set(planned) == {k for k in counts if k != 0} | ({0} if 0 in counts else set())


def test_large_class_drawn_without_full_index_array():
    label = _volume_with_classes({1: 20000}, shape=(40, 40, 40), seed=1).reshape(-1)
    rng = np.random.default_rng(0)
    idx = _draw_class(label, 1, 20000, 500, rng)  # 31% of the volume: the rejection path
    assert len(set(idx.tolist())) == 500 and (label[idx] == 1).all()


def test_seeds_case_order_and_missing_classes():
    model = small_spec("UNet", 2, 3, (24, 24, 24)).build()
    a = _random_case("a", (30, 26, 24), n_classes=3, seed=4)
    b = _random_case("b", (24, 30, 28), n_classes=2, seed=5)  # b lacks class 2
    cfg = SamplerConfig(roi_size=(24, 24, 24), seed=11, **SMALL)
    fs1 = sample_features(model, [a, b], config=cfg, progress=False)
    fs2 = sample_features(model, [b, a], config=cfg, progress=False)
    fs3 = sample_features(model, [a, b], config=SamplerConfig(roi_size=(24, 24, 24), seed=12, **SMALL), progress=False)
    for cid in ("a", "b"):
        np.testing.assert_array_equal(fs1.case(cid).coords, fs2.case(cid).coords)
        for layer in fs1.layers:
            np.testing.assert_allclose(fs1.case(cid).features[layer], fs2.case(cid).features[layer], atol=1e-6)
        assert not np.array_equal(fs1.case(cid).coords, fs3.case(cid).coords)
    ccfv = fs1.ccfv_inputs()
    assert len(ccfv) == len(fs1.layers)
    assert set(ccfv[-1][0][0]) == {1, 2} and set(ccfv[-1][0][1]) == {1}
    assert all(g.shape == (24, 16) for g in ccfv[-1][1])
    feats, labels, probs = fs1.baseline_inputs()
    assert feats.shape[0] == labels.shape[0] == probs.shape[0]
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    model = small_spec("DynUNet", 1, 2).build()
    case = _random_case("x", (33, 32, 20), channels=1, seed=6)
    fs = sample_features(model, [case], config=SamplerConfig(**SMALL), progress=False)
    path = fs.save(tmp_path / "features")
    assert path.suffix == ".npz"
    back = FeatureSet.load(path)
    assert back.layers == fs.layers and back.case_ids == fs.case_ids and back.config == fs.config
    for (c1, g1), (c2, g2) in zip(fs.ccfv_inputs(), back.ccfv_inputs()):
        assert c1[0].keys() == c2[0].keys()
        for k in c1[0]:
            np.testing.assert_array_equal(c1[0][k], c2[0][k])
        np.testing.assert_array_equal(g1[0], g2[0])
    for a, b in zip(fs.baseline_inputs(), back.baseline_inputs()):
        np.testing.assert_array_equal(a, b)


def test_config_to_dict_is_json_and_validated():
    import json

    d = SamplerConfig().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["layer_budgets"] == [100, 200, 400] and d["roi_size"] == [32, 32, 32]
    with pytest.raises(ValueError, match="overlap"):
        SamplerConfig(overlap=1.0)
    with pytest.raises(ValueError, match="floor"):
        SamplerConfig(floor=50, cap=10)


def test_bad_inputs_are_named():
    model = small_spec("UNet", 1, 2).build()
    img = torch.zeros(1, 20, 20, 20)
    with pytest.raises(ValueError, match="'bad'.*image spatial shape .*differ"):
        sample_features(model, [Case("bad", img, torch.zeros(20, 20, 19, dtype=torch.int64))], progress=False)
    with pytest.raises(ValueError, match="'empty'.*no foreground"):
        sample_features(model, [Case("empty", img, torch.zeros(20, 20, 20, dtype=torch.int64))], progress=False)
    with pytest.raises(ValueError, match="channel-first"):
        sample_features(model, [Case("3d", img[0], torch.ones(20, 20, 20, dtype=torch.int64))], progress=False)
    with pytest.raises(ValueError, match="Available names"):
        sample_features(model, [], layers=["model.9"], progress=False)
    unetr = small_spec("UNETR", 1, 2).build()
    with pytest.raises(ValueError, match=r"'vit.blocks.0' outputs .*\[B, C, X, Y, Z\]"):
        sample_features(
            unetr,
            [Case("c", img, torch.ones(20, 20, 20, dtype=torch.int64))],
            layers=["vit.blocks.0"],
            config=SamplerConfig(**SMALL),
            progress=False,
        )
    assert all(not m._forward_hooks for m in unetr.modules())  # hooks removed after a failure too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(monkeypatch):
    # TF32 convolutions (PyTorch's CUDA default) differ from fp32 by ~1e-3; compare exact fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = small_spec("UNet", 2, 3, (24, 24, 24)).build()
    case = _random_case("g", (30, 20, 26), seed=8)
    cfg = SamplerConfig(roi_size=(24, 24, 24), **SMALL)
    cpu = sample_features(model, [case], config=cfg, progress=False)
    gpu = sample_features(model, [case], config=cfg, device="cuda", progress=False)
    for layer in cpu.layers:
        np.testing.assert_allclose(cpu.case(0).features[layer], gpu.case(0).features[layer], atol=1e-4)


def test_an_absurd_window_is_refused_before_anything_is_allocated():
    """``roi_size=100000³`` (the evaluator's config, a Python caller) is an OptionError naming
    roi_size and the memory it would need, raised before the model runs."""
    from mlflow_ccfv.errors import OptionError
    from mlflow_ccfv.features import SamplerConfig, sample_features
    from mlflow_ccfv.networks import build_network, small_spec

    model = build_network(small_spec("UNet", 1, 2))
    with pytest.raises(OptionError, match="roi_size 100000,100000,100000 needs at least"):
        sample_features(model, [], config=SamplerConfig(roi_size=(100000,) * 3), progress=False)
