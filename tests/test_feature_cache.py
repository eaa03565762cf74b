"""The feature cache verifies every entry against its SHA-256 on read: a truncated, empty or
bit-flipped entry is recomputed with a warning (the same features as before), not a failure on every
rerun; the recomputed entry is then read from the cache again."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.data.synthetic import generate_task
from mlflow_ccfv.features import SamplerConfig
from mlflow_ccfv.networks import build_network, decoder_layers, small_spec
from mlflow_ccfv.scoring import FeatureCache
from mlflow_ccfv.scoring.feature_cache import CHECKSUM_SUFFIX


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    import torch

    root = tmp_path_factory.mktemp("cache")
    folder = generate_task("spleen", root, n_cases=2, shape=(24, 24, 16), progress=False)
    target = make_target(MSDDataset.load(folder), "all")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = build_network(small_spec("UNet", 1, 2)).eval()
    config = SamplerConfig(roi_size=(16, 16, 16), global_samples=32, layer_budgets=(20, 40))
    return module, decoder_layers(module), target, config


def _same(a, b) -> bool:
    x, y = a.baseline_inputs(), b.baseline_inputs()
    return all(np.array_equal(p, q) for p, q in zip(x, y))


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.mark.parametrize(
    "damage",
    [_truncate, lambda d: b"", _flip, None],
    ids=["truncated", "zero bytes", "one flipped bit", "checksum lost"],
)
def test_corrupt_entry_is_recomputed_with_a_warning(setup, tmp_path, caplog, damage):
    module, layers, target, config = setup
    cache = FeatureCache(tmp_path)
    kwargs = {"model_id": "m-test", "label": "m/1"}
    first, cached = cache.features(module, layers, target, config, **kwargs)
    assert not cached
    entries = list((tmp_path / "features").rglob("*.npz"))
    assert len(entries) == 1 and entries[0].with_name(entries[0].name + CHECKSUM_SUFFIX).is_file()
    again, cached = cache.features(module, layers, target, config, **kwargs)
    assert cached and _same(first, again)

    entry = entries[0]
    if damage is None:
        entry.with_name(entry.name + CHECKSUM_SUFFIX).unlink()
    else:
        entry.write_bytes(damage(entry.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="mlflow_ccfv.scoring.feature_cache"):
        recomputed, cached = cache.features(module, layers, target, config, **kwargs)
    assert not cached and _same(first, recomputed)
    assert any("unusable" in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)
    _, cached = cache.features(module, layers, target, config, **kwargs)
    assert cached
