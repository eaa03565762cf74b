"""Sliding-window voxel sampling of decoder features (CC-FV, Sec. 2: "we do not concatenate the
output of each patch into the final prediction result, but directly sample from the patched output").

Two steps per case:

1. :func:`sample_voxels` plans which voxels to read, before any network runs: per foreground class
   a number proportional to its voxel count (Sec. 2, class imbalance) clipped to ``[floor, cap]``,
   fewer for layers near the bottleneck; the background as its own class (for the baselines); and
   ``global_samples`` voxels drawn uniformly over the whole case (feature variety, Eq. 3-4).
2. :func:`sample_features` runs MONAI's sliding windows (same padding and window grid as
   :func:`monai.inferers.sliding_window_inference`) with forward hooks that capture the chosen
   modules' *outputs* for every window, and reads each planned voxel once, from the window in which
   it is most central. A decoder map of any resolution is read by trilinear interpolation at the
   voxel's position in the window: exactly ``F.interpolate(map, size=roi, mode="trilinear",
   align_corners=False)[..., i, j, k]``, computed with ``F.grid_sample`` at the needed points only, so
   neither the upsampled map nor any full-volume map is ever built.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlflow_ccfv.features.feature_set import CaseSamples, FeatureSet
from mlflow_ccfv.features.resources import check_memory, inference_bytes
from mlflow_ccfv.networks.devices import autocast_inference, resolve_device
from mlflow_ccfv.networks.layers import resolve_layers
from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE

__all__ = [
    "SamplerConfig",
    "VoxelPlan",
    "assign_windows",
    "case_generator",
    "class_budgets",
    "read_points",
    "sample_features",
    "sample_voxels",
    "window_grid",
]


logger = logging.getLogger(__name__)


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


# -- step 1: the voxel plan ----------------------------------------------------------------------
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


# -- step 2: windows -------------------------------------------------------------------------------
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


class _OutputHooks:
    """Forward hooks that keep each named module's latest output; active until :meth:`remove`."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            self.outputs[name] = output

        return hook

    def reset(self) -> None:
        self.outputs.clear()
        self.calls.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _as_tensor(x: Any) -> torch.Tensor:
    if hasattr(x, "as_tensor"):  # monai MetaTensor: drop the metadata
        x = x.as_tensor()
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


def _check_case(case: Any) -> tuple[str, torch.Tensor, np.ndarray]:
    case_id = str(getattr(case, "case_id", None) or "")
    if not case_id or not hasattr(case, "image") or not hasattr(case, "label"):
        raise TypeError(
            f"Each case needs .case_id, .image [C, X, Y, Z] and .label [X, Y, Z]; got {type(case).__name__}."
        )
    image = _as_tensor(case.image)
    if image.ndim != 4:
        raise ValueError(
            f"Case {case_id!r}: image must be channel-first [C, X, Y, Z]; got shape {tuple(image.shape)}. "
            "Add a channel axis for single-channel images."
        )
    if not image.is_floating_point():
        image = image.float()
    label_t = _as_tensor(case.label)
    if label_t.ndim == 4 and label_t.shape[0] == 1:
        label_t = label_t[0]
    if tuple(label_t.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"Case {case_id!r}: image spatial shape {tuple(image.shape[1:])} and label shape "
            f"{tuple(label_t.shape)} differ; resample both onto the same grid."
        )
    label = label_t.cpu().numpy()
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise ValueError(f"Case {case_id!r}: label map holds non-integer values; expected class ids 0, 1, ...")
        label = label.astype(np.int64)
    if label.size and label.min() < 0:
        raise ValueError(f"Case {case_id!r}: label map holds negative values ({label.min()}); expected class ids >= 0.")
    return case_id, image, label


def _network_output(out: Any) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"The network returned {type(out).__name__}; expected a logits tensor [B, C, X, Y, Z].")
    return out


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[n, C_s]`` class probabilities from logits ``[n, C]`` (softmax; one channel -> [1 - σ, σ])."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _iter_cases(cases: Any) -> Iterable[Any]:
    if hasattr(cases, "iter_cases") and callable(cases.iter_cases):
        return cases.iter_cases()
    return cases


