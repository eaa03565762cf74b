"""Dice on held-out cases: sliding-window inference and MONAI's ``DiceMetric``.

The paper reports, per target, the Dice of the model at the end of fine-tuning on the held-out 20%,
averaged over the target's foreground classes. Here:

- each case is predicted with :func:`monai.inferers.sliding_window_inference` (ROI = the training
  patch size, Gaussian blending), ``argmax`` over classes;
- ``DiceMetric(include_background=False, ignore_empty=True)`` per case and foreground class; a class
  absent from a case's ground truth gives no value for that case (it is ignored, not counted as 1);
- per-class Dice is the mean over the cases that contain the class; the **mean Dice** is the mean
  over foreground classes (the paper's "average Dice").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mlflow_ccfv.networks.devices import resolve_device
from mlflow_ccfv.training.patches import checked_case

__all__ = ["DiceResult", "constant_predictor_dice", "dice_per_class", "evaluate_dice", "predict"]


@dataclass
class DiceResult:
    """``per_class``: foreground class -> mean Dice over the cases containing it (NaN if none does);
    ``mean``: mean of the finite per-class values; ``per_case``: case id -> class -> Dice (NaN where
    the class is absent from that case's ground truth)."""

    per_class: dict[int, float]
    mean: float
    per_case: dict[str, dict[int, float]] = field(default_factory=dict)


def _dice_from_table(table: dict[str, dict[int, float]], num_classes: int) -> DiceResult:
    per_class: dict[int, float] = {}
    for k in range(1, num_classes):
        values = [v[k] for v in table.values() if not math.isnan(v[k])]
        per_class[k] = float(np.mean(values)) if values else float("nan")
    finite = [v for v in per_class.values() if not math.isnan(v)]
    if not finite:
        raise ValueError(
            "No foreground class occurs in any evaluation case: Dice is undefined. "
            "Check the labels or use a larger test split."
        )
    return DiceResult(per_class=per_class, mean=float(np.mean(finite)), per_case=table)


def dice_per_class(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[int, float]:
    """Dice of one case per foreground class (MONAI ``DiceMetric``).

    ``prediction``, ``label``: ``[X, Y, Z]`` integer label maps; ``num_classes`` includes background.
    Returns class -> Dice in [0, 1], NaN where the class is absent from ``label``.
    """
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    y_pred = one_hot(prediction.long()[None, None], num_classes)
    y = one_hot(label.long()[None, None], num_classes)
    values = metric(y_pred, y)[0]  # [num_classes - 1]
    return {k + 1: float(values[k]) for k in range(num_classes - 1)}


@torch.no_grad()
def predict(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Label map ``[X, Y, Z]`` (on the CPU) of ``image [C, X, Y, Z]`` by sliding-window inference (Gaussian
    blend); ``device``: where the network runs (default: where its parameters are)."""
    from monai.inferers import sliding_window_inference

    param = next(model.parameters(), None)
    run_on = resolve_device(device) if device is not None or param is None else param.device
    model.to(run_on).eval()
    logits = sliding_window_inference(
        image[None].float().to(run_on),
        roi_size=tuple(int(s) for s in roi_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=overlap,
        mode="gaussian",
        padding_mode="constant",
        cval=float(image.min()),
    )
    return torch.as_tensor(logits).as_subclass(torch.Tensor)[0].argmax(0).cpu()


def evaluate_dice(
    model: nn.Module,
    cases: Sequence[Any],
    num_classes: int,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    progress: bool = True,
    desc: str = "evaluate",
    *,
    device: str | torch.device | None = None,
) -> DiceResult:
    """Per-class and mean foreground Dice of ``model`` on ``cases`` (the held-out split).

    ``cases``: objects with ``.case_id``, ``.image [C, X, Y, Z]``, ``.label [X, Y, Z]``;
    ``num_classes`` includes background; ``roi_size``: the sliding window (the training patch size);
    ``device``: where the network runs (default CUDA when available, else CPU).
    """
    device = resolve_device(device)
    if not cases:
        raise ValueError("No evaluation cases: the held-out split is empty.")
    table: dict[str, dict[int, float]] = {}
    for case in tqdm(cases, desc=desc, disable=None if progress else True, leave=False):
        case_id, image, label = checked_case(case)
        table[case_id] = dice_per_class(
            predict(model, image, roi_size, overlap, sw_batch_size, device=device), label, num_classes
        )
    return _dice_from_table(table, num_classes)


def constant_predictor_dice(cases: Sequence[Any], num_classes: int) -> float:
    """The best mean Dice any constant predictor (one label for every voxel) reaches on ``cases``.

    The floor a trained model must beat: predicting all background gives 0, predicting class k
    everywhere gives ``2|G_k| / (|G_k| + |V|)``.
    """
    best = 0.0
    for k in range(1, num_classes):
        table = {}
        for case in cases:
            case_id, _, label = checked_case(case)
            table[case_id] = dice_per_class(torch.full_like(label, k), label, num_classes)
        best = max(best, _dice_from_table(table, num_classes).mean)
    return best
