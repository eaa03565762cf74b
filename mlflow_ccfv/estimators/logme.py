"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021): the log marginal evidence of a Bayesian linear model from features to labels.

For each class k, the target is the one-hot column ``y = 1[labels == k]`` and the model is
``y ~ N(F w, 1/beta)``, ``w ~ N(0, 1/alpha I_d)``. With ``A = alpha I + beta F^T F`` and
``m = beta A^-1 F^T y``, the log evidence is::

    L = d/2 log(alpha) + n/2 log(beta) - 1/2 log|A| - beta/2 ||y - F m||^2 - alpha/2 ||m||^2
        - n/2 log(2 pi)

maximised over (alpha, beta) by MacKay's fixed point ``gamma = sum beta s_i / (alpha + beta s_i)``,
``alpha = gamma / ||m||^2``, ``beta = (n - gamma) / ||y - F m||^2`` (s_i the eigenvalues of F^T F),
run from alpha = beta = 1 until alpha/beta changes by less than ``tol`` relatively, at most
``max_iter`` times (the maintained implementation's 11 iterations and 1e-3). The score is the mean
over the classes present of L / n; higher is better.

Everything is computed from the thin SVD of F, exactly, including the d - rank zero eigenvalues of
F^T F (each contributes log(alpha) to log|A|; the maintained implementation's truncated-SVD branch
leaves them out when n < d). A small epsilon guards the divisions. Absent classes (all-zero
targets) are skipped.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features, check_labels

__all__ = ["logme"]


_EPS = 1e-5


def _evidence(
    sigma: np.ndarray, z: np.ndarray, y_perp_sq: float, n: int, d: int, max_iter: int, tol: float
) -> tuple[float, ...]:
    """Log evidence / n at the fixed point. ``sigma`` singular values of F, ``z = U^T y``."""
    s = sigma**2
    alpha, beta = 1.0, 1.0

    def state(alpha: float, beta: float) -> tuple[float, ...]:
        gamma = float(np.sum(beta * s / (alpha + beta * s)))
        m_v = beta * sigma * z / (alpha + beta * s)  # m in the right-singular basis
        m_sq = float(np.sum(m_v**2))
        res = float(np.sum((z - sigma * m_v) ** 2) + y_perp_sq)
        return gamma, m_sq, res

    for _ in range(max_iter):
        gamma, m_sq, res = state(alpha, beta)
        new_alpha = gamma / (m_sq + _EPS)
        new_beta = (n - gamma) / (res + _EPS)
        lam, new_lam = alpha / beta, new_alpha / new_beta
        alpha, beta = new_alpha, new_beta
        if abs(new_lam - lam) / lam < tol:
            break
    _, m_sq, res = state(alpha, beta)
    log_det_a = float(np.sum(np.log(alpha + beta * s))) + (d - s.size) * math.log(alpha)
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * log_det_a
        - beta / 2 * res
        - alpha / 2 * m_sq
        - n / 2 * math.log(2 * math.pi)
    )
    return evidence / n, alpha, beta


def logme(features: Any, labels: Any, max_iter: int = 11, tol: float = 1e-3) -> float:
    """LogME score: the mean over present classes of the per-sample log evidence (higher = better).

    Args:
        features: ``[n, d]`` features at the sampled voxels (numpy or torch).
        labels: ``[n]`` integer class ids (background included if it is a class to segment).
        max_iter, tol: fixed-point budget and relative tolerance on alpha/beta.
    """
    f = check_features(features, "features")
    y_all = check_labels(labels, f.shape[0])
    n, d = f.shape
    u, sigma, _ = np.linalg.svd(f, full_matrices=False)
    if not sigma.size or sigma[0] == 0:
        raise ValueError("features are all zero; LogME's evidence is undefined for them")
    classes = np.unique(y_all)
    scores = []
    for k in classes:
        y = (y_all == k).astype(np.float64)
        z = u.T @ y
        y_perp_sq = max(float(y @ y - z @ z), 0.0)
        ev, _, _ = _evidence(sigma, z, y_perp_sq, n, d, max_iter, tol)
        scores.append(ev)
    return float(np.mean(scores))
