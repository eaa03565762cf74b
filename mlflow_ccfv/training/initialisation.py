"""The network a model trains from: a seeded initialisation, or a pre-trained one re-targeted (paper, Sec. 3).

Fine-tuning loads every pre-trained parameter except the last convolution, which is re-created for
the target's classes; nothing is frozen. "The last convolution" is found structurally: the
parameters whose shapes depend on ``out_channels`` (for MONAI's residual ``UNet`` that is the whole
top up-sampling block, a transposed convolution plus a 1-unit convolution; for ``UNETR``,
``DynUNet`` and ``BasicUNet`` the final 1x1x1 convolution).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mlflow_ccfv.networks.specs import NetworkSpec, load_state_dict_strict

__all__ = [
    "head_parameter_names",
    "init_for_finetuning",
    "input_parameter_names",
    "seeded_network",
    "target_spec",
]

_logger = logging.getLogger(__name__)


def seeded_network(spec: NetworkSpec, seed: int) -> nn.Module:
    """Build ``spec`` with its random initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return spec.build()


def _shape_dependent_keys(spec: NetworkSpec, kwarg: str) -> list[str]:
    """State-dict keys whose shapes change with ``spec.kwargs[kwarg]`` (built on the meta device)."""
    base = int(spec.kwargs[kwarg])
    other = NetworkSpec(spec.architecture, {**spec.kwargs, kwarg: base + 3})
    with torch.device("meta"):
        a = spec.build().state_dict()
        b = other.build().state_dict()
    return [k for k in a if tuple(a[k].shape) != tuple(b[k].shape)]


def head_parameter_names(spec: NetworkSpec) -> list[str]:
    """Parameters of the last convolution: those whose shapes depend on ``out_channels``."""
    return _shape_dependent_keys(spec, "out_channels")


def input_parameter_names(spec: NetworkSpec) -> list[str]:
    """Parameters of the first convolution(s): those whose shapes depend on ``in_channels``."""
    return _shape_dependent_keys(spec, "in_channels")


def target_spec(spec: NetworkSpec, in_channels: int, num_classes: int) -> NetworkSpec:
    """``spec`` re-targeted to ``in_channels`` input channels and ``num_classes`` outputs."""
    return NetworkSpec(
        spec.architecture, {**spec.kwargs, "in_channels": int(in_channels), "out_channels": int(num_classes)}
    )


def init_for_finetuning(
    spec: NetworkSpec, state: dict[str, torch.Tensor] | None, in_channels: int, num_classes: int, seed: int = 0
) -> tuple[nn.Module, NetworkSpec, list[str]]:
    """The network to fine-tune: pre-trained weights except the last convolution (paper, Sec. 3).

    ``spec``/``state``: the bank model (``state=None`` gives the random-initialisation control).
    The last convolution is re-created for ``num_classes``; if the target has a different number of
    input channels than the source, the first convolution is re-created too (and logged), since its
    weights cannot be reused. Returns ``(model, target_spec, reinitialised parameter names)``.
    """
    new_spec = target_spec(spec, in_channels, num_classes)
    model = seeded_network(new_spec, seed)
    if state is None:
        return model, new_spec, sorted(model.state_dict())
    skip = head_parameter_names(spec)
    if int(in_channels) != spec.in_channels:
        first = input_parameter_names(spec)
        _logger.warning(
            "Source has %d input channel(s), target %d: re-creating the first convolution too (%s).",
            spec.in_channels,
            in_channels,
            ", ".join(first),
        )
        skip = skip + first
    load_state_dict_strict(model, state, skip_prefixes=tuple(skip))
    return model, new_spec, skip
