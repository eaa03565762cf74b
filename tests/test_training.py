"""Training, fine-tuning and Dice (mlflow_ccfv.training) on tiny budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mlflow_ccfv.networks import small_spec
from mlflow_ccfv.training import (
    PatchSampler,
    TrainConfig,
    finetune,
    head_parameter_names,
    init_for_finetuning,
    pretrain,
)
from mlflow_ccfv.training.dice import constant_predictor_dice, dice_per_class, evaluate_dice


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    label: torch.Tensor


def blob_cases(n: int, seed: int, shape=(40, 40, 40), classes: int = 2) -> list[Case]:
    """An easy task: bright balls (class 1) and, if classes == 3, dark cubes (class 2) in noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    cases = []
    for i in range(n):
        label = np.zeros(shape, np.int64)
        margin = min(12, min(shape) // 2 - 1)
        centre = rng.uniform(margin, np.array(shape) - margin)
        r = rng.uniform(5, min(8, margin))
        label[((grid - centre[:, None, None, None]) ** 2).sum(0) < r**2] = 1
        if classes == 3:
            c2 = rng.uniform(6, np.array(shape) - 6).astype(int)
            label[c2[0] - 3 : c2[0] + 3, c2[1] - 3 : c2[1] + 3, c2[2] - 3 : c2[2] + 3] = 2
        image = rng.normal(0, 0.3, shape) + 2.0 * (label == 1) - 2.0 * (label == 2)
        cases.append(Case(f"case{i}", torch.tensor(image[None], dtype=torch.float32), torch.tensor(label)))
    return cases


TINY = TrainConfig(steps=30, batch_size=2, patch_size=(24, 24, 24), learning_rate=1e-2, seed=0)


def test_patch_sampler_oversamples_foreground():
    cases = blob_cases(3, seed=1)
    all_fg = PatchSampler(cases, 2, (16, 16, 16), foreground_fraction=1.0, seed=0)
    no_fg = PatchSampler(cases, 2, (16, 16, 16), foreground_fraction=0.0, seed=0)
    img, lab = all_fg.sample(8)
    assert img.shape == (8, 1, 16, 16, 16) and lab.shape == (8, 1, 16, 16, 16)
    # centred on a foreground voxel: the centre voxel is foreground in every patch
    assert all(int(lab[b, 0, 8, 8, 8]) == 1 for b in range(8))
    _, lab0 = no_fg.sample(8)
    assert (lab0[:, 0, 8, 8, 8] == 0).all()


def test_patch_sampler_is_seeded_and_pads_small_cases():
    cases = blob_cases(2, seed=2, shape=(20, 20, 20))
    a = PatchSampler(cases, 2, (24, 24, 24), seed=5).sample(3)
    b = PatchSampler(cases, 2, (24, 24, 24), seed=5).sample(3)
    assert a[0].shape == (3, 1, 24, 24, 24)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_inputs_are_clear_errors():
    cases = blob_cases(1, seed=0)
    with pytest.raises(ValueError, match="outside 0..0"):
        PatchSampler(cases, 1, (16, 16, 16))
    with pytest.raises(ValueError, match="image must be"):
        PatchSampler([Case("x", torch.zeros(4, 4, 4), torch.zeros(4, 4, 4))], 2, (4, 4, 4))
    with pytest.raises(ValueError, match="training split is empty"):
        PatchSampler([], 2, (8, 8, 8))
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")


def test_dice_per_class_matches_definition():
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[:4] = 1
    pred = torch.zeros_like(label)
    pred[:2] = 1
    pred[6:] = 2  # class 2 absent from the ground truth
    d = dice_per_class(pred, label, 3)
    assert d[1] == pytest.approx(2 * 128 / (128 + 256))
    assert math.isnan(d[2])


def test_train_config_roundtrip():
    cfg = TrainConfig(steps=7, patch_size=(16, 24, 32), mirror=True, seed=3)
    params = {k: str(v) for k, v in cfg.to_dict().items()}
    assert params["patch_size"] == "16x24x32"
    assert TrainConfig.from_dict(params) == cfg


def test_head_is_the_last_convolution():
    unetr = small_spec("UNETR", 1, 2, (32, 32, 32))
    assert head_parameter_names(unetr) == ["out.conv.conv.weight", "out.conv.conv.bias"]
    unet_head = head_parameter_names(small_spec("UNet", 1, 2, (32, 32, 32)))
    assert unet_head and all(k.startswith("model.2.") for k in unet_head)


def test_finetune_init_keeps_all_but_the_head():
    spec = small_spec("UNet", 1, 2, (24, 24, 24))
    source = pretrain(spec, blob_cases(2, seed=3), TrainConfig(steps=2, patch_size=(24, 24, 24)), progress=False)
    state = source.model.state_dict()
    model, new_spec, reinit = init_for_finetuning(spec, state, in_channels=1, num_classes=3, seed=0)
    assert new_spec.out_channels == 3
    new_state = model.state_dict()
    for k, v in state.items():
        if k in reinit:
            assert new_state[k].shape != v.shape or not torch.equal(new_state[k], v)
        else:
            assert torch.equal(new_state[k], v), k
    # a source with another number of input channels: the first convolution is re-created too
    model2, spec2, reinit2 = init_for_finetuning(
        small_spec("UNet", 2, 2, (24, 24, 24)), small_spec("UNet", 2, 2).build().state_dict(), 1, 3
    )
    assert spec2.in_channels == 1 and set(reinit) < set(reinit2)


def test_training_is_reproducible():
    spec = small_spec("UNet", 1, 2, (24, 24, 24))
    cfg = TrainConfig(steps=3, patch_size=(24, 24, 24), seed=11)
    cases = blob_cases(2, seed=4)
    a, b = pretrain(spec, cases, cfg, progress=False), pretrain(spec, cases, cfg, progress=False)
    assert a.losses == b.losses


def test_finetuned_dice_beats_a_trivial_predictor():
    train, test = blob_cases(4, seed=10), blob_cases(2, seed=20)
    spec = small_spec("UNet", 1, 2, TINY.patch_size)
    result, new_spec = finetune(spec, None, train, num_classes=2, config=TINY, progress=False)
    assert len(result.losses) == TINY.steps and result.losses[-1] < result.losses[0]
    dice = evaluate_dice(result.model, test, 2, roi_size=TINY.patch_size, progress=False)
    floor = constant_predictor_dice(test, 2)
    assert 0.0 <= dice.mean <= 1.0 and set(dice.per_case) == {"case0", "case1"}
    assert dice.mean > floor + 0.2, (dice, floor)


def test_resuming_from_a_checkpoint_continues_the_same_training(tmp_path):
    from mlflow_ccfv.training import TrainingCheckpoint

    spec = small_spec("UNet", 1, 2, (24, 24, 24))
    state = seeded_network_state(spec)
    cfg = TrainConfig(steps=6, patch_size=(24, 24, 24), seed=3)
    cases = blob_cases(2, seed=5)
    cpu = {"progress": False, "device": "cpu"}  # bit-reproducible training
    whole, _ = finetune(spec, state, cases, 2, cfg, **cpu)
    # Checkpoints at steps 2 and 4 (none at the end): the file left is what a kill after step 4 leaves.
    ckpt = TrainingCheckpoint(tmp_path / "ft.pt", every=2, fingerprint="model/budget")
    first, _ = finetune(spec, state, cases, 2, cfg, checkpoint=ckpt, **cpu)
    assert first.resumed_from == 0 and first.losses == whole.losses and ckpt.path.is_file()
    resumed, _ = finetune(spec, state, cases, 2, cfg, checkpoint=ckpt, **cpu)
    assert resumed.resumed_from == 4 and resumed.losses == whole.losses
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    # A checkpoint of another run (other fingerprint) or a torn file is ignored: training starts over.
    other = TrainingCheckpoint(ckpt.path, every=2, fingerprint="other")
    assert finetune(spec, state, cases, 2, cfg, checkpoint=other, **cpu)[0].resumed_from == 0
    ckpt.path.write_bytes(b"torn")
    assert finetune(spec, state, cases, 2, cfg, checkpoint=ckpt, **cpu)[0].resumed_from == 0
    with pytest.raises(ValueError, match="at least 1"):
        TrainingCheckpoint(ckpt.path, every=0)


def seeded_network_state(spec):
    from mlflow_ccfv.training import seeded_network

    return seeded_network(spec, 1).state_dict()
