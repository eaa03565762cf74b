"""N-LEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021): LEEP with the source head replaced
by a Gaussian mixture fitted to the features.

The features are reduced by PCA to the components keeping ``variance_kept`` (80%) of the variance,
a Gaussian mixture with ``n_components`` components (default: the number of target classes) is
fitted, and its posteriors ``[n, n_components]`` play the role of the source probabilities in LEEP.
Higher is better (at most 0). Seeded: the mixture's initialisation uses ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features, check_labels
from mlflow_ccfv.estimators.leep import leep

__all__ = ["nleep"]


def nleep(
    features: Any,
    labels: Any,
    seed: int = 0,
    n_components: int | None = None,
    variance_kept: float = 0.8,
) -> float:
    """N-LEEP score (higher = better, <= 0).

    Args:
        features: ``[n, d]`` features at the sampled voxels. labels: ``[n]`` class ids.
        seed: seed of the mixture's k-means initialisation.
        n_components: mixture components (default: number of distinct labels).
        variance_kept: fraction of the variance the PCA keeps (0 < v <= 1).
    """
    from sklearn.mixture import GaussianMixture

    if not 0 < variance_kept <= 1:
        raise ValueError(f"variance_kept must be in (0, 1], got {variance_kept}")
    f = check_features(features, "features", min_rows=2)
    y = check_labels(labels, f.shape[0])
    k = int(n_components or np.unique(y).size)
    if k < 1 or k > f.shape[0]:
        raise ValueError(f"n_components={k} must be between 1 and the number of samples {f.shape[0]}")
    centred = f - f.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    if var.sum() == 0:
        raise ValueError("features are constant; N-LEEP cannot fit a mixture to them")
    n_keep = int(np.searchsorted(np.cumsum(var) / var.sum(), variance_kept) + 1)
    z = centred @ vt[:n_keep].T
    gmm = GaussianMixture(n_components=k, covariance_type="full", random_state=seed, reg_covar=1e-6)
    posteriors = gmm.fit(z).predict_proba(z)
    return leep(posteriors, y)
