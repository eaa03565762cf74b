"""Class consistency C_cons (CC-FV, Eq. 2): how alike the feature distributions of one class are
across the target cases. Lower is better (the CC-FV score divides by it).

    C_cons = 1 / (N (N - 1)) * sum_k sum_{i != j} W2(F_i^k, F_j^k)                      (Eq. 2)

``F_i^k`` is the Gaussian fitted to the features sampled at class-k voxels of case i. Eq. 2 assumes
every case contains every class; here, for each class, the distance is averaged over the ordered
pairs of cases that *both* contain it (which equals Eq. 2 when all cases contain all classes), and
the per-class averages are summed. A class found in fewer than two cases has no pair: it is skipped
with a logged warning. If no class has a pair, a ValueError is raised.

A class with a single sampled voxel in a case (a one-voxel structure: the feature sampler then gives
all of its voxels) has no covariance; that case is treated as not containing the class, with a
logged warning. An empty array, NaN/inf or mismatched feature dimensions raise a ValueError.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_features
from mlflow_ccfv.estimators.gaussian_divergences import (
    DEFAULT_REGULARIZATION,
    pairwise_bhattacharyya_factors,
    pairwise_kl_factors,
)
from mlflow_ccfv.estimators.wasserstein import fit_gaussian, pairwise_w2_factors

__all__ = ["DISTANCES", "class_consistency", "per_class_consistency"]


logger = logging.getLogger(__name__)

DISTANCES = ("wasserstein", "kl", "bhattacharyya")


def _check_cases(cases: Sequence[Mapping[Hashable, Any]]) -> None:
    if isinstance(cases, Mapping) or not isinstance(cases, Sequence):
        raise TypeError(
            "cases must be a sequence (one entry per target case) of mappings class id -> features [n_k, d]"
        )
    if len(cases) < 2:
        raise ValueError(f"class consistency compares cases pairwise and needs at least 2 cases, got {len(cases)}")
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise TypeError(
                f"cases[{i}] is a {type(case).__name__}; each case must be a mapping class id -> features [n_k, d]"
            )


def per_class_consistency(
    cases: Sequence[Mapping[Hashable, Any]],
    distance: str = "wasserstein",
    regularization: float = DEFAULT_REGULARIZATION,
) -> dict[Hashable, float]:
    """Mean distance over ordered pairs of cases containing each class (the summands of Eq. 2).

    Args:
        cases: N >= 2 mappings ``class id -> features [n_k, d]`` (foreground classes; n_k >= 2;
            one d for every class and case of a layer). Numpy arrays or torch tensors.
        distance: ``"wasserstein"`` (Eq. 1, square-rooted; the paper's choice), ``"kl"`` (KL
            divergence, averaged over both orders, i.e. the symmetrised KL) or ``"bhattacharyya"``.
            The last two use regularised covariances (see ``gaussian_divergences``).
        regularization: the relative ridge for ``"kl"`` and ``"bhattacharyya"``.

    Returns:
        ``{class id: mean pairwise distance}`` for every class present in at least two cases,
        in sorted class order where the ids are sortable.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    _check_cases(cases)
    classes: list[Hashable] = []
    for case in cases:
        for k in case:
            if k not in classes:
                classes.append(k)
    with contextlib.suppress(TypeError):  # mixed key types keep their first-seen order
        classes = sorted(classes)  # type: ignore[type-var]
    if not classes:
        raise ValueError("no case holds any class features; sample foreground voxels first")

    dims: dict[int, tuple[str, int]] = {}
    result: dict[Hashable, float] = {}
    for k in classes:
        holders = []
        factors = []
        for i, case in enumerate(cases):
            if k not in case:
                continue
            name = f"cases[{i}][{k!r}]"
            x = check_features(case[k], name)
            if x.shape[0] < 2:
                logger.warning(
                    "%s has a single sample, too few for a covariance: case %d is treated as not containing class %r",
                    name,
                    i,
                    k,
                )
                continue
            holders.append(i)
            f = fit_gaussian(x, name)
            dims.setdefault(f.dim, (name, f.dim))
            if len(dims) > 1:
                detail = " vs ".join(f"{nm}: d={dd}" for nm, dd in dims.values())
                raise ValueError(
                    f"feature dimensions differ ({detail}); all classes and cases of one layer "
                    f"must have the same number of channels"
                )
            factors.append(f)
        if len(holders) < 2:
            logger.warning(
                "class %r is present in %d case(s); it needs two to form a pair and is skipped "
                "in the class consistency",
                k,
                len(holders),
            )
            continue
        if distance == "wasserstein":
            dist = pairwise_w2_factors(factors)
        elif distance == "kl":
            dist = pairwise_kl_factors(factors, regularization)
        else:
            dist = pairwise_bhattacharyya_factors(factors, regularization)
        m = len(factors)
        value = float(dist.sum() / (m * (m - 1)))  # diagonal is zero: the mean over i != j
        if not np.isfinite(value):
            raise FloatingPointError(
                f"the {distance} class consistency of class {k!r} is not finite; the features "
                f"are too degenerate for this distance (try distance='wasserstein')"
            )
        result[k] = value
    if not result:
        raise ValueError(
            "no class is present in at least two cases, so class consistency (Eq. 2) has no pair "
            "to compare; check the labels or sample more cases"
        )
    return result


def class_consistency(
    cases: Sequence[Mapping[Hashable, Any]],
    distance: str = "wasserstein",
    regularization: float = DEFAULT_REGULARIZATION,
) -> float:
    """C_cons of Eq. 2: the sum over classes of the mean pairwise distance between cases.

    ``cases`` is a sequence over the N target cases of mappings ``class id -> features [n_k, d]``
    (foreground classes only). See ``per_class_consistency`` for the arguments and for how a
    class missing from some cases is handled. Lower means more consistent (better).
    """
    return float(sum(per_class_consistency(cases, distance, regularization).values()))
