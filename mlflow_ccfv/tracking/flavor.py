"""The ``mlflow_ccfv`` model flavor: a MONAI network stored as data, never as pickled code.

An MLflow model directory written by :func:`save_model` holds::

    MLmodel            flavors: mlflow_ccfv (spec + weights + patch size) and python_function
                       (loader_module); the signature (:func:`model_signature`)
    network.json       the declarative NetworkSpec (MONAI class name + keyword arguments)
    state_dict.pt      the weights, a plain ``{name: tensor}`` dict (``torch.save``)
    requirements.txt / conda.yaml / python_env.yaml / wheels/   (:mod:`~mlflow_ccfv.tracking.environment`)

Loading (:func:`load_model`, or ``mlflow.pyfunc.load_model`` through :func:`_load_pyfunc`) builds the
network from ``network.json`` and reads the weights with ``torch.load(..., weights_only=True)`` into it
with :func:`~mlflow_ccfv.networks.specs.load_state_dict_strict`: no pickled object is ever
unpickled, and a checkpoint that does not fit the architecture is an error listing the keys.

The pyfunc face segments whole volumes of any size (:class:`CCFVPyfuncModel`): MONAI's
``sliding_window_inference`` with the model's patch size as the window, argmax over the classes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlflow_ccfv.networks import DEFAULT_PATCH_SIZE
from mlflow_ccfv.networks.checkpoints import build_with_weights, load_checkpoint, normalise_state_dict
from mlflow_ccfv.networks.devices import resolve_device
from mlflow_ccfv.networks.dynamic import DYNAMIC_ARCHITECTURES
from mlflow_ccfv.networks.specs import NetworkSpec
from mlflow_ccfv.options import parse_ints
from mlflow_ccfv.tracking.environment import CONDA_FILE, PYTHON_ENV_FILE, write_environment
from mlflow_ccfv.training import predict as sliding_window_labels

_logger = logging.getLogger(__name__)

FLAVOR_NAME = "mlflow_ccfv"
SPEC_FILE = "network.json"
WEIGHTS_FILE = "state_dict.pt"
#: Sliding-window ROI (voxels) of a network when neither its registration nor its spec (UNETR's
#: ``img_size``) gives one.
#: ``predict`` params (:class:`CCFVPyfuncModel`) and their defaults; ``device`` ``auto`` = CUDA if available.
PREDICT_PARAMS: dict[str, Any] = {"device": "auto", "overlap": 0.5, "sw_batch_size": 4}


def default_patch_size(spec: NetworkSpec) -> tuple[int, ...]:
    """The sliding-window ROI of ``spec`` when none is recorded: UNETR's ``img_size``, else 32³."""
    size = spec.kwargs.get("img_size", DEFAULT_PATCH_SIZE)
    return (int(size),) * 3 if isinstance(size, int) else tuple(int(p) for p in size)


