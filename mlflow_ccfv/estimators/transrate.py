"""TransRate (Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022): the
mutual information between features and labels, estimated by the coding rate.

    R(Z) = 1/2 logdet(I_d + Z^T Z / (n eps))
    TransRate = R(Z) - sum_c (n_c / n) R(Z_c)

with Z the features L2-normalised per row and centred, Z_c the rows of class c (R(Z_c) uses n_c).
Higher is better. Note: the official and TLlib implementations weight the class terms by 1/K instead
of n_c/n; with the severe class imbalance of segmentation the two differ, we follow the paper.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features, check_labels

__all__ = ["coding_rate", "transrate"]


def coding_rate(z: np.ndarray, eps: float) -> float:
    """``1/2 logdet(I + Z^T Z / (n eps))`` for ``z [n, d]``, on the smaller of the two Gram sides."""
    n, d = z.shape
    gram = z @ z.T if n < d else z.T @ z
    sign, logdet = np.linalg.slogdet(np.eye(gram.shape[0]) + gram / (n * eps))
    return 0.5 * float(logdet)


def transrate(features: Any, labels: Any, eps: float = 1e-4) -> float:
    """TransRate score (higher = better).

    Args:
        features: ``[n, d]`` features at the sampled voxels. labels: ``[n]`` class ids.
        eps: the distortion of the coding rate (1e-4, as in the paper's code).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    f = check_features(features, "features", min_rows=2)
    y = check_labels(labels, f.shape[0])
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(
            f"{int((norms == 0).sum())} feature rows are all zero and cannot be L2-normalised; "
            f"drop them before TransRate"
        )
    z = f / norms
    z = z - z.mean(axis=0)
    n = z.shape[0]
    conditional = 0.0
    for c in np.unique(y):
        zc = z[y == c]
        conditional += zc.shape[0] / n * coding_rate(zc, eps)
    return coding_rate(z, eps) - conditional
