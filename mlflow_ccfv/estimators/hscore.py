"""H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
Learning", ICIP 2019).

    H(f) = Tr(cov(f)^+ cov(E[f | y]))

with ``cov(f)`` the feature covariance ``[d, d]`` and ``cov(E[f | y])`` the covariance of the
class-conditional means (each row replaced by the mean feature of its class). Higher is better.
``shrinkage=True`` uses the Ledoit-Wolf shrunk feature covariance instead of the pseudo-inverse of
the sample covariance (Ibrahim et al., "Newer is not always better", 2022): more stable when n is
not much larger than d.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features, check_labels

__all__ = ["hscore"]


def _ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf (2004) shrinkage of the (biased) covariance of centred rows ``[n, d]``."""
    n, d = centred.shape
    cov = centred.T @ centred / n
    mu = np.trace(cov) / d
    target = mu * np.eye(d)
    delta = np.sum((cov - target) ** 2)
    sq = centred**2
    beta = (np.sum(sq.T @ sq) / n - np.sum(cov**2)) / n
    shrink = 0.0 if delta == 0 else min(beta, delta) / delta
    return shrink * target + (1.0 - shrink) * cov


def hscore(features: Any, labels: Any, shrinkage: bool = False) -> float:
    """H-score (higher = better).

    Args:
        features: ``[n, d]`` features at the sampled voxels. labels: ``[n]`` class ids.
        shrinkage: use the Ledoit-Wolf covariance (and its inverse) instead of the pseudo-inverse.
    """
    f = check_features(features, "features", min_rows=2)
    y = check_labels(labels, f.shape[0])
    centred = f - f.mean(axis=0)
    g = np.zeros_like(centred)
    for k in np.unique(y):
        rows = y == k
        g[rows] = centred[rows].mean(axis=0)
    n = f.shape[0]
    if shrinkage:
        cov_f = _ledoit_wolf(centred)
        cov_g = g.T @ g / n
        return float(np.trace(np.linalg.solve(cov_f, cov_g)))
    cov_f = centred.T @ centred / (n - 1)
    cov_g = g.T @ g / (n - 1)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_g))
