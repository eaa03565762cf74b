"""Step 1 of the sampler: which voxels of a case to read, planned before any network runs.

Per foreground class a number proportional to its voxel count (CC-FV, Sec. 2, class imbalance)
clipped to ``[floor, cap]``, fewer for layers near the bottleneck; the background as its own class
(for the baselines); and ``global_samples`` voxels drawn uniformly over the whole case (feature
variety, Eq. 3-4). Every draw comes from the case's own generator (:func:`case_generator`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mlflow_ccfv.features.sampler_config import SamplerConfig

__all__ = ["VoxelPlan", "case_generator", "class_budgets", "sample_voxels"]


@dataclass
class VoxelPlan:
    """The voxels to read from one case (rows aligned): see :class:`CaseSamples` for the fields."""

    coords: np.ndarray  # [M, 3] int64
    labels: np.ndarray  # [M] int64
    is_global: np.ndarray  # [M] bool
    rank: np.ndarray  # [M] int64
    budgets: list[dict[int, int]]  # per layer {class: m}


def case_generator(seed: int, case_id: str) -> np.random.Generator:
    """The case's own generator: a function of ``(seed, case_id)`` only."""
    key = int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), key]))


def class_budgets(
    counts: dict[int, int], config: SamplerConfig, n_layers: int
) -> tuple[dict[int, int], list[dict[int, int]]]:
    """``(planned, per_layer)`` sample counts per class from the class voxel counts ``counts``.

    ``planned[k]`` voxels of class ``k`` are drawn; layer ``l`` uses the first ``per_layer[l][k]``.
    """
    budgets = config.budgets_for(n_layers)
    top = max(budgets)
    fg = {k: n for k, n in counts.items() if k != 0 and n > 0}
    total = sum(fg.values())
    planned: dict[int, int] = {}
    for k, n in fg.items():
        share = round(top * len(fg) * n / total)
        planned[k] = int(min(n, min(config.cap, max(config.floor, share))))
    per_layer = [{k: int(min(p, max(config.floor, round(p * b / top)))) for k, p in planned.items()} for b in budgets]
    if config.include_background and counts.get(0, 0) > 0:
        planned[0] = int(min(counts[0], top))
        for layer_counts, b in zip(per_layer, budgets):
            layer_counts[0] = int(min(counts[0], b))
    return planned, per_layer


def _draw_class(flat: np.ndarray, k: int, n_k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` distinct flat indices of voxels with label ``k``, uniformly, in random order.

    A class covering a large part of the volume is drawn by rejection (uniform indices kept where
    the label is ``k``), so no index array the size of the volume is ever built.
    """
    n = flat.size
    if n_k * 32 < n or n_k < 4 * m:
        idx = np.flatnonzero(flat == k)
        return idx[rng.choice(idx.size, size=m, replace=False)]
    got = np.empty(0, dtype=np.int64)
    while got.size < m:
        cand = rng.integers(0, n, size=int((m - got.size) * n / n_k * 1.25) + 16)
        cand = np.concatenate([got, cand[flat[cand] == k]])
        _, first = np.unique(cand, return_index=True)
        got = cand[np.sort(first)]
    return got[:m]


def sample_voxels(label: np.ndarray, config: SamplerConfig, n_layers: int, case_id: str) -> VoxelPlan:
    """Plan the voxels to read from one case; ``label`` is ``[X, Y, Z]`` integer class ids.

    Classes in ascending order, then the ``global_samples`` uniform voxels; every draw comes from
    :func:`case_generator` ``(config.seed, case_id)``.
    """
    rng = case_generator(config.seed, case_id)
    flat = label.reshape(-1)
    counts = np.bincount(flat)
    present = {int(k): int(n) for k, n in enumerate(counts) if n > 0}
    if not any(k != 0 for k in present):
        raise ValueError(
            f"Case {case_id!r} has no foreground voxels (its label map is all 0): class consistency needs "
            "labelled voxels; drop the case or check that the right label file was loaded."
        )
    planned, per_layer = class_budgets(present, config, n_layers)
    parts, labels, ranks = [], [], []
    for k in sorted(planned):
        idx = _draw_class(flat, k, present[k], planned[k], rng)
        parts.append(idx)
        labels.append(np.full(idx.size, k, dtype=np.int64))
        ranks.append(np.arange(idx.size, dtype=np.int64))
    n_global = min(config.global_samples, flat.size)
    g = rng.choice(flat.size, size=n_global, replace=False).astype(np.int64)
    parts.append(g)
    labels.append(flat[g].astype(np.int64))
    ranks.append(np.arange(n_global, dtype=np.int64))
    idx = np.concatenate(parts)
    coords = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int64)
    is_global = np.zeros(idx.size, dtype=bool)
    is_global[idx.size - n_global :] = True
    return VoxelPlan(coords, np.concatenate(labels), is_global, np.concatenate(ranks), per_layer)
