"""The Fig.-2-style scatter of standardised scores against fine-tune Dice, one panel per method."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE
from mlflow_ccfv.study.long_table import METHOD_LABELS, REPORT_METHODS, ordered_methods

__all__ = ["scatter_plot", "standardise"]


def standardise(scores: np.ndarray) -> np.ndarray:
    """z-scores over the bank (Fig. 2 "standardised the various metrics"); constant -> zeros."""
    scores = np.asarray(scores, float)
    sd = scores.std()
    return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)


def scatter_plot(
    frame: pd.DataFrame, corr: pd.DataFrame, dataset: str, path: str | Path, methods: Sequence[str] = REPORT_METHODS
) -> Path:
    """Fig.-2-style figure for ``dataset``: per method, standardised score (x) vs fine-tune Dice (y),
    with a least-squares line and the method's tau and Pearson in the panel title. Saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    sub = frame[frame["dataset"] == dataset]
    present = ordered_methods(methods, sub["method"].unique())
    if not present:
        raise ValueError(f"No scores for dataset {dataset!r}.")
    ncols = min(4, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    c = corr[corr["dataset"] == dataset].set_index("method")
    for ax, m in zip(axes.flat, present):
        g = sub[(sub["method"] == m) & np.isfinite(sub["score"].astype(float))]
        x, y = standardise(g["score"].to_numpy(float)), g["dice"].to_numpy(float)
        control = (
            g.get("source_dataset", pd.Series([""] * len(g), index=g.index)).astype(str).eq(CONTROL_SOURCE).to_numpy()
        )
        ax.scatter(x[~control], y[~control], s=22, color="tab:blue", label="pre-trained")
        if control.any():
            ax.scatter(x[control], y[control], s=30, marker="x", color="tab:red", label="random init")
        if len(x) >= 2 and np.ptp(x) > 0:
            k, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 10)
            ax.plot(xs, k * xs + b, color="gray", lw=1)
        tau = c["weighted_tau"].get(m, float("nan")) if m in c.index else float("nan")
        rho = c["pearson"].get(m, float("nan")) if m in c.index else float("nan")
        ax.set_title(f"{METHOD_LABELS.get(m, m)}\nτ={tau:.2f}  r={rho:.2f}", fontsize=9)
        ax.set_xlabel("standardised score", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("fine-tune Dice", fontsize=8)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Transferability vs fine-tune Dice on {dataset}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
