"""Loading a model version for feature extraction, and the one policy on pickled models.

A version points at a LoggedModel (``m-...``) in the ``mlflow_ccfv`` flavor
(:mod:`mlflow_ccfv.tracking.flavor`: a declarative :class:`~mlflow_ccfv.networks.specs.NetworkSpec`
+ a state_dict, no pickled code), or at a model a user logged earlier with ``mlflow.pytorch`` (pickled:
loaded only with the opt-in of :func:`pickle_allowed`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from torch import nn

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.data.normalization import IntensityNormalization
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.networks import NetworkSpec, decoder_layers
from mlflow_ccfv.networks.introspect import keeps_named_modules
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME, read_local_model
from mlflow_ccfv.tracking.search import logged_model_id, model_id_in_uri, registered_version, version_uri

__all__ = [
    "ALLOW_PICKLE_ENV",
    "FLAVOR_TAG",
    "LoadedModel",
    "PickleRefusedError",
    "load_pytorch",
    "load_version",
    "pickle_allowed",
    "pickle_refusal",
    "resolve_logged_model_id",
    "version_normalization",
]

_logger = logging.getLogger(__name__)

FLAVOR_TAG = T.FLAVOR
#: ``1``/``true``/``yes``/``on``: load ``mlflow.pytorch`` (pickled) models without ``--allow-pickle``.
ALLOW_PICKLE_ENV = "MLFLOW_CCFV_ALLOW_PICKLE"


class PickleRefusedError(RegistryError):
    """An ``mlflow.pytorch`` (pickled) model was about to be loaded without the opt-in."""


def pickle_allowed(allow: bool | None = None) -> bool:
    """The one policy for loading pickled (``mlflow.pytorch``) models, which runs code saved by whoever
    logged them: ``allow=True`` (``--allow-pickle``) allows, ``False`` refuses, ``None`` reads the
    environment variable ``MLFLOW_CCFV_ALLOW_PICKLE`` (``1``, ``true``, ``yes``, ``on``)."""
    if allow is not None:
        return bool(allow)
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pickle_refusal(what: str) -> str:
    """The line that says why a pickled model was not loaded and how to opt in or convert it."""
    return (
        f"{what} is an mlflow.pytorch (pickled) model; loading it would run code saved by whoever logged it. "
        f"Pass --allow-pickle (or set {ALLOW_PICKLE_ENV}=1) if you trust it, or convert it once to the "
        "pickle-free mlflow_ccfv flavor: mlflow-ccfv register --logged-model <its models:/m-... URI> "
        "--name <name> --source-dataset <dataset> --allow-pickle."
    )


@dataclass
class LoadedModel:
    """A model version ready for feature extraction.

    ``module``: the network (eval mode) with its original named modules; ``spec``: its
    NetworkSpec (``None`` for ``mlflow.pytorch`` models); ``tags``: the version's tags;
    ``model_id``: its LoggedModel id; ``name``/``version``: registry coordinates when known.
    """

    module: nn.Module
    spec: NetworkSpec | None
    tags: dict[str, str]
    model_id: str | None
    uri: str
    name: str | None = None
    version: str | None = None
    flavor: str = FLAVOR_NAME
    feature_layers: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}" if self.name else self.uri

    @property
    def normalization(self) -> IntensityNormalization | None:
        """The version's own intensity normalisation (:func:`version_normalization`), or None."""
        return version_normalization(self.tags, self.label)


def version_normalization(tags: Mapping[str, str], label: str = "the version") -> IntensityNormalization | None:
    """The intensity normalisation an imported version recorded (tag ``import.normalization``), or None
    when it recorded none (its input is then normalised with the target's statistics)."""
    try:
        return IntensityNormalization.from_json(tags.get(T.IMPORT_NORMALIZATION))
    except ValueError as exc:
        raise RegistryError(
            f"{label}: tag {T.IMPORT_NORMALIZATION} cannot be applied ({exc}). Fix the tag, or delete it to "
            "normalise this model's input with the target's statistics."
        ) from exc


