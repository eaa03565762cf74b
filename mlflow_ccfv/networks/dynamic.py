"""nnU-Net's networks as data: ``dynamic_network_architectures`` classes built from an allow-list.

nnU-Net v2 builds its U-Nets with the ``dynamic-network-architectures`` package from a plans file
that names the class and its layer types as dotted paths (``"torch.nn.modules.conv.Conv3d"``) which
nnU-Net imports with ``pydoc.locate``. Here those names are only *looked up* in fixed tables, never
imported: a :class:`~mlflow_ccfv.networks.specs.NetworkSpec` whose ``architecture`` is in
:data:`DYNAMIC_ARCHITECTURES` is rebuilt by :func:`build_dynamic_network` from JSON-serialisable
keyword arguments, so a registered nnU-Net model reloads without running code from any file.

The spec names the channels as MONAI does (``in_channels``, ``out_channels``; the class's
``input_channels``, ``num_classes``) so that re-targeting a spec for fine-tuning works the same way
for both families. Deep supervision is always off: scoring reads one output.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

__all__ = [
    "CLASS_KWARGS",
    "DYNAMIC_ARCHITECTURES",
    "build_dynamic_network",
    "dynamic_architecture_of",
    "resolve_layer_class",
    "small_dynamic_kwargs",
]

#: ``dynamic_network_architectures.architectures.unet`` classes nnU-Net v2 plans use.
DYNAMIC_ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet")

#: Keyword arguments whose values are classes, given as (dotted) names in plans and specs.
CLASS_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin", "block")

# The layer types a plan may name: torch.nn classes by their public name, and the residual blocks.
_TORCH_LAYERS = {
    "conv_op": ("Conv1d", "Conv2d", "Conv3d"),
    "norm_op": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "dropout_op": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d"),
    "nonlin": ("LeakyReLU", "ReLU", "PReLU", "ELU", "GELU", "SiLU"),
}
_BLOCKS = ("BasicBlockD", "BottleneckD")


def _require_package():
    try:
        import dynamic_network_architectures.architectures.unet as unet
    except ImportError as exc:
        raise ImportError(
            "nnU-Net networks need the dynamic-network-architectures package: "
            'pip install "mlflow-ccfv[nnunet]" (or pip install dynamic-network-architectures).'
        ) from exc
    return unet


def resolve_layer_class(key: str, name: str) -> type[nn.Module]:
    """The class a plan's ``key`` (e.g. ``conv_op``) names, e.g. ``"torch.nn.modules.conv.Conv3d"``.

    Only the last component is looked up, in a fixed allow-list; the module part must be under
    ``torch.nn`` (layers) or ``dynamic_network_architectures`` (blocks). Nothing is imported from
    the name, so a plans file cannot make this load code.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{key} must name a class like 'torch.nn.Conv3d'; got {name!r}.")
    module, _, cls_name = name.rpartition(".")
    allowed: tuple[str, ...]
    if key == "block":
        if cls_name in _BLOCKS and (not module or module.startswith("dynamic_network_architectures.")):
            from dynamic_network_architectures.building_blocks import residual

            return getattr(residual, cls_name)
        allowed = _BLOCKS
    elif key in _TORCH_LAYERS:
        if cls_name in _TORCH_LAYERS[key] and (not module or module == "torch.nn" or module.startswith("torch.nn.")):
            return getattr(nn, cls_name)
        allowed = _TORCH_LAYERS[key]
    else:
        raise ValueError(f"{key} is not a class-valued argument; those are {', '.join(CLASS_KWARGS)}.")
    raise ValueError(
        f"{key}={name!r} is not an allowed layer type. Allowed: {', '.join(allowed)} "
        f"(from {'dynamic_network_architectures' if key == 'block' else 'torch.nn'})."
    )


def _architecture_class(architecture: str) -> type[nn.Module]:
    if architecture not in DYNAMIC_ARCHITECTURES:
        raise ValueError(
            f"Unknown nnU-Net architecture {architecture!r}. Supported: {', '.join(DYNAMIC_ARCHITECTURES)}."
        )
    return getattr(_require_package(), architecture)


def build_dynamic_network(architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``architecture`` (one of :data:`DYNAMIC_ARCHITECTURES`) from spec ``kwargs``.

    ``kwargs`` holds ``in_channels``, ``out_channels`` and the class's other arguments (as in a
    plans file's ``arch_kwargs``), with :data:`CLASS_KWARGS` given as names. Unknown or missing
    arguments and inconsistent stage counts are ``ValueError``s naming the argument.
    """
    cls = _architecture_class(architecture)
    args = dict(kwargs)
    if args.pop("deep_supervision", False):
        raise ValueError("deep_supervision must be off: scoring reads the network's single full-resolution output.")
    for ours, theirs in (("in_channels", "input_channels"), ("out_channels", "num_classes")):
        if ours not in args:
            raise ValueError(f"{architecture} needs argument {ours}.")
        args[theirs] = int(args.pop(ours))
    for key in CLASS_KWARGS:
        if args.get(key) is not None:
            args[key] = resolve_layer_class(key, args[key])
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "deep_supervision")]
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ValueError(
            f"{architecture} has no argument(s) {', '.join(unknown)}. Valid arguments: {', '.join(valid)}."
        )
    missing = [
        p.name
        for p in params.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.name not in args
    ]
    if missing:
        raise ValueError(f"{architecture} needs argument(s) {', '.join(missing)}.")
    try:
        return cls(**args, deep_supervision=False)
    except AssertionError as exc:  # the package checks stage counts with assert
        raise ValueError(f"Inconsistent {architecture} arguments: {exc}") from exc


def dynamic_architecture_of(model: nn.Module) -> str | None:
    """The :data:`DYNAMIC_ARCHITECTURES` name of ``model``'s class, or None (also without the package)."""
    try:
        import dynamic_network_architectures.architectures.unet as unet
    except ImportError:
        return None
    for name in DYNAMIC_ARCHITECTURES:
        if isinstance(model, getattr(unet, name)):
            return name
    return None


def small_dynamic_kwargs(architecture: str) -> dict[str, Any]:
    """A CPU-sized 3D configuration of ``architecture`` (4 stages, 8-64 features), without channels."""
    _architecture_class(architecture)
    common = {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 4,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage_decoder": [1, 1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if architecture == "PlainConvUNet":
        return {**common, "n_conv_per_stage": [1, 1, 1, 1]}
    return {**common, "n_blocks_per_stage": [1, 1, 1, 1]}
