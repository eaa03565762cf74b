"""KL divergence and Bhattacharyya distance between fitted Gaussians (CC-FV Table 2 ablations).

Yang et al. (MICCAI 2023) replace the 2-Wasserstein distance of Eq. 1 by these two in Table 2 and
note that they need inverses and determinants of covariance matrices, which "can easily lead to an
overflow". Covariances of n samples in d dimensions have rank <= n - 1, so for n <= d they are
singular and both divergences are infinite. We therefore regularise every covariance of one class
with the same ridge::

    S_reg = S + lam * I,    lam = regularization * mean_i(Tr(S_i)) / d

the mean running over the cases that hold the class. Sharing ``lam`` across the cases keeps the
divergences comparable between pairs; tying it to the average variance makes them invariant to a
global rescaling of the features. ``regularization`` defaults to 1e-3.

Everything is computed from the factors ``S_i = B_i^T B_i`` (``B_i [r, d]``, see
``wasserstein.fit_gaussian``) with the matrix-determinant lemma and the Woodbury identity, so the
work per pair is on r x r (KL) or 2r x 2r (Bhattacharyya) matrices, never d x d::

    logdet(lam I_d + C^T C) = (d - m) log(lam) + logdet(lam I_m + C C^T)        (C [m, d])
    (lam I_d + C^T C)^{-1}  = (I_d - C^T (lam I_m + C C^T)^{-1} C) / lam
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from mlflow_ccfv.estimators.wasserstein import GaussianFactor, fit_gaussians, stack_factors

__all__ = [
    "DEFAULT_REGULARIZATION",
    "pairwise_bhattacharyya",
    "pairwise_bhattacharyya_factors",
    "pairwise_kl",
    "pairwise_kl_factors",
    "ridge",
]


DEFAULT_REGULARIZATION = 1e-3


def ridge(traces: np.ndarray, d: int, regularization: float) -> float:
    """The shared ridge ``lam = regularization * mean(traces) / d`` (see the module docstring)."""
    if not regularization > 0:
        raise ValueError(f"regularization must be > 0, got {regularization}")
    lam = regularization * float(np.mean(traces)) / d
    if not lam > 0:
        raise ValueError(
            "every case has zero feature variance for this class, so the KL/Bhattacharyya "
            "divergences are undefined; use distance='wasserstein'"
        )
    return lam


def _logdet_spd(k: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(k)
    return 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)


def pairwise_kl_factors(
    factors: Sequence[GaussianFactor], regularization: float = DEFAULT_REGULARIZATION
) -> np.ndarray:
    """``[N, N]`` matrix with entry ``[i, j] = KL(N_i || N_j)`` of the ridge-regularised Gaussians.

    ``KL = 1/2 [Tr(S_j^-1 S_i) + (mu_j - mu_i)^T S_j^-1 (mu_j - mu_i) - d + logdet S_j - logdet S_i]``.
    """
    stacked, means, traces, d = stack_factors(factors)
    n, r, _ = stacked.shape
    lam = ridge(traces, d, regularization)
    eye = np.eye(r)
    kernels = lam * eye + np.matmul(stacked, stacked.transpose(0, 2, 1))  # [N, r, r]
    logdets = (d - r) * np.log(lam) + _logdet_spd(kernels)  # logdet(S_i + lam I)
    out = np.zeros((n, n))
    with threadpool_limits(limits=1, user_api="blas"):
        for j in range(n):
            bj = stacked[j]
            kinv = np.linalg.inv(kernels[j])
            cross = np.matmul(bj[None], stacked.transpose(0, 2, 1))  # [N, r, r] = B_j B_i^T
            q = np.matmul(cross, cross.transpose(0, 2, 1)) + lam * (bj @ bj.T)[None]
            # Tr(S_j^-1 (S_i + lam I)) via Woodbury
            tr_term = (traces + d * lam - np.einsum("ab,iab->i", kinv, q)) / lam
            delta = means - means[j]
            bd = delta @ bj.T
            quad = (np.sum(delta**2, axis=1) - np.einsum("ia,ab,ib->i", bd, kinv, bd)) / lam
            out[:, j] = 0.5 * (tr_term + quad - d + logdets[j] - logdets)
    np.fill_diagonal(out, 0.0)
    return np.clip(out, 0.0, None)


def pairwise_bhattacharyya_factors(
    factors: Sequence[GaussianFactor], regularization: float = DEFAULT_REGULARIZATION
) -> np.ndarray:
    """``[N, N]`` symmetric Bhattacharyya distances of the ridge-regularised Gaussians.

    ``D_B = 1/8 dmu^T S^-1 dmu + 1/2 log(det S / sqrt(det S_i det S_j))``, ``S = (S_i + S_j) / 2``.
    """
    stacked, means, traces, d = stack_factors(factors)
    n, r, _ = stacked.shape
    lam = ridge(traces, d, regularization)
    kernels = lam * np.eye(r) + np.matmul(stacked, stacked.transpose(0, 2, 1))
    logdets = (d - r) * np.log(lam) + _logdet_spd(kernels)
    out = np.zeros((n, n))
    eye2 = np.eye(2 * r)
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(n - 1):
            rest = stacked[i + 1 :]
            # (S_i + S_j)/2 + lam I = lam I + C^T C with C = [B_i; B_j] / sqrt(2)
            c = np.concatenate([np.broadcast_to(stacked[i], rest.shape), rest], axis=1) / np.sqrt(2)
            k = lam * eye2 + np.matmul(c, c.transpose(0, 2, 1))
            logdet_mid = (d - 2 * r) * np.log(lam) + _logdet_spd(k)
            delta = means[i + 1 :] - means[i]
            cd = np.einsum("pmd,pd->pm", c, delta)
            sol = np.linalg.solve(k, cd[..., None])[..., 0]
            quad = (np.sum(delta**2, axis=1) - np.sum(cd * sol, axis=1)) / lam
            out[i, i + 1 :] = quad / 8.0 + 0.5 * (logdet_mid - 0.5 * (logdets[i] + logdets[i + 1 :]))
    out = out + out.T
    return np.clip(out, 0.0, None)


def pairwise_kl(
    samples: Sequence[Any],
    regularization: float = DEFAULT_REGULARIZATION,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """KL divergences ``[N, N]`` (entry ``[i, j] = KL(i || j)``) between Gaussians fitted to
    ``samples[i] [n_i, d]``, regularised as in the module docstring."""
    return pairwise_kl_factors(fit_gaussians(samples, names), regularization)


def pairwise_bhattacharyya(
    samples: Sequence[Any],
    regularization: float = DEFAULT_REGULARIZATION,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Bhattacharyya distances ``[N, N]`` between Gaussians fitted to ``samples[i] [n_i, d]``,
    regularised as in the module docstring."""
    return pairwise_bhattacharyya_factors(fit_gaussians(samples, names), regularization)
