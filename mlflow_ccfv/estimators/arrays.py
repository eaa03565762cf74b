"""Conversion and validation of the arrays every estimator takes.

Estimators accept numpy arrays or torch tensors (anything with ``.detach().cpu().numpy()``), and
compute in float64 numpy. torch is never imported here: a tensor is recognised by duck typing, so
this layer stays importable without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_features", "check_labels", "check_probabilities", "to_numpy"]


def to_numpy(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    """``x`` (ndarray, torch tensor, or nested sequence) as a numpy array of ``dtype``.

    Raises:
        TypeError: ``x`` is None or cannot be converted.
    """
    if x is None:
        raise TypeError(f"{name} is None; pass a numpy array or a torch tensor")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} cannot be converted to a {np.dtype(dtype)} array: {err}") from err


def check_features(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """Validate a feature matrix ``[n, d]`` and return it as float64.

    Raises:
        ValueError: not 2-D, empty, fewer than ``min_rows`` rows, or containing NaN/inf.
    """
    a = to_numpy(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_samples, n_features], got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)}); it needs samples and features")
    if a.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {a.shape[0]} sample(s) but at least {min_rows} are needed "
            f"(a covariance needs two); sample more voxels"
        )
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); check the network's outputs "
            f"(e.g. a diverged checkpoint) before scoring"
        )
    return a


def check_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """Validate integer class labels ``[n]`` aligned with ``n`` feature rows; return int64."""
    raw = to_numpy(labels, name, dtype=None)
    if raw.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n_samples], got shape {tuple(raw.shape)}")
    if raw.shape[0] != n:
        raise ValueError(f"{name} has {raw.shape[0]} entries but the features have {n} rows")
    if raw.size == 0:
        raise ValueError(f"{name} is empty")
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or not np.all(raw == np.round(raw)):
            raise ValueError(f"{name} must hold integer class ids, got non-integer values")
    elif raw.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class ids, got dtype {raw.dtype}")
    out = raw.astype(np.int64)
    if (out < 0).any():
        raise ValueError(f"{name} must be non-negative class ids, got {int(out.min())}")
    return out


def check_probabilities(probs: Any, n: int, name: str = "probs", atol: float = 1e-3) -> np.ndarray:
    """Validate source-head class probabilities ``[n, C_s]`` (rows on the simplex); return float64."""
    p = check_features(probs, name)
    if p.shape[0] != n:
        raise ValueError(f"{name} has {p.shape[0]} rows but the labels have {n} entries")
    if (p < -atol).any() or not np.allclose(p.sum(axis=1), 1.0, atol=atol):
        raise ValueError(
            f"{name} rows must be probabilities (non-negative, summing to 1); "
            f"apply a softmax to the source model's logits first"
        )
    return np.clip(p, 0.0, None)