def model_signature(spec: NetworkSpec):
    """The pyfunc signature: input a float32 volume ``[in_channels, X, Y, Z]`` (any X, Y, Z), output the
    int64 label map ``[X, Y, Z]``; params ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:<i>``),
    ``overlap`` and ``sw_batch_size`` of the sliding window (defaults: :data:`PREDICT_PARAMS`)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from mlflow.types.schema import ParamSchema, ParamSpec

    kinds = {str: "string", float: "double", int: "long"}
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (spec.in_channels, -1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype("int64"), (-1, -1, -1))]),
        # no default in the schema: an omitted param falls back to model_config, then PREDICT_PARAMS
        params=ParamSchema([ParamSpec(k, kinds[type(v)], None) for k, v in PREDICT_PARAMS.items()]),
    )


def _write_environment(path: str, spec: NetworkSpec) -> None:
    extra = ["dynamic-network-architectures"] if spec.architecture in DYNAMIC_ARCHITECTURES else []
    write_environment(path, extra)


def save_model(
    spec: NetworkSpec,
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    mlflow_model=None,
    metadata: dict[str, Any] | None = None,
    patch_size: Sequence[int] | None = None,
) -> None:
    """Write an MLflow model directory at ``path`` (which must not exist).

    ``patch_size``: the sliding-window ROI of ``predict`` (voxels; default :func:`default_patch_size`).
    The weights are checked against the architecture first, so nothing is written for a mismatch.
    """
    from mlflow import pyfunc
    from mlflow.models import Model

    state = normalise_state_dict(state_dict)
    build_with_weights(spec, state)  # validates: raises listing mismatched keys
    roi = parse_ints(default_patch_size(spec) if patch_size is None else patch_size, "patch_size", length=3, minimum=1)
    path = os.fspath(path)
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(f"Model directory {path} already exists and is not empty.")
    os.makedirs(path, exist_ok=True)
    if mlflow_model is None:
        mlflow_model = Model()
    if metadata:
        mlflow_model.metadata = {**(mlflow_model.metadata or {}), **metadata}
    mlflow_model.signature = model_signature(spec)
    Path(path, SPEC_FILE).write_text(spec.to_json())
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(path, WEIGHTS_FILE))
    _write_environment(path, spec)
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        spec=SPEC_FILE,
        weights=WEIGHTS_FILE,
        architecture=spec.architecture,
        patch_size=list(roi),
        torch_version=str(torch.__version__),
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow_ccfv.tracking.flavor",
        data=".",
        model_config=dict(PREDICT_PARAMS),
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
    patch_size: Sequence[int] | None = None,
):
    """Log the network as a LoggedModel (``m-...``) of the active experiment; returns ``ModelInfo``.

    ``patch_size``: see :func:`save_model`. Validates the weights before anything is created in the
    tracking store.
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
        patch_size=patch_size,
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
    """The pyfunc face of a network: ``predict`` segments one whole volume of any size.

    ``predict(volume, params)``: ``volume`` float32 array ``[in_channels, X, Y, Z]`` (channel first, as
    MONAI loads it; any X, Y, Z, also ones the network's strides do not divide) -> int64 label map
    ``[X, Y, Z]``, the argmax of MONAI's ``sliding_window_inference`` (Gaussian-weighted windows of the
    model's ``patch_size``; a side smaller than the window is padded with the volume's minimum). ``params``:
    ``device`` (``auto`` = CUDA if available else CPU; or ``cpu``, ``cuda``, ``cuda:<i>``), ``overlap``
    and ``sw_batch_size``; ``model_config`` of ``mlflow.pyfunc.load_model`` sets their defaults.
    ``get_raw_model()`` returns the ``nn.Module`` (the evaluator uses it).
    """

    def __init__(
        self, spec: NetworkSpec, module: nn.Module, patch_size: Sequence[int], config: dict[str, Any] | None = None
    ):
        self.spec = spec
        self.module = module
        self.patch_size = tuple(int(p) for p in patch_size)
        self.config = {**PREDICT_PARAMS, **{k: v for k, v in (config or {}).items() if k in PREDICT_PARAMS}}

    def get_raw_model(self) -> nn.Module:
        return self.module

    def predict(self, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        chosen = {**self.config, **{k: v for k, v in (params or {}).items() if v is not None}}
        x = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
        if x.ndim != 4 or x.shape[0] != self.spec.in_channels:
            raise ValueError(
                f"Expected one volume of shape [{self.spec.in_channels}, X, Y, Z] (channel first); got "
                f"{tuple(x.shape)}. Add the channel axis with volume[None]; segment a batch one volume at a time."
            )
        overlap = float(chosen["overlap"])
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"predict param overlap must be in [0, 1); got {overlap}.")
        sw_batch_size = int(chosen["sw_batch_size"])
        if sw_batch_size < 1:
            raise ValueError(f"predict param sw_batch_size must be at least 1; got {sw_batch_size}.")
        device = resolve_device(str(chosen["device"]))
        labels = sliding_window_labels(  # under torch.no_grad; the module moves to ``device``
            self.module, x, self.patch_size, overlap=overlap, sw_batch_size=sw_batch_size, device=device
        )
        return labels.numpy().astype(np.int64, copy=False)


def _load_pyfunc(path: str, model_config: dict | None = None) -> CCFVPyfuncModel:
    """pyfunc loader (``loader_module: mlflow_ccfv.tracking.flavor``); ``path`` is the model dir.

    ``model_config``: defaults of the ``predict`` params (``device``, ``overlap``, ``sw_batch_size``).
    """
    from mlflow.models import Model

    spec, module = read_local_model(path)
    conf = Model.load(str(Path(path) / "MLmodel")).flavors[FLAVOR_NAME]
    patch = conf.get("patch_size") or default_patch_size(spec)
    return CCFVPyfuncModel(spec, module, patch, model_config)


__all__ = [
    "DEFAULT_PATCH_SIZE",
    "FLAVOR_NAME",
    "PREDICT_PARAMS",
    "CCFVPyfuncModel",
    "default_patch_size",
    "load_model",
    "log_model",
    "model_signature",
    "read_local_model",
    "save_model",
]
