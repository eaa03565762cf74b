"""Pre-training and fine-tuning of MONAI segmentation networks, nnU-Net style, on CPU-sized budgets.

The paper pre-trains each bank model for 250k iterations and fine-tunes for 100k (batch 2, A100),
following nnU-Net's training recipe. This module keeps the recipe and scales the budget
(:class:`~mlflow_ccfv.training.config.TrainConfig`):

- patches of ``patch_size`` voxels with class-balanced **foreground oversampling**
  (:class:`~mlflow_ccfv.training.patches.PatchSampler`);
- **Dice + cross-entropy** loss (MONAI ``DiceCELoss``, Dice over foreground classes as in nnU-Net);
- **AdamW** (or nnU-Net's SGD with Nesterov momentum 0.99) with a **polynomial** learning-rate
  decay (power 0.9);
- explicit seeds: network initialisation, patch sampling and mirroring draw from their own
  generators, so the global RNG state is left untouched and a run is reproducible.

Fine-tuning follows the paper's protocol: every pre-trained parameter except the last convolution
is loaded, nothing is frozen (:func:`~mlflow_ccfv.training.initialisation.init_for_finetuning`).

Cases are any objects with ``.case_id: str``, ``.image`` ``[C, X, Y, Z]`` float and ``.label``
``[X, Y, Z]`` int (tensor or ndarray), e.g. :class:`mlflow_ccfv.data.PreprocessedCase`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mlflow_ccfv.networks.devices import resolve_device
from mlflow_ccfv.networks.specs import NetworkSpec
from mlflow_ccfv.training.checkpoint import TrainingCheckpoint
from mlflow_ccfv.training.config import TrainConfig
from mlflow_ccfv.training.initialisation import init_for_finetuning, seeded_network
from mlflow_ccfv.training.patches import PatchSampler, checked_case

__all__ = ["TrainResult", "finetune", "pretrain", "train_segmentation"]

_logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """``losses``: the Dice+CE loss of every step (the training curve); ``seconds``: wall time."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    reinitialised: list[str] = field(default_factory=list)
    #: The step a checkpoint was resumed from (0: trained from the start).
    resumed_from: int = 0


# --------------------------------------------------------------------------- training


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=0.99, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


@dataclass
class _TrainingState:
    """What a training checkpoint saves and restores: the network, the optimiser, the schedule, the
    patch sampler's generators and torch's RNG (and the CUDA device's, when training there)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    sampler: PatchSampler
    device: torch.device

    def snapshot(self, step: int, losses: list[float]) -> dict[str, Any]:
        """The state after ``step`` steps with the curve so far (for :meth:`TrainingCheckpoint.save`)."""
        saving = {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "sampler": self.sampler.get_state(),
            "torch_rng": torch.get_rng_state(),
            "losses": list(losses),
        }
        if self.device.type == "cuda":
            saving["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return saving

    def restore(self, saved: dict[str, Any]) -> tuple[int, list[float]]:
        """Load a :meth:`snapshot`; returns its step and curve."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.sampler.set_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        if "cuda_rng" in saved and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        return int(saved["step"]), [float(v) for v in saved["losses"]]


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
    state = _TrainingState(model, optimizer, schedule, sampler, device)
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
            first, losses = state.restore(saved)
            _logger.info("%s: resuming from the checkpoint at step %d/%d", desc, first, config.steps)
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
                _logger.debug("%s step %d/%d loss %.4f", desc, step + 1, config.steps, value)
            if checkpoint is not None and (step + 1) % checkpoint.every == 0 and step + 1 < config.steps:
                checkpoint.save(state.snapshot(step + 1, losses))
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
