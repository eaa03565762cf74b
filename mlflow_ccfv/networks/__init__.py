"""Networks: declarative MONAI specifications, their decoder layers, and reading checkpoints safely.

- :mod:`~mlflow_ccfv.networks.specs`: :class:`NetworkSpec` (a MONAI class name + kwargs), ``build_network``;
- :mod:`~mlflow_ccfv.networks.layers`: which modules are the decoder stages (CC-FV's D layers, Eq. 5);
- :mod:`~mlflow_ccfv.networks.checkpoints`: state_dicts read with ``torch.load(weights_only=True)``;
- :mod:`~mlflow_ccfv.networks.devices`: which device a network runs on, mixed precision for inference.
"""

from mlflow_ccfv.networks.checkpoints import build_with_weights, load_checkpoint, normalise_state_dict
from mlflow_ccfv.networks.devices import autocast_inference, resolve_device
from mlflow_ccfv.networks.layers import decoder_layers, output_head, resolve_layers
from mlflow_ccfv.networks.specs import (
    DEFAULT_PATCH_SIZE,
    SUPPORTED_ARCHITECTURES,
    NetworkSpec,
    build_network,
    check_finite_weights,
    check_patch_fits,
    check_spec,
    load_state_dict_strict,
    random_state_dict,
    small_spec,
)

__all__ = [
    "DEFAULT_PATCH_SIZE",
    "SUPPORTED_ARCHITECTURES",
    "NetworkSpec",
    "autocast_inference",
    "build_network",
    "build_with_weights",
    "check_finite_weights",
    "check_patch_fits",
    "check_spec",
    "decoder_layers",
    "load_checkpoint",
    "load_state_dict_strict",
    "normalise_state_dict",
    "output_head",
    "random_state_dict",
    "resolve_device",
    "resolve_layers",
    "small_spec",
]
