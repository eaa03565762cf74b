"""Declarative MONAI network specifications.

A :class:`NetworkSpec` is a MONAI class name in :mod:`monai.networks.nets` plus its keyword
arguments. It is JSON-serialisable, so a model bank can store *what* a network is as plain text and
its weights as a ``state_dict`` loaded with ``torch.load(..., weights_only=True)``: reloading a model
never executes pickled code.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_ccfv.errors import OptionError

__all__ = [
    "DEFAULT_PATCH_SIZE",
    "INT_FIELDS",
    "SEQUENCE_FIELDS",
    "SPATIAL_DIMS",
    "SUPPORTED_ARCHITECTURES",
    "NetworkSpec",
    "build_network",
    "check_finite_weights",
    "check_patch_fits",
    "check_spec",
    "load_state_dict_strict",
    "random_state_dict",
    "small_spec",
    "spec_from_json_or_file",
]

_logger = logging.getLogger(__name__)

#: Architectures whose decoder stages :func:`mlflow_ccfv.networks.decoder_layers` understands.
SUPPORTED_ARCHITECTURES = ("UNet", "BasicUNet", "DynUNet", "UNETR", "SwinUNETR", "SegResNet", "SegResNetDS")


#: The patch (sliding-window ROI, voxels) of a network when neither its spec (UNETR's ``img_size``) nor
#: its registration says otherwise; the CPU-sized training patch of the study and the demo.
DEFAULT_PATCH_SIZE: tuple[int, int, int] = (32, 32, 32)


@dataclass(frozen=True)
class NetworkSpec:
    """A network as data: ``architecture`` (class name in ``monai.networks.nets``, or an nnU-Net
    ``dynamic_network_architectures`` U-Net, see :mod:`mlflow_ccfv.networks.dynamic`) and ``kwargs``."""

    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"architecture": self.architecture, "kwargs": self.kwargs}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        shown = text if len(text) <= 300 else text[:300] + f"... ({len(text)} characters)"
        try:
            data = json.loads(text)
            spec = cls(architecture=data["architecture"], kwargs=dict(data.get("kwargs", {})))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise OptionError(
                f"Not a network specification: {shown!r}. Expected JSON like "
                '{"architecture": "UNet", "kwargs": {"spatial_dims": 3, ...}}.'
            ) from exc
        check_spec(spec)
        return spec

    @property
    def in_channels(self) -> int:
        return int(self.kwargs["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.kwargs["out_channels"])

    def build(self) -> nn.Module:
        """Instantiate the network (randomly initialised)."""
        return build_network(self)


#: Integer fields of the supported networks and their allowed range (inclusive). Bounds are far above
#: any published 3D segmentation network, far below what would exhaust memory while building it.
INT_FIELDS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 1024),
    "out_channels": (1, 1024),
    "input_channels": (1, 1024),
    "num_classes": (1, 1024),
    "feature_size": (1, 4096),
    "init_filters": (1, 4096),
    "hidden_size": (1, 16384),
    "mlp_dim": (1, 65536),
    "num_res_units": (0, 64),
    "n_stages": (1, 16),
}
#: Sequence fields (of integers, or of integer sequences such as nnU-Net's kernel sizes) and their range.
SEQUENCE_FIELDS: dict[str, tuple[int, int]] = {
    "channels": (1, 4096),
    "features": (1, 4096),
    "filters": (1, 4096),
    "features_per_stage": (1, 4096),
    "strides": (1, 64),
    "kernel_size": (1, 64),
    "kernel_sizes": (1, 64),
    "upsample_kernel_size": (1, 64),
    "img_size": (1, 4096),
    "num_heads": (1, 256),
    "blocks_down": (0, 64),
    "blocks_up": (0, 64),
    "depths": (0, 64),
    "n_conv_per_stage": (1, 64),
    "n_conv_per_stage_decoder": (1, 64),
    "n_blocks_per_stage": (1, 64),
}
#: The project scores and trains 3D networks only.
SPATIAL_DIMS = 3


def _flat_ints(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat_ints(v)]
    return [value]


def check_spec(spec: NetworkSpec) -> NetworkSpec:
    """Check ``spec``'s field types and ranges before anything is built; the
    :class:`~mlflow_ccfv.errors.OptionError` names the field (``kwargs.channels``) and the valid range.

    ``spatial_dims`` must be 3; channel counts, widths and sizes must be integers within
    :data:`INT_FIELDS` / :data:`SEQUENCE_FIELDS` (``channels: [10**9]`` would try to allocate
    terabytes, ``channels: "abc"`` would fail deep inside MONAI). Returns ``spec``.
    """
    if not isinstance(spec.architecture, str) or not spec.architecture:
        raise OptionError(f"architecture must be a class name such as 'UNet'; got {spec.architecture!r}.")
    if not isinstance(spec.kwargs, dict):
        raise OptionError(f"kwargs must be a JSON object of the network's arguments; got {type(spec.kwargs).__name__}.")
    where = f"{spec.architecture} specification"
    dims = spec.kwargs.get("spatial_dims", SPATIAL_DIMS)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims != SPATIAL_DIMS:
        raise OptionError(
            f"{where}: kwargs.spatial_dims must be {SPATIAL_DIMS} (3D volumes); got {dims!r}. "
            "2D networks are not supported."
        )
    for key, (low, high) in INT_FIELDS.items():
        if key in spec.kwargs:
            value = spec.kwargs[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise OptionError(f"{where}: kwargs.{key} must be an integer in [{low}, {high}]; got {value!r}.")
    for key, (low, high) in SEQUENCE_FIELDS.items():
        if key not in spec.kwargs:
            continue
        value = spec.kwargs[key]
        items = _flat_ints(value)
        if (
            not items
            or len(items) > 256
            or any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in items)
        ):
            shown = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
            raise OptionError(
                f"{where}: kwargs.{key} must be an integer or a list of integers in [{low}, {high}]; got {shown}."
            )
    return spec


def check_finite_weights(state: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or inf (:class:`~mlflow_ccfv.errors.OptionError` naming the tensors):
    such a network scores and fine-tunes to NaN, so it is refused when it is registered."""
    bad = [
        f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()})"
        for name, t in state.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} tensors in all)" if len(bad) > 5 else "")
        raise OptionError(
            f"The weights hold NaN or inf values in {shown}. Register a checkpoint saved before training diverged."
        )


