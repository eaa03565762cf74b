"""The training budget and recipe (:class:`TrainConfig`), identical for every model of a comparison."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE
from mlflow_ccfv.options import Optimizer, parse_ints

__all__ = ["OPTIMIZERS", "TrainConfig"]

#: The ``optimizer`` choices.
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
