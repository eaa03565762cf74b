"""What importing a trained network from another tool gives: a spec, its weights and where they came from.

:mod:`~mlflow_ccfv.networks.bundle` (MONAI bundles) and :mod:`~mlflow_ccfv.networks.nnunet`
(nnU-Net v2 trained models) both return an :class:`ImportedNetwork`, ready for
:func:`mlflow_ccfv.tracking.register.register_network`. Their checkpoints are read with
:func:`read_weights`: ``torch.load(weights_only=True)``, never a plain unpickling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mlflow_ccfv.networks.checkpoints import normalise_state_dict, refusal_reason
from mlflow_ccfv.networks.specs import NetworkSpec

__all__ = ["ImportedNetwork", "load_safely", "read_weights"]


class ImportedNetwork(NamedTuple):
    """``spec``: the network as data; ``state_dict``: its weights ``{name: tensor}``; ``info``: JSON-able
    facts about the source (``format``, ``source`` folder, ``patch_size`` in voxels or None, ...)."""

    spec: NetworkSpec
    state_dict: dict[str, torch.Tensor]
    info: dict[str, Any]


def load_safely(path: str | os.PathLike, *, safe_globals: Sequence[Any] = (), fix: str = "") -> Any:
    """The object in checkpoint ``path``, read with ``torch.load(weights_only=True)``.

    ``safe_globals`` widens the weights-only unpickler's allow-list for this one load (data-only
    types, see :func:`torch.serialization.safe_globals`); any other global (a class, a function
    such as ``os.system``) is still refused before anything runs. Errors name the file and ``fix``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError for non-checkpoints ...
        raise ValueError(
            f"Cannot read checkpoint {path} safely with torch.load(weights_only=True): {refusal_reason(exc)}."
            + (f" {fix}" if fix else "")
        ) from exc


def read_weights(
    path: str | os.PathLike,
    *,
    keys: Sequence[str] = ("state_dict", "model"),
    safe_globals: Sequence[Any] = (),
    fix: str = "Save only the weights: torch.save(model.state_dict(), path).",
) -> dict[str, torch.Tensor]:
    """The state_dict in checkpoint ``path`` (:func:`load_safely`).

    If the checkpoint is a dict holding one of ``keys`` (tried in order) whose value is a dict, that
    value is the state_dict (``{"model": ..., "optimizer": ...}`` checkpoints).
    """
    state = load_safely(path, safe_globals=safe_globals, fix=fix)
    if isinstance(state, dict):
        for key in keys:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        return normalise_state_dict(state)
    except ValueError as exc:
        found = ", ".join(map(str, list(state)[:10])) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"Checkpoint {path} holds no state_dict (found: {found}). {fix}") from exc
