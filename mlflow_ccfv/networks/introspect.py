"""What a MONAI network instance says about itself: its first and last convolution channels, and the
:class:`~mlflow_ccfv.networks.specs.NetworkSpec` that rebuilds it (for converting a pickled
``mlflow.pytorch`` model into a declarative spec + state_dict)."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlflow_ccfv.networks.checkpoints import build_with_weights
from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE, NetworkSpec

__all__ = ["first_last_channels", "keeps_named_modules", "spec_of_module"]

_logger = logging.getLogger(__name__)

#: Constructor arguments MONAI stores under another attribute name.
_ATTRIBUTE_ALIASES = {"spatial_dims": ("dimensions",)}


def keeps_named_modules(module: Any) -> bool:
    """Whether ``module`` is an ``nn.Module`` with named children (a reloaded exported graph has none, so
    its decoder layers cannot be found)."""
    return isinstance(module, nn.Module) and any(True for _ in module.named_children())


def first_last_channels(module: nn.Module) -> tuple[int, int]:
    """``(in_channels, out_channels)`` of ``module``: those of its first and last (transposed) 2D/3D
    convolution; a :class:`ValueError` when it has none."""
    convs = [
        m for m in module.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d))
    ]
    if not convs:
        raise ValueError(
            f"Cannot infer in/out channels of {type(module).__name__} (no convolution); pass them explicitly."
        )
    return convs[0].in_channels, convs[-1].out_channels


def _json_value(value: Any) -> Any:
    return [_json_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def _constructor_kwargs(module: nn.Module) -> dict[str, Any] | None:
    """The non-default constructor arguments ``module`` keeps as attributes (JSON values), or None when a
    required one is missing or one is not JSON."""
    cls = type(module)
    kwargs: dict[str, Any] = {}
    for pname, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        attr = next((a for a in (pname, *_ATTRIBUTE_ALIASES.get(pname, ())) if hasattr(module, a)), None)
        if attr is None:
            if param.default is param.empty:
                return None
            continue
        value = _json_value(getattr(module, attr))
        if param.default is not param.empty and value == _json_value(param.default):
            continue
        try:
            json.dumps(value)
        except TypeError:
            return None
        kwargs[pname] = value
    return kwargs


def spec_of_module(module: nn.Module, patch_size: Sequence[int] = DEFAULT_PATCH_SIZE) -> NetworkSpec | None:
    """The :class:`NetworkSpec` of a MONAI network instance, read from the constructor arguments it keeps
    as attributes, or None when they cannot be recovered. Accepted only if the spec rebuilds a network
    that takes the module's weights strictly and gives the same output on a probe input
    (``[1, in_channels, *patch_size]``, seed 0)."""
    cls = type(module)
    if not cls.__module__.startswith("monai.networks.nets"):
        return None
    kwargs = _constructor_kwargs(module)
    if kwargs is None:
        return None
    try:
        spec = NetworkSpec(cls.__name__, kwargs)
        rebuilt = build_with_weights(spec, module.state_dict()).eval()
        first, _ = first_last_channels(module)
        probe = torch.randn((1, first, *patch_size), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = torch.allclose(module.eval()(probe), rebuilt(probe), atol=1e-5)
    except Exception as exc:  # any mismatch: not convertible
        _logger.debug("%s is not convertible: %s", cls.__name__, exc)
        return None
    return spec if same else None
