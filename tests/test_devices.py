"""Where networks run: ``device`` on scoring and training, mixed precision as an opt-in, CPU results unchanged."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.features import SamplerConfig, sample_features
from mlflow_ccfv.networks import autocast_inference, decoder_layers, random_state_dict, resolve_device, small_spec
from mlflow_ccfv.networks.checkpoints import build_with_weights
from mlflow_ccfv.scoring import cache_key, score_features, score_model
from mlflow_ccfv.training import TrainConfig, evaluate_dice, pretrain

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import make_target_folder  # noqa: E402

CUDA = torch.cuda.is_available()
LAYERS = decoder_layers(small_spec("UNet", 1, 3).build())
METHODS = ["ccfv", "logme", "leep"]
SAMPLER = {"roi_size": (24, 24, 24), "layer_budgets": (20, 40, 80), "global_samples": 48, "cap": 200}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = make_target_folder(tmp_path_factory.mktemp("devices") / "data")
    return make_target(MSDDataset.load(root), "train")


def _network(seed: int = 0):
    spec = small_spec("UNet", 1, 3)
    return spec, build_with_weights(spec, random_state_dict(spec, seed))


def test_resolve_device_defaults_and_errors():
    assert resolve_device(None).type == ("cuda" if CUDA else "cpu")
    assert resolve_device("auto") == resolve_device("") == resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(OptionError, match="'banana' is not a torch device"):
        resolve_device("banana")
    if not CUDA:
        with pytest.raises(OptionError, match="no CUDA GPU; use device 'cpu'"):
            resolve_device("cuda")
    else:
        with pytest.raises(OptionError, match="CUDA device\\(s\\) are visible"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_autocast_is_a_no_op_unless_asked():
    with autocast_inference(torch.device("cpu"), amp=False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_inference(torch.device("cpu"), amp=True):
        assert torch.is_autocast_enabled("cpu")


def test_cpu_scores_are_bit_equal_with_and_without_the_device_option(target, tmp_path, one_torch_thread):
    """The float32 CPU path is the one the package had before ``device``/``amp``: the same features,
    bit for bit, whether the device is left to the default, named, or the sampler is called as before."""
    _, module = _network(0)
    before = sample_features(
        module,
        list(target.dataset.iter_cases(target.case_ids, progress=False)),
        config=SamplerConfig(**SAMPLER),
        progress=False,
    )
    reference = score_features(before, METHODS).scores
    named = score_model(module, LAYERS, target, METHODS, SAMPLER, model_id="m-a", cache_dir=tmp_path, device="cpu")
    assert not named.cached and named.scores == reference  # exact equality of every float
    if not CUDA:
        default = score_model(module, LAYERS, target, METHODS, SAMPLER, model_id="m-a", cache_dir=tmp_path, force=True)
        assert default.scores == reference
    # float32 cache keys are unchanged (existing caches stay valid); amp gets its own entry
    config = SamplerConfig(**SAMPLER)
    old = {
        "model_id": "m-a",
        "dataset_digest": target.digest,
        "cases": list(target.case_ids),
        "sampler": config.to_dict(),
        "layers": LAYERS,
    }
    assert (
        cache_key("m-a", target, config, LAYERS)
        == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:24]
    )
    assert cache_key("m-a", target, config, LAYERS, amp=True) != cache_key("m-a", target, config, LAYERS)
    # a model's own intensity normalisation gets its own entry too
    from mlflow_ccfv.data import IntensityNormalization

    ct = IntensityNormalization.from_records(
        [{"scheme": "CTNormalization", "mean": 0, "std": 1, "lower": -1, "upper": 1}]
    )
    assert cache_key("m-a", target, config, LAYERS, normalization=ct) != cache_key("m-a", target, config, LAYERS)


def test_mixed_precision_is_an_opt_in_with_its_own_cache_entry(target, tmp_path, one_torch_thread):
    _, module = _network(1)
    fp32 = score_model(module, LAYERS, target, METHODS, SAMPLER, model_id="m-b", cache_dir=tmp_path, device="cpu")
    amp = score_model(
        module, LAYERS, target, METHODS, SAMPLER, model_id="m-b", cache_dir=tmp_path, device="cpu", amp=True
    )
    assert not amp.cached  # not served the float32 features
    assert all(np.isfinite(v) for v in amp.scores.values())
    # bfloat16 on the CPU rounds the activations: close to, not equal to, the float32 scores
    assert amp.scores["ccfv"] == pytest.approx(fp32.scores["ccfv"], rel=0.2)
    again = score_model(
        module, LAYERS, target, METHODS, SAMPLER, model_id="m-b", cache_dir=tmp_path, device="cpu", amp=True
    )
    assert again.cached and again.scores == amp.scores


def test_training_runs_where_asked_and_cpu_training_is_unchanged(target, one_torch_thread):
    spec, _ = _network()
    cases = list(target.dataset.iter_cases(target.case_ids, progress=False))
    config = TrainConfig(steps=3, patch_size=(24, 24, 24), seed=0)
    a = pretrain(spec, cases, config, progress=False, device="cpu")
    b = pretrain(spec, cases, config, progress=False)  # default: CUDA when available
    assert next(a.model.parameters()).device.type == "cpu"
    assert next(b.model.parameters()).device.type == ("cuda" if CUDA else "cpu")
    if not CUDA:
        assert a.losses == b.losses  # bit-equal: the default on a CPU machine is the CPU path
    else:
        assert a.losses == pytest.approx(b.losses, rel=1e-3, abs=1e-4)
    dice_cpu = evaluate_dice(a.model, cases[:2], 3, (24, 24, 24), progress=False, device="cpu")
    assert 0.0 <= dice_cpu.mean <= 1.0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_scores_match_cpu_scores(target, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    _, module = _network(2)
    cpu = score_model(module, LAYERS, target, METHODS, SAMPLER, model_id="m-c", cache_dir=tmp_path / "c", device="cpu")
    gpu = score_model(module, LAYERS, target, METHODS, SAMPLER, model_id="m-c", cache_dir=tmp_path / "g", device="cuda")
    for m in METHODS:
        assert gpu.scores[m] == pytest.approx(cpu.scores[m], rel=1e-3), m
    amp = score_model(
        module, LAYERS, target, METHODS, SAMPLER, model_id="m-c", cache_dir=tmp_path / "g", device="cuda", amp=True
    )
    assert all(np.isfinite(v) for v in amp.scores.values())
