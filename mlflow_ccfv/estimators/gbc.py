"""GBC, Gaussian Bhattacharyya Coefficient (Pándy et al., "Transferability Estimation using
Bhattacharyya Class Separability", CVPR 2022).

Each target class c is modelled as a Gaussian ``N(mu_c, S_c)`` of the features (after PCA), and the
score is the negated total overlap between classes::

    GBC = - sum_{c != c'} exp(-D_B(c, c')),
    D_B = 1/8 dmu^T S^-1 dmu + 1/2 log(det S / sqrt(det S_c det S_c')),  S = (S_c + S_c') / 2

over ordered pairs (a class with a single sample has no variance: it is left out with a logged
warning). Higher (closer to 0) means better separated classes, i.e. better transfer.
Following the paper's segmentation setting, the features are reduced by PCA to ``pca_dim``
(default 64) dimensions and the covariances are diagonal. Per-dimension variances are floored at
``1e-6`` times the mean variance so that a constant dimension within a class cannot make D_B infinite.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features, check_labels

__all__ = ["gbc", "pca_project"]


logger = logging.getLogger(__name__)

_VAR_FLOOR = 1e-6


def pca_project(features: np.ndarray, n_components: int) -> np.ndarray:
    """Centred ``features [n, d]`` projected onto their top ``n_components`` principal axes."""
    centred = features - features.mean(axis=0)
    k = min(n_components, *centred.shape)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T


def gbc(features: Any, labels: Any, pca_dim: int | None = 64) -> float:
    """GBC score (higher = better, <= 0).

    Args:
        features: ``[n, d]`` features at the sampled voxels. labels: ``[n]`` class ids; at least
            two classes with at least two samples each.
        pca_dim: PCA dimension before fitting the class Gaussians (None: no PCA).
    """
    f = check_features(features, "features", min_rows=2)
    y = check_labels(labels, f.shape[0])
    classes, counts = np.unique(y, return_counts=True)
    if (counts < 2).any():
        few = [int(c) for c, m in zip(classes, counts) if m < 2]
        logger.warning("GBC: classes %s have a single sample (no variance) and are left out", few)
        classes = classes[counts >= 2]
    if classes.size < 2:
        raise ValueError(
            "GBC measures the overlap between classes and needs at least 2 classes with at least 2 samples each"
        )
    z = pca_project(f, pca_dim) if pca_dim is not None else f
    means = np.stack([z[y == c].mean(axis=0) for c in classes])
    variances = np.stack([z[y == c].var(axis=0, ddof=1) for c in classes])
    floor = _VAR_FLOOR * max(float(variances.mean()), np.finfo(np.float64).tiny)
    variances = np.maximum(variances, floor)
    total = 0.0
    for a in range(classes.size):
        for b in range(classes.size):
            if a == b:
                continue
            avg = (variances[a] + variances[b]) / 2
            maha = np.sum((means[a] - means[b]) ** 2 / avg) / 8
            logdet = np.sum(np.log(avg)) - 0.5 * (np.sum(np.log(variances[a])) + np.sum(np.log(variances[b])))
            total += np.exp(-(maha + 0.5 * logdet))
    return float(-total)