def check_patch_fits(spec: NetworkSpec, patch_size: Sequence[int]) -> None:
    """Refuse ``spec`` when a ``patch_size`` input (voxels) cannot pass through it: a network deeper
    than the patch allows (eight stride-2 levels shrink a 32³ patch to one voxel, where instance
    norm fails), a UNETR whose ``img_size`` differs, a SwinUNETR patch not divisible by 32.

    The check is a forward pass on PyTorch's ``meta`` device: shapes only, no memory or arithmetic.
    An :class:`~mlflow_ccfv.errors.OptionError` names the spec, the patch and the fix; an operation
    the meta device does not implement skips the check.
    """
    patch = tuple(int(p) for p in patch_size)
    try:
        with torch.device("meta"):
            module = build_network(spec)
    except (RuntimeError, NotImplementedError):  # a constructor that reads tensor values (SwinUNETR)
        module = build_network(spec).to("meta")
    probe = torch.empty(1, spec.in_channels, *patch, device="meta")
    try:
        with torch.no_grad():
            module.eval()(probe)
    except NotImplementedError as exc:
        _logger.debug("patch check of %s skipped: the meta device lacks an operation (%s)", spec.architecture, exc)
    except (ValueError, RuntimeError, TypeError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        shown = json.dumps(spec.kwargs, separators=(",", ":"))
        shown = shown if len(shown) <= 160 else shown[:160] + "..."
        raise OptionError(
            f"The {spec.architecture} specification {shown} cannot take a {'x'.join(map(str, patch))} patch "
            f"({reason[:200]}), so every score of it would fail. Register it with a --patch-size it takes (larger "
            "sides, each divisible by the network's total stride with more than one voxel left at the bottleneck; "
            "UNETR: its img_size) or with fewer levels (shorter channels/strides)."
        ) from None


def _network_class(architecture: str) -> type[nn.Module]:
    import monai.networks.nets as nets

    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}. Supported MONAI networks: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}; nnU-Net networks: PlainConvUNet, ResidualEncoderUNet."
        )
    return getattr(nets, architecture)


