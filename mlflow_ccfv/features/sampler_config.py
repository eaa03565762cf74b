"""How voxels are planned and sliding windows run (:class:`SamplerConfig`); defaults follow the paper."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE

__all__ = ["SamplerConfig"]


@dataclass(frozen=True)
class SamplerConfig:
    """How voxels are planned and windows run. Defaults follow the paper where it gives a value.

    Attributes:
        roi_size: sliding-window size in voxels (32³ suits the project's CPU-sized networks).
        overlap: window overlap fraction, as in ``sliding_window_inference``.
        sw_batch_size: windows per forward pass.
        layer_budgets: reference per-class sample counts per layer, bottleneck -> output (the paper's
            100/200/400: fewer near the bottleneck). With D layers: D == len -> as given; D < len ->
            the last D entries (output side); D > len -> the first entry is halved once per extra
            layer towards the bottleneck (…, 25, 50, 100, 200, 400), never below ``floor``.
        floor: minimum samples of a present class per layer (a class smaller than this gives all its voxels).
        cap: maximum samples of one class at the largest-budget layer.
        global_samples: L, voxels drawn uniformly over each case for feature variety.
        include_background: also sample the background (label 0) as a class, for the baselines.
        seed: seed of every random draw; each case draws from its own generator derived from
            ``(seed, case_id)``, so a case's samples do not depend on the other cases or their order.
        skip_empty_windows: run only the windows that contain planned voxels (others contribute
            nothing); False runs every window, like ``sliding_window_inference``.

    Budgets: with ``B`` the largest layer budget, ``K`` the foreground classes present and ``n_k``
    their voxel counts, class ``k`` is planned ``p_k = min(n_k, clip(round(B·K·n_k / Σn), floor, cap))``
    voxels (an average class gets ``B``); a layer with budget ``b`` uses the first
    ``min(p_k, max(floor, round(p_k·b/B)))`` of them. The background gets ``min(n_0, b)``.
    """

    roi_size: tuple[int, ...] = DEFAULT_PATCH_SIZE
    overlap: float = 0.25
    sw_batch_size: int = 4
    layer_budgets: tuple[int, ...] = (100, 200, 400)
    floor: int = 10
    cap: int = 1600
    global_samples: int = 256
    include_background: bool = True
    seed: int = 0
    skip_empty_windows: bool = True

    def __post_init__(self) -> None:
        roi = tuple(int(r) for r in np.broadcast_to(np.asarray(self.roi_size), (3,)))
        object.__setattr__(self, "roi_size", roi)
        object.__setattr__(self, "layer_budgets", tuple(int(b) for b in self.layer_budgets))
        if any(r < 1 for r in roi):
            raise ValueError(f"roi_size must be three positive voxel counts; got {self.roi_size}.")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1); got {self.overlap}.")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be at least 1; got {self.sw_batch_size}.")
        if not self.layer_budgets or any(b < 1 for b in self.layer_budgets):
            raise ValueError(f"layer_budgets must be positive sample counts; got {self.layer_budgets}.")
        if self.floor < 1 or self.cap < self.floor:
            raise ValueError(f"Need 1 <= floor <= cap; got floor={self.floor}, cap={self.cap}.")
        if self.global_samples < 0:
            raise ValueError(f"global_samples must be >= 0; got {self.global_samples}.")

    def budgets_for(self, n_layers: int) -> tuple[int, ...]:
        """Per-layer reference budgets for ``n_layers`` layers, bottleneck -> output (rule in the class doc)."""
        given = self.layer_budgets
        if n_layers <= len(given):
            return given[len(given) - n_layers :]
        extra = [max(self.floor, given[0] >> j) for j in range(n_layers - len(given), 0, -1)]
        return tuple(extra) + given

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly parameters (MLflow params, cache keys)."""
        d = asdict(self)
        d["roi_size"] = list(self.roi_size)
        d["layer_budgets"] = list(self.layer_budgets)
        return d
