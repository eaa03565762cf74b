"""Training checkpoints: resume a killed pre-training or fine-tuning where it stopped (no MLflow).

A checkpoint holds everything the next step depends on: the network's and the optimiser's state, the
learning-rate schedule, the losses so far, and the state of every random generator (patch sampling,
MONAI's crop centres, torch's for dropout). Resuming from it therefore continues the *same* run: the
weights and the curve after ``steps`` equal those of an uninterrupted run (to float reproducibility
of the device; exactly on one CPU thread).

The file is written atomically (temporary file + ``os.replace``) every ``every`` steps, and read with
``torch.load(weights_only=True)``: plain tensors, numbers and strings, no pickled objects. A
checkpoint made with other settings (its ``fingerprint`` differs) is ignored with a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["TrainingCheckpoint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingCheckpoint:
    """Where and how often to checkpoint: ``path`` (a ``.pt`` file), every ``every`` optimiser steps;
    ``fingerprint`` names the run (e.g. model id + budget digest): a file of another run is not resumed."""

    path: Path
    every: int = 50
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if int(self.every) < 1:
            raise ValueError(f"checkpoint every must be at least 1 step; got {self.every}.")
        object.__setattr__(self, "path", Path(self.path))

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (tensors, numbers, strings, lists/dicts of them) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none, it belongs to another run, or it is unreadable."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: start over rather than fail
            log.warning("ignoring unreadable checkpoint %s (%s); training from step 0", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to another run", self.path)
            return None
        return state

    def remove(self) -> None:
        """Delete the file (the run finished)."""
        self.path.unlink(missing_ok=True)