def build_network(spec: NetworkSpec) -> nn.Module:
    """Build ``spec`` as a MONAI module; unknown or missing arguments name the valid ones."""
    from mlflow_ccfv.networks.dynamic import DYNAMIC_ARCHITECTURES, build_dynamic_network

    check_spec(spec)
    if spec.architecture in DYNAMIC_ARCHITECTURES:
        return build_dynamic_network(spec.architecture, spec.kwargs)
    cls = _network_class(spec.architecture)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    unknown = sorted(set(spec.kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"{spec.architecture} has no argument(s) {', '.join(unknown)}. Valid arguments: {', '.join(valid)}."
        )
    missing = [
        p.name
        for p in params.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.name not in spec.kwargs
    ]
    if missing:
        raise ValueError(f"{spec.architecture} needs argument(s) {', '.join(missing)}.")
    return cls(**spec.kwargs)


def small_spec(
    architecture: str,
    in_channels: int,
    out_channels: int,
    patch_size: tuple[int, ...] = DEFAULT_PATCH_SIZE,
) -> NetworkSpec:
    """A CPU-sized configuration of ``architecture`` (for tests, demos and synthetic studies).

    ``patch_size`` is the sliding-window ROI in voxels; UNETR fixes its input size to it and
    SwinUNETR needs each side a multiple of 32 and at least 64 (its bottleneck is 1/32 of the
    input, and its instance norms need more than one voxel there).
    """
    from mlflow_ccfv.networks.dynamic import DYNAMIC_ARCHITECTURES, small_dynamic_kwargs

    if architecture in DYNAMIC_ARCHITECTURES:
        return NetworkSpec(
            architecture,
            {**small_dynamic_kwargs(architecture), "in_channels": in_channels, "out_channels": out_channels},
        )
    _network_class(architecture)
    if architecture == "SwinUNETR" and any(s < 64 or s % 32 for s in patch_size):
        raise ValueError(
            f"SwinUNETR needs a patch size whose sides are multiples of 32 and at least 64; got {tuple(patch_size)}."
        )
    common = {"in_channels": in_channels, "out_channels": out_channels}
    if architecture == "UNet":
        kwargs = {"spatial_dims": 3, "channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1}
    elif architecture == "BasicUNet":
        kwargs = {"spatial_dims": 3, "features": (8, 8, 16, 32, 64, 8)}
    elif architecture == "DynUNet":
        kwargs = {
            "spatial_dims": 3,
            "kernel_size": (3, 3, 3, 3),
            "strides": (1, 2, 2, 2),
            "upsample_kernel_size": (2, 2, 2),
            "filters": (8, 16, 32, 64),
        }
    elif architecture == "UNETR":
        kwargs = {
            "img_size": tuple(patch_size),
            "feature_size": 8,
            "hidden_size": 96,
            "mlp_dim": 192,
            "num_heads": 4,
        }
    elif architecture == "SegResNet":
        kwargs = {"spatial_dims": 3, "init_filters": 8, "blocks_down": (1, 1, 1, 1), "blocks_up": (1, 1, 1)}
    elif architecture == "SegResNetDS":
        kwargs = {"spatial_dims": 3, "init_filters": 8, "blocks_down": (1, 1, 1, 1), "norm": "instance"}
    else:  # SwinUNETR
        kwargs = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (3, 3, 6, 6), "spatial_dims": 3}
    return NetworkSpec(architecture, {**kwargs, **common})


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], *, skip_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error that lists them.

    Accepts checkpoints saved as ``{"state_dict": ...}`` and ones with a ``module.`` (DataParallel)
    prefix. Keys starting with one of ``skip_prefixes`` are left as initialised in ``model`` (used to
    re-create the last convolution when fine-tuning).
    """
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    skipped = lambda k: any(k.startswith(p) for p in skip_prefixes)  # noqa: E731
    missing = [k for k in own if k not in state and not skipped(k)]
    unexpected = [k for k in state if k not in own and not skipped(k)]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in state and not skipped(k) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(
            f"Checkpoint does not match {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check the architecture specification (class and arguments) the checkpoint was trained with."
        )
    model.load_state_dict({k: v for k, v in state.items() if not skipped(k)}, strict=False)


def random_state_dict(spec: NetworkSpec, seed: int) -> dict[str, torch.Tensor]:
    """The weights of ``spec`` randomly initialised under ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(spec).state_dict()


def spec_from_json_or_file(text: str) -> NetworkSpec:
    """A NetworkSpec from JSON text or the path of a JSON file (used by ``register``)."""
    candidate = Path(text)
    if not text.lstrip().startswith("{") and candidate.suffix == ".json":
        if not candidate.is_file():
            raise FileNotFoundError(f"Network specification file {candidate} does not exist.")
        text = candidate.read_text()
    return NetworkSpec.from_json(text)