def resolve_logged_model_id(model_uri: str) -> str:
    """The LoggedModel id behind ``models:/m-<id>`` or ``runs:/<run_id>/<name>`` (the run's one logged
    model of that name); a :class:`~mlflow_ccfv.errors.RegistryError` when the store has none."""
    client = MlflowClient()
    model_id = model_id_in_uri(model_uri)
    if model_id is not None:
        try:
            client.get_logged_model(model_id)
        except MlflowException as exc:
            raise RegistryError(f"No logged model {model_id} in the tracking store ({model_uri}).") from exc
        return model_id
    if model_uri.startswith("runs:/"):
        run_id, _, artifact_path = model_uri[len("runs:/") :].partition("/")
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise RegistryError(f"No run {run_id} in the tracking store ({model_uri}).") from exc
        ids = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
        models = [m for m in (client.get_logged_model(i) for i in ids) if m.name == artifact_path.strip("/")]
        if len(models) != 1:
            raise RegistryError(
                f"Run {run_id} has {len(models)} logged models named {artifact_path!r}; "
                "pass the model as models:/m-<id> instead."
            )
        return models[0].model_id
    raise ValueError(f"Expected a logged model URI (models:/m-<id> or runs:/<run_id>/<name>); got {model_uri!r}.")


def load_pytorch(model_uri: str, allow_pickle: bool | None = None, what: str | None = None) -> nn.Module:
    """The ``nn.Module`` of an ``mlflow.pytorch`` model (eval mode), unpickled only when
    :func:`pickle_allowed`; else a :class:`PickleRefusedError` naming ``what`` (default: the URI)."""
    what = what or model_uri
    if not pickle_allowed(allow_pickle):
        raise PickleRefusedError(pickle_refusal(what))
    import mlflow.pytorch  # imported here: only for the pickled flavor

    _logger.warning("%s is an mlflow.pytorch model: unpickling it (opted in to pickle loading)", what)
    module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    if isinstance(module, torch.fx.GraphModule) or not keeps_named_modules(module):
        raise ValueError(
            f"{model_uri} reloads without its named modules (an exported 'pt2' graph?); log it with "
            "mlflow.pytorch.log_model(..., serialization_format='pickle') or register its state_dict "
            "with a NetworkSpec instead."
        )
    module.eval()
    return module


def _feature_layers(model_uri: str, module: nn.Module, tags: Mapping[str, str]) -> list[str]:
    """The version's feature layers (tag ``feature_layers``, else the network's decoder layers), each
    checked to be a module of the network."""
    layers = [l for l in tags.get(T.FEATURE_LAYERS, "").split(",") if l] or list(decoder_layers(module))
    named = dict(module.named_modules())
    wrong = [l for l in layers if l not in named]
    if wrong:
        raise ValueError(
            f"{model_uri}: feature layer(s) {', '.join(wrong)} (tag feature_layers) are not modules of "
            f"{type(module).__name__}; fix the tag (e.g. {','.join(decoder_layers(module))})."
        )
    return layers


def load_version(model_uri, *, allow_pickle: bool | None = None) -> LoadedModel:
    """Load a registered version (``models:/name/1``, ``models:/name@alias``, ``models:/m-...`` or a ModelVersion).

    ``mlflow_ccfv`` models load without unpickling (spec + ``weights_only`` state_dict);
    ``mlflow.pytorch`` models load the original ``nn.Module`` only when :func:`pickle_allowed`
    (``allow_pickle``, or ``MLFLOW_CCFV_ALLOW_PICKLE``); otherwise :class:`PickleRefusedError`, before
    anything is downloaded when the version's ``ccfv.flavor`` tag says so.
    """
    name = version = None
    tags: dict[str, str] = {}
    mv = registered_version(model_uri)
    if not isinstance(model_uri, str):
        model_uri = version_uri(mv)
    if mv is not None:
        name, version, tags = mv.name, mv.version, dict(mv.tags or {})
        model_id = logged_model_id(mv)
        if tags.get(FLAVOR_TAG) == "pytorch" and not pickle_allowed(allow_pickle):
            raise PickleRefusedError(pickle_refusal(version_uri(mv)))
    else:
        model_id = resolve_logged_model_id(model_uri)
        tags = dict(MlflowClient().get_logged_model(model_id).tags or {})
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}")
    flavors = Model.load(str(Path(local) / "MLmodel")).flavors
    if FLAVOR_NAME in flavors:
        spec, module = read_local_model(local)
        flavor = FLAVOR_NAME
    elif "pytorch" in flavors:
        spec, module, flavor = None, load_pytorch(local, allow_pickle, what=model_uri), "pytorch"
    else:
        raise ValueError(f"{model_uri} has flavors {sorted(flavors)}; expected {FLAVOR_NAME} or pytorch.")
    layers = _feature_layers(model_uri, module, tags)
    return LoadedModel(module, spec, tags, model_id, model_uri, name, version, flavor, layers)
