"""2-Wasserstein distance between Gaussians fitted to feature samples (CC-FV, Eq. 1).

For Gaussians N(mu_1, S_1) and N(mu_2, S_2), Eq. 1 of Yang et al. (MICCAI 2023) is the squared
distance (the Fréchet distance)::

    W2^2 = ||mu_1 - mu_2||^2 + Tr(S_1) + Tr(S_2) - 2 Tr((S_1 S_2)^{1/2})

Computing the trace term with a d x d matrix square root per pair (what the official code does with
``scipy.linalg.sqrtm``) costs O(d^3) per pair and is numerically fragile: the covariances of n < d
samples are singular, ``sqrtm`` of their product can come back complex.

Here each covariance is factored once from its own samples. With ``A = (X - mean) / sqrt(n - 1)``
(``[n, d]``), ``S = A^T A`` and its thin SVD ``A = U diag(s) V^T`` gives ``S = B^T B`` with
``B = diag(s) V^T`` (``[r, d]``, r = rank <= min(n - 1, d)). The non-zero eigenvalues of
``S_1 S_2 = B_1^T (B_1 B_2^T) B_2`` are those of ``M M^T`` with ``M = B_1 B_2^T`` (``[r_1, r_2]``), so::

    Tr((S_1 S_2)^{1/2}) = sum_k sqrt(eig_k(M M^T)) = ||B_1 B_2^T||_*   (the nuclear norm)

an exact identity that needs only r x r matrices. ``pairwise_w2`` factors the N cases once and
evaluates all N(N-1)/2 pairs from r x r products, never holding a d x d matrix per pair.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from mlflow_ccfv.estimators.arrays import check_features

__all__ = [
    "GaussianFactor",
    "fit_gaussian",
    "fit_gaussians",
    "gaussian_w2",
    "pairwise_w2",
    "pairwise_w2_factors",
    "stack_factors",
]


logger = logging.getLogger(__name__)

# Keep each batch of r x r pair products under this many bytes.
_PAIR_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class GaussianFactor:
    """A Gaussian fitted to samples ``[n, d]``: mean ``[d]``, covariance factor and trace.

    Attributes:
        mean: ``[d]`` sample mean.
        factor: ``[r, d]`` matrix ``B`` with ``B^T B`` the unbiased sample covariance (ddof = 1);
            r is the numerical rank, at most ``min(n - 1, d)``.
        trace: ``Tr(S) = ||B||_F^2``.
    """

    mean: np.ndarray
    factor: np.ndarray
    trace: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


def fit_gaussian(x: Any, name: str = "x") -> GaussianFactor:
    """Fit mean and unbiased covariance to samples ``x [n, d]`` (n >= 2), kept in factored form.

    Singular values below ``max(n, d) * eps * s_max`` (numerically zero, as for the direction removed
    by centring) are dropped; they change no trace by more than rounding.
    """
    a = check_features(x, name, min_rows=2)
    n = a.shape[0]
    mean = a.mean(axis=0)
    centred = (a - mean) / np.sqrt(n - 1.0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    tol = (s[0] if s.size else 0.0) * max(a.shape) * np.finfo(np.float64).eps
    keep = s > tol
    factor = s[keep, None] * vt[keep]
    return GaussianFactor(mean=mean, factor=factor, trace=float(np.sum(s**2)))


def stack_factors(
    factors: Sequence[GaussianFactor],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(stacked [N, r, d], means [N, d], traces [N], d)`` of N fitted Gaussians of one dimension.

    The factors are zero-padded to the largest rank r (at least one row, so that zero-variance sets
    of rank 0 need no special case).
    """
    dims = {f.dim for f in factors}
    if len(dims) != 1:
        raise ValueError(f"the Gaussians have different feature dimensions {sorted(dims)}")
    d = dims.pop()
    r = max(1, max(f.factor.shape[0] for f in factors))
    stacked = np.zeros((len(factors), r, d))
    for i, f in enumerate(factors):
        stacked[i, : f.factor.shape[0]] = f.factor
    means = np.stack([f.mean for f in factors])
    traces = np.array([f.trace for f in factors])
    return stacked, means, traces, d


def fit_gaussians(samples: Sequence[Any], names: Sequence[str] | None = None) -> list[GaussianFactor]:
    """``fit_gaussian`` of every set ``samples[i] [n_i, d]``; all must share ``d``.

    ``names`` label the sets in error messages (default ``samples[i]``).
    """
    names = list(names) if names is not None else [f"samples[{i}]" for i in range(len(samples))]
    if len(names) != len(samples):
        raise ValueError(f"got {len(names)} names for {len(samples)} sample sets")
    factors = [fit_gaussian(x, name) for x, name in zip(samples, names)]
    dims = {f.dim for f in factors}
    if len(dims) > 1:
        detail = ", ".join(f"{name}: d={f.dim}" for name, f in zip(names, factors))
        raise ValueError(f"feature dimensions differ ({detail}); every set must come from the same layer")
    return factors


