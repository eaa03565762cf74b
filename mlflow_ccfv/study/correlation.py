"""Agreement between transferability scores and fine-tuned performance (CC-FV, Table 1).

The weighted Kendall's tau is ``scipy.stats.weightedtau`` with its defaults (hyperbolic weights
1/(r + 1), additive, rank=True: the top of the ranking by score weighs most), as in the public
transferability-estimation code; Pearson's r is ``scipy.stats.pearsonr``. Both lie in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from mlflow_ccfv.estimators.arrays import to_numpy

__all__ = ["pearson", "weighted_tau"]


def _pair(scores: Any, dice: Any) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(scores, "scores").ravel()
    p = to_numpy(dice, "dice").ravel()
    if s.shape != p.shape:
        raise ValueError(f"scores has {s.size} entries but dice has {p.size}; pair them per model")
    if s.size < 2:
        raise ValueError(f"a correlation needs at least 2 models, got {s.size}")
    for name, a in (("scores", s), ("dice", p)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf; every model needs a finite value")
        if np.all(a == a[0]):
            raise ValueError(f"{name} is constant; a rank correlation with it is undefined")
    return s, p


def weighted_tau(scores: Any, dice: Any) -> float:
    """Weighted Kendall's tau between scores ``[M]`` and fine-tuned Dice ``[M]`` over M models."""
    s, p = _pair(scores, dice)
    return float(stats.weightedtau(s, p).statistic)


def pearson(scores: Any, dice: Any) -> float:
    """Pearson's r between scores ``[M]`` and fine-tuned Dice ``[M]``."""
    s, p = _pair(scores, dice)
    return float(stats.pearsonr(s, p).statistic)
