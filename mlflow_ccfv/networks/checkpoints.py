"""Checkpoints read without executing code: ``torch.load(weights_only=True)`` and plain state_dicts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlflow_ccfv.networks.specs import NetworkSpec, build_network, load_state_dict_strict

__all__ = ["build_with_weights", "load_checkpoint", "normalise_state_dict", "refusal_reason"]


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


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def refusal_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one short clause.

    torch's own message runs to several lines and advises re-running with ``weights_only=False``
    (which would run whatever the file holds); this keeps only what is wrong with the file: the
    Python object it would have to import, or that it is not a (complete) checkpoint.
    """
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return (
            f"it holds the Python object {found[1]}, which only a full unpickling (running the file's code) "
            "could rebuild; it is refused"
        )
    if "central directory" in text or "PytorchStreamReader" in text or "zip archive" in text:
        return "the file is truncated or corrupted (not a complete torch.save archive)"
    if isinstance(exc, EOFError) or not text.strip():
        return "the file is empty or truncated"
    if "WeightsUnpickler" in text or "Unsupported operand" in text or "invalid load key" in text:
        return "the file is not a PyTorch checkpoint (its bytes are not a pickle of tensors)"
    first = next((line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line), "")
    return (first[:200] + "...") if len(first) > 200 else (first or type(exc).__name__)


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely (``weights_only=True``) and return its plain state_dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"Cannot read checkpoint {path} safely with torch.load(weights_only=True): {refusal_reason(exc)}. "
            "Save only the weights: torch.save(model.state_dict(), path)."
        ) from exc
    return normalise_state_dict(state)


def build_with_weights(spec: NetworkSpec, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate ``spec`` and load ``state_dict`` strictly (mismatched keys raise ``ValueError``)."""
    module = build_network(spec)
    load_state_dict_strict(module, normalise_state_dict(state_dict))
    module.eval()
    return module
