"""Sliding-window voxel sampling of decoder features (CC-FV, Sec. 2: "we do not concatenate the
output of each patch into the final prediction result, but directly sample from the patched output").

Two steps per case:

1. :func:`~mlflow_ccfv.features.voxel_plan.sample_voxels` plans which voxels to read, before any network runs: per foreground class
   a number proportional to its voxel count (Sec. 2, class imbalance) clipped to ``[floor, cap]``,
   fewer for layers near the bottleneck; the background as its own class (for the baselines); and
   ``global_samples`` voxels drawn uniformly over the whole case (feature variety, Eq. 3-4).
2. :func:`sample_features` runs MONAI's sliding windows (same padding and window grid as
   :func:`monai.inferers.sliding_window_inference`) with forward hooks that capture the chosen
   modules' *outputs* for every window, and reads each planned voxel once, from the window in which
   it is most central. A decoder map of any resolution is read by trilinear interpolation at the
   voxel's position in the window: exactly ``F.interpolate(map, size=roi, mode="trilinear",
   align_corners=False)[..., i, j, k]``, computed with ``F.grid_sample`` at the needed points only, so
   neither the upsampled map nor any full-volume map is ever built
   (:mod:`~mlflow_ccfv.features.windows`).

:class:`~mlflow_ccfv.features.sampler_config.SamplerConfig` holds the settings of both steps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlflow_ccfv.features.feature_set import CaseSamples, FeatureSet
from mlflow_ccfv.features.resources import check_memory, inference_bytes
from mlflow_ccfv.features.sampler_config import SamplerConfig
from mlflow_ccfv.features.voxel_plan import sample_voxels
from mlflow_ccfv.features.windows import assign_windows, read_points, window_grid
from mlflow_ccfv.networks.devices import autocast_inference, resolve_device
from mlflow_ccfv.networks.layers import resolve_layers

__all__ = ["sample_features"]

_logger = logging.getLogger(__name__)


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
                _logger.debug("sampled %d voxels from case %s", len(results[-1].labels), case_id)
    finally:
        hooks.remove()
        model.train(was_training)
    if not results:
        raise ValueError("No cases to sample: `cases` was empty.")
    return FeatureSet(layers=layer_names, cases=results, config=config.to_dict())
