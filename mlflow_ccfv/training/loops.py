"""Pre-training and fine-tuning of MONAI segmentation networks, nnU-Net style, on CPU-sized budgets.

The paper pre-trains each bank model for 250k iterations and fine-tunes for 100k (batch 2, A100),
following nnU-Net's training recipe. This module keeps the recipe and scales the budget:

- patches of ``patch_size`` voxels with class-balanced **foreground oversampling**: a fraction
  ``foreground_fraction`` of the patches is centred on a voxel of a foreground class chosen
  uniformly among those present in the case (nnU-Net forces 1/3 of each batch to foreground; with
  budgets of tens to hundreds of steps a higher fraction is used), the rest on a background voxel
  (MONAI's ``RandCropByLabelClasses`` sampling, via ``generate_label_classes_crop_centers``);
- **Dice + cross-entropy** loss (MONAI ``DiceCELoss``, Dice over foreground classes as in nnU-Net);
- **AdamW** (or nnU-Net's SGD with Nesterov momentum 0.99) with a **polynomial** learning-rate
  decay (power 0.9);
- explicit seeds: network initialisation, patch sampling and mirroring draw from their own
  generators, so the global RNG state is left untouched and a run is reproducible.

Fine-tuning (the paper's protocol): load every pre-trained parameter except the last convolution,
which is re-created for the target's classes; nothing is frozen. "The last convolution" is found
structurally: the parameters whose shapes depend on ``out_channels`` (for MONAI's residual ``UNet``
that is the whole top up-sampling block, a transposed convolution plus a 1-unit convolution; for
``UNETR``, ``DynUNet`` and ``BasicUNet`` the final 1x1x1 convolution).

Cases are any objects with ``.case_id: str``, ``.image`` ``[C, X, Y, Z]`` float and ``.label``
``[X, Y, Z]`` int (tensor or ndarray), e.g. :class:`mlflow_ccfv.data.PreprocessedCase`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mlflow_ccfv.networks.devices import resolve_device
from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE, NetworkSpec, load_state_dict_strict
from mlflow_ccfv.options import Optimizer, parse_ints
from mlflow_ccfv.training.checkpoint import TrainingCheckpoint

__all__ = [
    "OPTIMIZERS",
    "PatchSampler",
    "TrainConfig",
    "TrainResult",
    "checked_case",
    "finetune",
    "head_parameter_names",
    "init_for_finetuning",
    "input_parameter_names",
    "pretrain",
    "seeded_network",
    "target_spec",
    "train_segmentation",
]


log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = tuple(Optimizer)


@dataclass(frozen=True)
class TrainConfig:
    """A training budget and recipe; identical for every model of a comparison (logged as params).

    ``steps``: optimiser steps (the paper: 250k pre-training, 100k fine-tuning).
    ``batch_size``: patches per step (the paper: 2).
    ``patch_size``: patch side lengths in voxels (also the sliding-window ROI at evaluation).
    ``learning_rate``/``weight_decay``/``optimizer``: AdamW by default; ``"sgd"`` is nnU-Net's
    SGD (Nesterov momentum 0.99).  ``poly_power``: exponent of the polynomial decay to 0.
    ``foreground_fraction``: share of patches centred on a foreground voxel (nnU-Net: 0.33).
    ``mirror``: random flips along each axis (nnU-Net's mirroring augmentation).
    ``seed``: initialisation, patch sampling and augmentation.
    """

    steps: int = 100
    batch_size: int = 2
    patch_size: tuple[int, ...] = DEFAULT_PATCH_SIZE
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    poly_power: float = 0.9
    foreground_fraction: float = 0.5
    mirror: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")
        if len(self.patch_size) != 3 or any(int(s) < 4 for s in self.patch_size):
            raise ValueError(f"patch_size must be three sides of at least 4 voxels, got {self.patch_size}.")
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be within [0, 1], got {self.foreground_fraction}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")

    def to_dict(self) -> dict[str, Any]:
        """Flat, string-friendly dict (MLflow params); ``patch_size`` as ``"32x32x32"``."""
        d = asdict(self)
        d["patch_size"] = "x".join(str(s) for s in self.patch_size)
        return d

    def digest(self, **extra: Any) -> str:
        """A short digest of this budget plus any other settings (``extra``): equal budgets, equal digest."""
        payload = json.dumps({**self.to_dict(), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if isinstance(d.get("patch_size"), str):
            d["patch_size"] = parse_ints(d["patch_size"], "patch_size", length=3, minimum=1)
        types = {
            "steps": int,
            "batch_size": int,
            "learning_rate": float,
            "weight_decay": float,
            "poly_power": float,
            "foreground_fraction": float,
            "seed": int,
        }
        for k, t in types.items():
            if k in d:
                d[k] = t(d[k])
        if isinstance(d.get("mirror"), str):
            d["mirror"] = d["mirror"].lower() in ("1", "true", "yes")
        return cls(**d)


@dataclass
class TrainResult:
    """``losses``: the Dice+CE loss of every step (the training curve); ``seconds``: wall time."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    reinitialised: list[str] = field(default_factory=list)
    #: The step a checkpoint was resumed from (0: trained from the start).
    resumed_from: int = 0


# --------------------------------------------------------------------------- cases and patches


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to(dtype=dtype, device="cpu")


def checked_case(case: Any) -> tuple[str, torch.Tensor, torch.Tensor]:
    case_id = str(getattr(case, "case_id", "?"))
    try:
        image = _as_tensor(case.image, torch.float32)
        label = _as_tensor(case.label, torch.int64)
    except AttributeError as exc:
        raise TypeError(
            f"Case {case_id!r} has no .image/.label; pass objects like mlflow_ccfv.data.PreprocessedCase."
        ) from exc
    if image.ndim != 4:
        raise ValueError(f"Case {case_id!r}: image must be [C, X, Y, Z], got shape {tuple(image.shape)}.")
    if label.ndim == 4 and label.shape[0] == 1:
        label = label[0]
    if label.shape != image.shape[1:]:
        raise ValueError(
            f"Case {case_id!r}: label shape {tuple(label.shape)} does not match image {tuple(image.shape[1:])}."
        )
    return case_id, image, label


def _pad_to(image: torch.Tensor, label: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad symmetrically so every side is at least ``size`` (image with its minimum, label with 0)."""
    pads: list[int] = []
    for dim, s in zip(reversed(image.shape[1:]), reversed(size)):
        extra = max(0, int(s) - int(dim))
        pads += [extra // 2, extra - extra // 2]
    if not any(pads):
        return image, label
    fill = float(image.min()) if image.numel() else 0.0
    image = torch.nn.functional.pad(image, pads, mode="constant", value=fill)
    label = torch.nn.functional.pad(label, pads, mode="constant", value=0)
    return image, label


class PatchSampler:
    """Draws training patches with class-balanced foreground oversampling.

    ``cases``: see the module docstring; ``num_classes``: including background. Each patch is
    centred on a foreground voxel with probability ``foreground_fraction`` (class chosen uniformly
    among those present in the case), otherwise on a background voxel. Returns
    ``images [B, C, *patch]`` float32 and ``labels [B, 1, *patch]`` int64.
    """

    def __init__(
        self,
        cases: Sequence[Any],
        num_classes: int,
        patch_size: Sequence[int],
        foreground_fraction: float = 0.5,
        mirror: bool = False,
        seed: int = 0,
    ) -> None:
        from monai.transforms.utils import map_classes_to_indices

        if not cases:
            raise ValueError("No training cases: the training split is empty.")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.num_classes = int(num_classes)
        self.foreground_fraction = float(foreground_fraction)
        self.mirror = mirror
        self._rng = np.random.default_rng(seed)
        # MONAI's crop-centre helper draws from a legacy RandomState; seed it from our generator.
        self._rand_state = np.random.RandomState(int(self._rng.integers(2**31)))
        self.cases: list[tuple[str, torch.Tensor, torch.Tensor, list, list[float]]] = []
        channels = None
        for case in cases:
            case_id, image, label = checked_case(case)
            if channels is not None and image.shape[0] != channels:
                raise ValueError(f"Case {case_id!r} has {image.shape[0]} channels, others have {channels}.")
            channels = image.shape[0]
            if int(label.max()) >= self.num_classes or int(label.min()) < 0:
                raise ValueError(
                    f"Case {case_id!r} has label values {sorted(torch.unique(label).tolist())}, "
                    f"outside 0..{self.num_classes - 1}."
                )
            image, label = _pad_to(image, label, self.patch_size)
            indices = map_classes_to_indices(label[None], self.num_classes)
            present = [k for k in range(1, self.num_classes) if len(indices[k]) > 0]
            ratios = [0.0] * self.num_classes
            ratios[0] = (1.0 - self.foreground_fraction) if len(indices[0]) else 0.0
            for k in present:
                ratios[k] = self.foreground_fraction / len(present)
            if not present:  # no foreground in this case: background patches only
                ratios[0] = 1.0
            self.cases.append((case_id, image, label, indices, ratios))
        if channels is None:
            raise ValueError("PatchSampler needs at least one case.")
        self.in_channels = int(channels)

    def get_state(self) -> str:
        """The generators' state as JSON text (for a training checkpoint)."""
        name, keys, pos, has_gauss, gauss = self._rand_state.get_state()
        legacy = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]
        return json.dumps({"rng": self._rng.bit_generator.state, "legacy": legacy})

    def set_state(self, text: str) -> None:
        """Restore :meth:`get_state`."""
        state = json.loads(text)
        self._rng.bit_generator.state = state["rng"]
        name, keys, pos, has_gauss, gauss = state["legacy"]
        self._rand_state.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.transforms import SpatialCrop
        from monai.transforms.utils import generate_label_classes_crop_centers

        images, labels = [], []
        for _ in range(batch_size):
            _, image, label, indices, ratios = self.cases[int(self._rng.integers(len(self.cases)))]
            centre = generate_label_classes_crop_centers(
                self.patch_size, 1, label.shape, indices, ratios, self._rand_state, warn=False
            )[0]
            crop = SpatialCrop(roi_center=[int(c) for c in centre], roi_size=self.patch_size)
            img, lab = crop(image), crop(label[None])
            img = torch.as_tensor(img).as_subclass(torch.Tensor)
            lab = torch.as_tensor(lab).as_subclass(torch.Tensor)
            if self.mirror:
                axes = [1 + a for a in range(3) if self._rng.random() < 0.5]
                if axes:
                    img, lab = torch.flip(img, axes), torch.flip(lab, axes)
            images.append(img)
            labels.append(lab)
        return torch.stack(images).float(), torch.stack(labels).long()


# --------------------------------------------------------------------------- networks


def seeded_network(spec: NetworkSpec, seed: int) -> nn.Module:
    """Build ``spec`` with its random initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return spec.build()


def _shape_dependent_keys(spec: NetworkSpec, kwarg: str) -> list[str]:
    """State-dict keys whose shapes change with ``spec.kwargs[kwarg]`` (built on the meta device)."""
    base = int(spec.kwargs[kwarg])
    other = NetworkSpec(spec.architecture, {**spec.kwargs, kwarg: base + 3})
    with torch.device("meta"):
        a = spec.build().state_dict()
        b = other.build().state_dict()
    return [k for k in a if tuple(a[k].shape) != tuple(b[k].shape)]


def head_parameter_names(spec: NetworkSpec) -> list[str]:
    """Parameters of the last convolution: those whose shapes depend on ``out_channels``."""
    return _shape_dependent_keys(spec, "out_channels")


def input_parameter_names(spec: NetworkSpec) -> list[str]:
    """Parameters of the first convolution(s): those whose shapes depend on ``in_channels``."""
    return _shape_dependent_keys(spec, "in_channels")


def target_spec(spec: NetworkSpec, in_channels: int, num_classes: int) -> NetworkSpec:
    """``spec`` re-targeted to ``in_channels`` input channels and ``num_classes`` outputs."""
    return NetworkSpec(
        spec.architecture, {**spec.kwargs, "in_channels": int(in_channels), "out_channels": int(num_classes)}
    )


def init_for_finetuning(
    spec: NetworkSpec, state: dict[str, torch.Tensor] | None, in_channels: int, num_classes: int, seed: int = 0
) -> tuple[nn.Module, NetworkSpec, list[str]]:
    """The network to fine-tune: pre-trained weights except the last convolution (paper, Sec. 3).

    ``spec``/``state``: the bank model (``state=None`` gives the random-initialisation control).
    The last convolution is re-created for ``num_classes``; if the target has a different number of
    input channels than the source, the first convolution is re-created too (and logged), since its
    weights cannot be reused. Returns ``(model, target_spec, reinitialised parameter names)``.
    """
    new_spec = target_spec(spec, in_channels, num_classes)
    model = seeded_network(new_spec, seed)
    if state is None:
        return model, new_spec, sorted(model.state_dict())
    skip = head_parameter_names(spec)
    if int(in_channels) != spec.in_channels:
        first = input_parameter_names(spec)
        log.warning(
            "Source has %d input channel(s), target %d: re-creating the first convolution too (%s).",
            spec.in_channels,
            in_channels,
            ", ".join(first),
        )
        skip = skip + first
    load_state_dict_strict(model, state, skip_prefixes=tuple(skip))
    return model, new_spec, skip


# --------------------------------------------------------------------------- training


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=0.99, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def train_segmentation(
    model: nn.Module,
    cases: Sequence[Any],
    num_classes: int,
    config: TrainConfig,
    desc: str = "train",
    progress: bool = True,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
    *,
    device: str | torch.device | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> TrainResult:
    """Train ``model`` in place on patches of ``cases`` for ``config.steps`` steps; returns the curve.

    ``num_classes`` counts the background; the model's output channels must equal it. ``device``:
    where the network trains (default CUDA when available, else CPU); the cases stay on the CPU and
    each batch of patches is moved there; the trained model is left on that device.
    ``on_checkpoint(step, model)`` is called every ``checkpoint_every`` steps before the last (``step``
    counts the steps done), with the model in eval mode (a pre-training curve evaluates it there). With
    ``checkpoint``, the state is saved every ``checkpoint.every`` steps and a saved state of the same
    run is resumed (the result equals an uninterrupted run's); the caller removes the file when done.
    """
    from monai.losses import DiceCELoss

    sampler = PatchSampler(
        cases, num_classes, config.patch_size, config.foreground_fraction, config.mirror, seed=config.seed
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    device = resolve_device(device)
    model.to(device)  # before the optimiser is built, so that its state lives there too
    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=config.steps, power=config.poly_power)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    # fork the RNG of the device trained on too: manual_seed also seeds CUDA's generators
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)  # dropout, if the architecture has any
        first = 0
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            sampler.set_state(saved["sampler"])
            torch.set_rng_state(saved["torch_rng"])
            if "cuda_rng" in saved and device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"], device)
            losses = [float(v) for v in saved["losses"]]
            first = int(saved["step"])
            log.info("%s: resuming from the checkpoint at step %d/%d", desc, first, config.steps)
        bar = tqdm(
            range(first, config.steps),
            desc=desc,
            disable=None if progress else True,
            leave=False,
            mininterval=1.0,
            initial=first,
        )
        for step in bar:
            images, labels = sampler.sample(config.batch_size)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images)
            if logits.shape[1] != num_classes:
                raise ValueError(
                    f"The network outputs {logits.shape[1]} channels but the task has {num_classes} classes."
                )
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise FloatingPointError(
                    f"{desc}: the loss became {value} at step {step}; lower learning_rate (now {config.learning_rate})."
                )
            losses.append(value)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            done = step + 1
            if (
                on_checkpoint is not None
                and checkpoint_every > 0
                and done % checkpoint_every == 0
                and done < config.steps
            ):
                model.eval()
                with torch.random.fork_rng(devices=cuda):  # evaluating leaves training's RNG as it was
                    on_checkpoint(done, model)
                model.train()
            if step % max(1, config.steps // 5) == 0 or step == config.steps - 1:
                log.debug("%s step %d/%d loss %.4f", desc, step + 1, config.steps, value)
            if checkpoint is not None and (step + 1) % checkpoint.every == 0 and step + 1 < config.steps:
                saving = {
                    "step": step + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "sampler": sampler.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "losses": list(losses),
                }
                if device.type == "cuda":
                    saving["cuda_rng"] = torch.cuda.get_rng_state(device)
                checkpoint.save(saving)
    model.eval()
    return TrainResult(model=model, losses=losses, seconds=time.perf_counter() - start, resumed_from=first)


def pretrain(
    spec: NetworkSpec,
    cases: Sequence[Any],
    config: TrainConfig,
    progress: bool = True,
    desc: str = "pretrain",
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
    *,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train a freshly initialised ``spec`` (seeded with ``config.seed``) on a source task.

    ``spec.out_channels`` must equal the source task's number of classes (background included).
    ``device``: see :func:`train_segmentation` (the initialisation is drawn on the CPU either way);
    ``on_checkpoint``: see :func:`train_segmentation`.
    """
    model = seeded_network(spec, config.seed)
    return train_segmentation(
        model,
        cases,
        spec.out_channels,
        config,
        desc=desc,
        progress=progress,
        checkpoint_every=checkpoint_every,
        on_checkpoint=on_checkpoint,
        device=device,
    )


def finetune(
    spec: NetworkSpec,
    state: dict[str, torch.Tensor] | None,
    cases: Sequence[Any],
    num_classes: int,
    config: TrainConfig,
    progress: bool = True,
    desc: str = "finetune",
    *,
    device: str | torch.device | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> tuple[TrainResult, NetworkSpec]:
    """Fine-tune a bank model on a target's training cases, the paper's way (nothing frozen).

    ``state=None`` fine-tunes a randomly initialised network of the same architecture (the control).
    The re-created head is initialised from ``config.seed``, so every model of a comparison starts
    its head, samples its patches and trains identically. Returns the result and the target spec.
    ``device``: see :func:`train_segmentation`; ``checkpoint``: save and resume (see
    :func:`train_segmentation`).
    """
    if not cases:
        raise ValueError("No training cases: the training split is empty.")
    in_channels = checked_case(cases[0])[1].shape[0]
    model, new_spec, reinit = init_for_finetuning(spec, state, in_channels, num_classes, seed=config.seed)
    result = train_segmentation(
        model, cases, num_classes, config, desc=desc, progress=progress, device=device, checkpoint=checkpoint
    )
    result.reinitialised = reinit
    return result, new_spec
