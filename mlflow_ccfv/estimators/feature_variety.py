"""Feature variety F_v (CC-FV, Eq. 3-4): how uniformly a model spreads the features of a case over
the unit hypersphere. Higher is better.

For the L features ``v_1..v_L`` sampled over one whole case and projected onto the unit sphere, the
hyperspherical energy with s = 1 is (Eq. 3)::

    E(v) = sum_{i != j} ||v_i - v_j||^{-1}

Lower energy means more dispersed features. We use the mean over the L(L - 1) ordered pairs instead
of the sum, so that cases (and layers) with different sample counts L are comparable; it differs
from Eq. 3 by the constant L(L - 1) only. Then (Eq. 4)::

    F_v = (1/N) sum_cases 1 / E(v)

Degenerate inputs, handled explicitly:

* Coincident points (``||v_i - v_j|| = 0`` on the sphere, e.g. collapsed features) would give an
  infinite energy. Distances are clamped from below at ``min_distance`` (default 1e-6; the largest
  possible distance is 2), so a collapsed case gets a very large but finite energy, i.e. a variety
  near 0; the number of clamped pairs is logged as a warning.
* An all-zero feature vector has no direction and cannot be projected onto the sphere: such rows are
  dropped with a logged warning. A case left with fewer than 2 rows raises a ValueError.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features

__all__ = ["DEFAULT_MIN_DISTANCE", "case_energies", "feature_variety", "hyperspherical_energy", "unit_sphere"]


logger = logging.getLogger(__name__)

DEFAULT_MIN_DISTANCE = 1e-6
_ROW_BLOCK_BYTES = 32 * 2**20


def unit_sphere(x: Any, name: str = "features") -> np.ndarray:
    """Rows of ``x [L, d]`` scaled to unit L2 norm; all-zero rows are dropped with a warning."""
    a = check_features(x, name)
    norms = np.linalg.norm(a, axis=1)
    zero = norms == 0
    if zero.any():
        logger.warning(
            "%s: %d of %d feature vectors are all zero and have no direction on the unit sphere; "
            "they are left out of the feature variety",
            name,
            int(zero.sum()),
            a.shape[0],
        )
        a, norms = a[~zero], norms[~zero]
    return a / norms[:, None]


def hyperspherical_energy(x: Any, min_distance: float = DEFAULT_MIN_DISTANCE, name: str = "features") -> float:
    """Mean over ordered pairs i != j of ``1 / ||v_i - v_j||`` for the rows of ``x [L, d]``
    projected onto the unit sphere (Eq. 3 with s = 1, divided by L(L - 1)).

    Invariant to rotations and to positive rescaling of the rows. See the module docstring for
    coincident points and zero rows.
    """
    if not min_distance > 0:
        raise ValueError(f"min_distance must be > 0, got {min_distance}")
    v = unit_sphere(x, name)
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"{name} has {n} usable feature vector(s); the hyperspherical energy needs at least 2")
    total = 0.0
    clamped = 0
    block = max(1, int(_ROW_BLOCK_BYTES // (8 * n)))
    for start in range(0, n, block):
        stop = min(n, start + block)
        gram = v[start:stop] @ v.T
        dist = np.sqrt(np.clip(2.0 - 2.0 * gram, 0.0, None))
        rows = np.arange(start, stop)
        dist[rows - start, rows] = np.inf  # the diagonal i == j is not a pair
        small = dist < min_distance
        clamped += int(small.sum())
        total += float(np.sum(1.0 / np.maximum(dist, min_distance)))
    if clamped:
        logger.warning(
            "%s: %d of %d ordered pairs of feature vectors coincide on the unit sphere (distance "
            "< %g); their distance is clamped to %g",
            name,
            clamped,
            n * (n - 1),
            min_distance,
            min_distance,
        )
    return total / (n * (n - 1))


def case_energies(cases: Sequence[Any], min_distance: float = DEFAULT_MIN_DISTANCE) -> np.ndarray:
    """Per-case hyperspherical energies ``[N]`` for ``cases[i] [L_i, d]`` (one d for all)."""
    if isinstance(cases, np.ndarray) and cases.ndim == 2:
        raise TypeError(
            "feature_variety takes a sequence of per-case arrays [L_i, d], not one array; "
            "wrap a single case as [features]"
        )
    if len(cases) == 0:
        raise ValueError("feature variety needs at least one case, got an empty sequence")
    dims: dict[int, str] = {}
    energies = []
    for i, x in enumerate(cases):
        name = f"cases[{i}]"
        a = check_features(x, name)
        dims.setdefault(a.shape[1], name)
        if len(dims) > 1:
            detail = " vs ".join(f"{nm}: d={dd}" for dd, nm in dims.items())
            raise ValueError(f"feature dimensions differ ({detail}); all cases must share one layer")
        energies.append(hyperspherical_energy(a, min_distance, name))
    return np.asarray(energies)


def feature_variety(cases: Sequence[Any], min_distance: float = DEFAULT_MIN_DISTANCE) -> float:
    """F_v of Eq. 4: the mean over cases of the inverse hyperspherical energy (s = 1).

    Args:
        cases: N >= 1 arrays ``[L_i, d]`` (numpy or torch), the features sampled over each whole
            case at one layer (L_i >= 2).
        min_distance: floor for distances between coincident points (see the module docstring).

    Returns:
        F_v > 0; higher means more dispersed (better) features.
    """
    return float(np.mean(1.0 / case_energies(cases, min_distance)))
