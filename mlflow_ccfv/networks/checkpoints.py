"""Checkpoints read without executing code: ``torch.load(weights_only=True)`` and plain state_dicts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_ccfv.networks.specs import NetworkSpec, build_network, load_state_dict_strict

__all__ = ["build_with_weights", "load_checkpoint", "normalise_state_dict"]


def normalise_state_dict(state: Any) -> dict[str, torch.Tensor]:
    """Return the plain ``{name: tensor}`` weights of a checkpoint.

    Accepts a state_dict, one saved under a ``state_dict`` key (Lightning / MONAI bundles) and one
    whose keys carry the ``module.`` prefix of ``nn.DataParallel``.
    """
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            "The checkpoint is not a state_dict (a mapping of parameter names to tensors, optionally "
            "under a 'state_dict' key). Save it with torch.save(model.state_dict(), path)."
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely (``weights_only=True``) and return its plain state_dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"Cannot read checkpoint {path} safely with torch.load(weights_only=True): {exc}. "
            "Save only the weights: torch.save(model.state_dict(), path)."
        ) from exc
    return normalise_state_dict(state)


def build_with_weights(spec: NetworkSpec, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate ``spec`` and load ``state_dict`` strictly (mismatched keys raise ``ValueError``)."""
    module = build_network(spec)
    load_state_dict_strict(module, normalise_state_dict(state_dict))
    module.eval()
    return module