def _w2_from_parts(mean_sq: np.ndarray, tr1, tr2, cross: np.ndarray) -> np.ndarray:
    w2_sq = mean_sq + tr1 + tr2 - 2.0 * cross
    # Rounding can push W2^2 of (near-)identical Gaussians slightly below 0: clip, as Eq. 1's
    # square root requires, instead of returning NaN.
    return np.sqrt(np.clip(w2_sq, 0.0, None))


def gaussian_w2(x: Any, y: Any) -> float:
    """2-Wasserstein distance between the Gaussians fitted to ``x [n1, d]`` and ``y [n2, d]``.

    The square root of Eq. 1 (Yang et al., MICCAI 2023), with means and unbiased (ddof = 1)
    covariances estimated from the samples, clipped at 0 before the root. Symmetric; 0 for
    identical samples; a pure translation by ``t`` gives ``||t||``. Both need at least 2 samples.

    Args:
        x: ``[n1, d]`` samples (numpy array or torch tensor).
        y: ``[n2, d]`` samples with the same ``d``.

    Returns:
        W2 >= 0 as a float.
    """
    fx, fy = fit_gaussian(x, "x"), fit_gaussian(y, "y")
    if fx.dim != fy.dim:
        raise ValueError(f"x has {fx.dim} features but y has {fy.dim}; both must come from the same layer")
    return float(pairwise_w2_factors([fx, fy], n_threads=1)[0, 1])


def _worker_count(n_threads: int | None) -> int:
    if n_threads is not None:
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        return n_threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pairwise_w2_factors(factors: Sequence[GaussianFactor], n_threads: int | None = None) -> np.ndarray:
    """All pairwise W2 distances ``[N, N]`` between already fitted Gaussians (see ``pairwise_w2``)."""
    n_cases = len(factors)
    if n_cases == 0:
        return np.zeros((0, 0))
    stacked, means, traces, d = stack_factors(factors)
    r = stacked.shape[1]
    sq = np.sum(means**2, axis=1)
    mean_sq = np.clip(sq[:, None] + sq[None, :] - 2.0 * means @ means.T, 0.0, None)

    cross = np.zeros((n_cases, n_cases))
    workers = _worker_count(n_threads)
    flat = stacked.reshape(n_cases * r, d)
    # Pairs (i, j > i) in tasks of one row i and a block of columns, bounded in memory: each task
    # holds a [block * r, r] product and its [block, r, r] Gram matrices.
    block = max(1, int(_PAIR_BLOCK_BYTES // (workers * 8 * 3 * r * r)))
    tasks = [
        (i, start, min(n_cases, start + block)) for i in range(n_cases - 1) for start in range(i + 1, n_cases, block)
    ]
    tasks.sort(key=lambda t: t[1] - t[2])  # largest first, for balance across threads

    def run(task: tuple[int, ...]) -> None:
        i, start, stop = task
        # one GEMM for the whole block: rows [(j, a)] of B_j B_i^T, i.e. M_ij^T stacked over j
        mt = (flat[start * r : stop * r] @ stacked[i].T).reshape(stop - start, r, r)
        gram = np.matmul(mt, mt.transpose(0, 2, 1))
        eig = np.linalg.eigvalsh(gram)
        # Eigenvalues within rounding of 0 (rank deficit, zero padding) come back as +-eps*max;
        # their square roots (~1e-8 * sigma_max each) would only add noise: zero them.
        tol = eig[:, -1:] * (r * np.finfo(np.float64).eps)
        eig = np.where(eig > tol, eig, 0.0)
        cross[i, start:stop] = np.sqrt(eig).sum(axis=-1)

    # Thousands of small r x r eigenproblems: multithreaded BLAS/LAPACK on matrices this small
    # spends more time synchronising threads than computing (about 10x slower measured here), so
    # BLAS runs single-threaded and the tasks run in parallel threads instead (numpy releases the
    # GIL inside matmul and eigvalsh).
    with threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            for task in tasks:
                run(task)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(run, tasks))
    cross = cross + cross.T
    dist = _w2_from_parts(mean_sq, traces[:, None], traces[None, :], cross)
    np.fill_diagonal(dist, 0.0)
    return dist


def pairwise_w2(samples: Sequence[Any], names: Sequence[str] | None = None, n_threads: int | None = None) -> np.ndarray:
    """W2 (Eq. 1, square-rooted) between every pair of N sample sets, batched and exact.

    Each set ``samples[i] [n_i, d]`` is fitted once (O(n_i d min(n_i, d))); each pair then costs
    one ``[r_i, d] x [d, r_j]`` product and one r x r symmetric eigenvalue problem, with
    r <= min(n - 1, d). Memory is O(N r d) plus a bounded block of r x r products; no d x d matrix
    is formed per pair.

    Args:
        samples: N arrays ``[n_i, d]`` (n_i >= 2, the same d).
        names: optional labels of the sets, used in error messages.
        n_threads: worker threads over blocks of pairs (default: the CPUs this process may use).

    Returns:
        ``[N, N]`` symmetric float64 matrix with zero diagonal.
    """
    return pairwise_w2_factors(fit_gaussians(samples, names), n_threads)
