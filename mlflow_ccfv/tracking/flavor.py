"""The ``mlflow_ccfv`` model flavor: a MONAI network stored as data, never as pickled code.

An MLflow model directory written by :func:`save_model` holds::

    MLmodel            flavors: mlflow_ccfv (spec + weights) and python_function (loader_module)
    network.json       the declarative NetworkSpec (MONAI class name + keyword arguments)
    state_dict.pt      the weights, a plain ``{name: tensor}`` dict (``torch.save``)
    requirements.txt / conda.yaml / python_env.yaml / wheels/   (:mod:`~mlflow_ccfv.tracking.environment`)

Loading (:func:`load_model`, or ``mlflow.pyfunc.load_model`` through :func:`_load_pyfunc`) builds the
network from ``network.json`` and reads the weights with ``torch.load(..., weights_only=True)`` into it
with :func:`~mlflow_ccfv.networks.specs.load_state_dict_strict`: no pickled object is ever
unpickled, and a checkpoint that does not fit the architecture is an error listing the keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlflow_ccfv.networks.checkpoints import build_with_weights, load_checkpoint, normalise_state_dict
from mlflow_ccfv.networks.dynamic import DYNAMIC_ARCHITECTURES
from mlflow_ccfv.networks.specs import NetworkSpec
from mlflow_ccfv.tracking.environment import CONDA_FILE, PYTHON_ENV_FILE, write_environment

_logger = logging.getLogger(__name__)

FLAVOR_NAME = "mlflow_ccfv"
SPEC_FILE = "network.json"
WEIGHTS_FILE = "state_dict.pt"


def _write_environment(path: str, spec: NetworkSpec) -> None:
    extra = ["dynamic-network-architectures"] if spec.architecture in DYNAMIC_ARCHITECTURES else []
    write_environment(path, extra)


def save_model(
    spec: NetworkSpec,
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    mlflow_model=None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write an MLflow model directory at ``path`` (which must not exist).

    The weights are checked against the architecture first, so nothing is written for a mismatch.
    """
    from mlflow import pyfunc
    from mlflow.models import Model

    state = normalise_state_dict(state_dict)
    build_with_weights(spec, state)  # validates: raises listing mismatched keys
    path = os.fspath(path)
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(f"Model directory {path} already exists and is not empty.")
    os.makedirs(path, exist_ok=True)
    if mlflow_model is None:
        mlflow_model = Model()
    if metadata:
        mlflow_model.metadata = {**(mlflow_model.metadata or {}), **metadata}
    Path(path, SPEC_FILE).write_text(spec.to_json())
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(path, WEIGHTS_FILE))
    _write_environment(path, spec)
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        spec=SPEC_FILE,
        weights=WEIGHTS_FILE,
        architecture=spec.architecture,
        torch_version=str(torch.__version__),
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_ccfv.tracking.flavor",
        data=".",
        conda_env=CONDA_FILE,
        python_env=PYTHON_ENV_FILE,
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


def log_model(
    spec: NetworkSpec,
    state_dict: dict[str, torch.Tensor],
    name: str = "model",
    *,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
):
    """Log the network as a LoggedModel (``m-...``) of the active experiment; returns ``ModelInfo``.

    Validates the weights before anything is created in the tracking store.
    """
    from mlflow.models import Model

    import mlflow_ccfv.tracking.flavor as flavor_module

    state = normalise_state_dict(state_dict)
    build_with_weights(spec, state)
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=flavor_module,
        spec=spec,
        state_dict=state,
        params=params,
        tags=tags,
        metadata=metadata,
        flavor_name=FLAVOR_NAME,
    )


def read_local_model(path: str | os.PathLike) -> tuple[NetworkSpec, nn.Module]:
    """Load a downloaded ``mlflow_ccfv`` model directory: ``(spec, module)`` in eval mode."""
    from mlflow.models import Model

    path = Path(path)
    conf = Model.load(str(path / "MLmodel")).flavors.get(FLAVOR_NAME)
    if conf is None:
        raise ValueError(f"{path} is not an {FLAVOR_NAME} model (no '{FLAVOR_NAME}' flavor in its MLmodel).")
    spec = NetworkSpec.from_json((path / conf["spec"]).read_text())
    state = load_checkpoint(path / conf["weights"])  # weights_only; a refusal is one line naming the file
    return spec, build_with_weights(spec, state)


def load_model(model_uri: str, dst_path: str | None = None) -> nn.Module:
    """Load an ``mlflow_ccfv`` model (any MLflow model URI) as the MONAI ``nn.Module``."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    return read_local_model(local)[1]


class CCFVPyfuncModel:
    """The pyfunc face of a network: ``predict`` maps images to per-voxel class probabilities.

    ``predict(images)``: ``images`` float array ``[B, C, X, Y, Z]`` (or ``[C, X, Y, Z]``) whose spatial
    sides the network accepts -> softmax probabilities ``[B, out_channels, X, Y, Z]`` float32.
    ``get_raw_model()`` returns the ``nn.Module`` (the evaluator uses it).
    """

    def __init__(self, spec: NetworkSpec, module: nn.Module):
        self.spec = spec
        self.module = module

    def get_raw_model(self) -> nn.Module:
        return self.module

    def predict(self, model_input, params: dict[str, Any] | None = None):
        x = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[1] != self.spec.in_channels:
            raise ValueError(f"Expected images of shape [B, {self.spec.in_channels}, X, Y, Z]; got {tuple(x.shape)}.")
        with torch.no_grad():
            return torch.softmax(self.module(x), dim=1).numpy()


def _load_pyfunc(path: str, model_config: dict | None = None) -> CCFVPyfuncModel:
    """pyfunc loader (``loader_module: mlflow_ccfv.tracking.flavor``); ``path`` is the model dir."""
    spec, module = read_local_model(path)
    return CCFVPyfuncModel(spec, module)


__all__ = [
    "FLAVOR_NAME",
    "CCFVPyfuncModel",
    "load_model",
    "log_model",
    "read_local_model",
    "save_model",
]
