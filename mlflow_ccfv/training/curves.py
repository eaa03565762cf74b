"""The training curve of a run as a PNG (no MLflow; drawn on a ``matplotlib.figure.Figure``, the global backend untouched)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["training_curve_png"]


def training_curve_png(losses: Sequence[float], path: Path, title: str) -> Path:
    """The loss per step and its running mean, as a PNG at ``path``."""
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, color="tab:blue", alpha=0.5, label="step")
    if len(losses) >= 10:
        k = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, color="tab:blue", label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("Dice + CE loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