def _sample_case(
    model: nn.Module,
    hooks: _OutputHooks,
    layer_names: list[str],
    case_id: str,
    image: torch.Tensor,
    label: np.ndarray,
    config: SamplerConfig,
    device: torch.device,
    dtype: torch.dtype,
    amp: bool = False,
) -> CaseSamples:
    roi = config.roi_size
    plan = sample_voxels(label, config, len(layer_names), case_id)
    starts, pad_before = window_grid(label.shape, roi, config.overlap)
    if any(s < r for s, r in zip(label.shape, roi)):  # pad as sliding_window_inference does
        pad = []
        for s, r in reversed(list(zip(label.shape, roi))):
            diff = max(r - s, 0)
            pad += [diff // 2, diff - diff // 2]
        image = F.pad(image, pad, mode="constant", value=0.0)
    points = plan.coords + np.asarray(pad_before, dtype=np.int64)
    window_of = assign_windows(points, starts, roi)
    visit = list(range(len(starts))) if not config.skip_empty_windows else np.unique(window_of).tolist()
    order = np.argsort(window_of, kind="stable")
    bounds = np.searchsorted(window_of[order], np.arange(len(starts) + 1))

    m = len(plan.labels)
    feats: dict[str, np.ndarray] = {}
    head_logits: np.ndarray | None = None
    starts_arr = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
    for b0 in range(0, len(visit), config.sw_batch_size):
        batch = visit[b0 : b0 + config.sw_batch_size]
        windows = [starts[w] for w in batch]
        crops = torch.stack([image[:, x : x + roi[0], y : y + roi[1], z : z + roi[2]] for x, y, z in windows]).to(
            device=device, dtype=dtype
        )
        hooks.reset()
        try:
            with autocast_inference(device, amp):
                logits = _network_output(model(crops))
        except RuntimeError as exc:
            raise RuntimeError(
                f"Case {case_id!r}: the network failed on a window batch of shape {tuple(crops.shape)}: {exc}"
            ) from exc
        for name in layer_names:
            n_calls = hooks.calls.get(name, 0)
            if n_calls != 1:
                raise RuntimeError(
                    f"Layer {name!r} ran {n_calls} times in one forward pass; choose a module that runs exactly once."
                )
            out = hooks.outputs[name]
            if not isinstance(out, torch.Tensor) or out.ndim != 5 or out.shape[0] != len(batch):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"Layer {name!r} outputs {shape}; sampling needs a spatial feature map [B, C, X, Y, Z]."
                )
        rows = np.concatenate([order[bounds[w] : bounds[w + 1]] for w in batch])
        if rows.size == 0:
            continue
        window = np.repeat(np.arange(len(batch)), [bounds[w + 1] - bounds[w] for w in batch])
        local = torch.as_tensor(points[rows] - starts_arr[np.asarray(batch)][window], device=device)
        window_t = torch.as_tensor(window, device=device)
        for name in layer_names:
            # .float(): a no-op in float32; under amp the read-back is done in float32
            vals = read_points(hooks.outputs[name].float(), window_t, local, roi).cpu().numpy()
            if name not in feats:
                feats[name] = np.empty((m, vals.shape[1]), dtype=np.float32)
            feats[name][rows] = vals
        head = read_points(logits.float(), window_t, local, roi).cpu().numpy()
        if head_logits is None:
            head_logits = np.empty((m, head.shape[1]), dtype=np.float32)
        head_logits[rows] = head
    hooks.reset()
    return CaseSamples(
        case_id=case_id,
        coords=plan.coords,
        labels=plan.labels,
        is_global=plan.is_global,
        rank=plan.rank,
        window_starts=starts_arr[window_of],
        padding=np.asarray(pad_before, dtype=np.int64),
        probs=_probabilities(torch.from_numpy(head_logits)).numpy(),
        features=feats,
        budgets={name: dict(plan.budgets[i]) for i, name in enumerate(layer_names)},
    )


def sample_features(
    model: nn.Module,
    cases: Iterable[Any],
    layers: Sequence[str] | None = None,
    config: SamplerConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    amp: bool = False,
) -> FeatureSet:
    """Sample ``model``'s features at planned voxels of every case through sliding windows.

    Args:
        model: a segmentation network mapping ``[B, C, *roi]`` to logits ``[B, C_s, *roi]``.
        cases: objects with ``.case_id``, ``.image`` ``[C, X, Y, Z]`` and ``.label`` ``[X, Y, Z]``
            (tensors or arrays; e.g. ``mlflow_ccfv.data.PreprocessedCase``), or a dataset with
            ``.iter_cases()``.
        layers: module names (``dict(model.named_modules())``) whose outputs are sampled; default
            :func:`decoder_layers` (bottleneck -> output).
        config: :class:`SamplerConfig` (default values when None).
        device: where the network runs (default: the device of its parameters); the model is moved
            there, windows are moved one batch at a time and the volume stays on the CPU.
        progress: show a tqdm bar over cases.
        amp: run the forward passes under ``torch.autocast`` (float16 on CUDA, bfloat16 on the CPU;
            see :mod:`mlflow_ccfv.networks.devices`); off by default: the features then do not depend
            on the device beyond floating-point rounding.

    Returns:
        a :class:`FeatureSet`. The model's train/eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    config = config or SamplerConfig()
    check_memory(  # before anything runs: a 100000³ window must be refused, not allocated
        inference_bytes(config.roi_size, config.sw_batch_size),
        "roi_size",
        config.roi_size,
        "lower the sliding-window ROI (a typical window is 32-128 voxels a side).",
    )
    modules = resolve_layers(model, layers)
    layer_names = list(modules)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32  # windows are cast to the weights' dtype
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    device = resolve_device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    hooks = _OutputHooks(modules)
    results: list[CaseSamples] = []
    seen: set[str] = set()
    try:
        with torch.inference_mode():
            for case in tqdm(
                _iter_cases(cases), desc="sampling features", unit="case", disable=None if progress else True
            ):
                case_id, image, label = _check_case(case)
                if case_id in seen:
                    raise ValueError(f"Case id {case_id!r} appears twice; case ids must be unique.")
                seen.add(case_id)
                results.append(
                    _sample_case(model, hooks, layer_names, case_id, image, label, config, device, dtype, amp)
                )
                logger.debug("sampled %d voxels from case %s", len(results[-1].labels), case_id)
    finally:
        hooks.remove()
        model.train(was_training)
    if not results:
        raise ValueError("No cases to sample: `cases` was empty.")
    return FeatureSet(layers=layer_names, cases=results, config=config.to_dict())
