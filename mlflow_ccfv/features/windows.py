"""Step 2 of the sampler, the geometry: MONAI's sliding-window grid, the window each planned voxel is
read from, and the trilinear read of a window's feature map at those voxels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["assign_windows", "read_points", "window_grid"]


def window_grid(
    shape: Sequence[int], roi: Sequence[int], overlap: float
) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """``(window starts, padding before)`` exactly as ``sliding_window_inference`` computes them.

    ``starts`` index the padded volume (padded symmetrically, the extra voxel after, up to ``roi``
    on any axis where the volume is smaller), in MONAI's window order.
    """
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    pad_before = tuple(max(r - s, 0) // 2 for s, r in zip(shape, roi))
    padded = tuple(max(s, r) for s, r in zip(shape, roi))
    interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
    slices = dense_patch_slices(padded, roi, interval)
    return [tuple(int(sl.start) for sl in w) for w in slices], pad_before


def assign_windows(points: np.ndarray, starts: Sequence[tuple[int, ...]], roi: Sequence[int]) -> np.ndarray:
    """``[M] int``: for each point ``[M, 3]`` (padded index space) the window where it is most central.

    Centrality on an axis is the distance to the nearer window face; the window grid is a product of
    per-axis starts, so maximising it per axis maximises the minimum over axes. Ties go to the
    earlier window. Every point lies inside its window.
    """
    starts_arr = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
    lookup = {tuple(s): i for i, s in enumerate(starts_arr.tolist())}
    chosen = np.empty_like(points)
    for d in range(3):
        axis = np.unique(starts_arr[:, d])
        p = points[:, d : d + 1]
        centrality = np.minimum(p - axis, axis + roi[d] - 1 - p)
        centrality = np.where(centrality >= 0, centrality, -1)
        best = np.argmax(centrality, axis=1)
        if (centrality[np.arange(len(p)), best] < 0).any():
            raise AssertionError("a planned voxel lies outside every window")  # cannot happen for MONAI's grid
        chosen[:, d] = axis[best]
    return np.array([lookup[tuple(s)] for s in chosen.tolist()], dtype=np.int64)


def read_points(fmap: torch.Tensor, window: torch.Tensor, local: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
    """``[n, C]``: each window's map upsampled trilinearly to ``roi``, read at the window's points.

    Args:
        fmap: ``[B, C, x, y, z]`` one layer's output for a batch of windows (any resolution).
        window: ``[n] int64`` which window of the batch each point belongs to.
        local: ``[n, 3] int64`` each point's index inside its window (``0 <= local < roi``).

    Equals ``F.interpolate(fmap, size=roi, mode="trilinear", align_corners=False)[window, :, i, j, k]``
    without building the upsampled maps: ``grid_sample`` (same ``align_corners``; border clamping as
    ``interpolate`` does at the edges) at the normalised positions ``(2 i + 1) / roi - 1``. A map
    already at the window size is indexed directly.
    """
    if tuple(fmap.shape[2:]) == tuple(roi):
        return fmap[window, :, local[:, 0], local[:, 1], local[:, 2]]
    n_windows = fmap.shape[0]
    per_window = torch.bincount(window, minlength=n_windows)
    slot = torch.arange(len(window), device=window.device) - (torch.cumsum(per_window, 0) - per_window)[window]
    size = torch.tensor(roi, dtype=torch.float64, device=local.device)
    norm = ((2 * local.to(torch.float64) + 1) / size - 1).to(fmap.dtype)
    grid = torch.zeros(n_windows, int(per_window.max()), 1, 1, 3, dtype=fmap.dtype, device=fmap.device)
    grid[window, slot, 0, 0] = norm.flip(-1)  # grid_sample's last axis is (z, y, x) -> (W, H, D)
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[window, :, slot, 0, 0]
