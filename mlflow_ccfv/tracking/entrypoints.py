"""What the ``register`` and ``score`` commands do with their (string) parameters.

MLproject parameters arrive as strings (``-P random_init=true``); these functions turn them into
calls of the registry / scoring API so that :mod:`mlflow_ccfv.cli` holds no logic.
"""

from __future__ import annotations

import logging

import torch

from mlflow_ccfv.features.networks import NetworkSpec, build_network, small_spec as _small_spec
from mlflow_ccfv.tracking.flavor import load_checkpoint, spec_from_json_or_file
from mlflow_ccfv.tracking.registry import register_logged_model, register_network

_logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(value, name: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no) as MLproject passes them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false; got {value!r}.")


def parse_small_spec(text: str) -> NetworkSpec:
    """``ARCHITECTURE:IN:OUT`` -> :func:`~mlflow_ccfv.features.networks.small_spec`."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"--small-spec must look like UNet:1:3 (architecture:in_channels:out_channels); got {text!r}.")
    return _small_spec(parts[0], int(parts[1]), int(parts[2]))


def random_state_dict(spec: NetworkSpec, seed: int) -> dict[str, torch.Tensor]:
    """The weights of ``spec`` randomly initialised under ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(spec).state_dict()


def register_from_options(
    *,
    name: str,
    source_dataset: str,
    spec: str = "",
    small_spec: str = "",
    checkpoint: str = "",
    random_init="false",
    seed: int = 0,
    logged_model: str = "",
    bank: str = "default",
    patch_size=None,
    description: str | None = None,
    extra_tags: dict | None = None,
):
    """One ``register`` invocation: exactly one of (spec|small_spec)+(checkpoint|random_init) or logged_model."""
    random_init = parse_bool(random_init, "random_init")
    if logged_model:
        if spec or small_spec or checkpoint or random_init:
            raise ValueError("Pass either --logged-model or a network (--spec/--small-spec with --checkpoint/--random-init), not both.")
        return register_logged_model(
            logged_model, name, source_dataset, bank=bank, extra_tags=extra_tags,
            description=description, patch_size=patch_size,
        )
    if bool(spec) == bool(small_spec):
        raise ValueError("Pass exactly one of --spec (JSON or .json file) and --small-spec (e.g. UNet:1:3), or --logged-model.")
    net = spec_from_json_or_file(spec) if spec else parse_small_spec(small_spec)
    if bool(checkpoint) == random_init:
        raise ValueError("Pass exactly one of --checkpoint PATH and --random-init true.")
    tags = dict(extra_tags or {})
    if random_init:
        state = random_state_dict(net, seed)
        tags.setdefault("init", f"random(seed={seed})")
    else:
        state = load_checkpoint(checkpoint)
    return register_network(
        net, state, name, source_dataset, bank=bank, extra_tags=tags,
        description=description, patch_size=patch_size,
    )
