"""Registering networks as model versions of the MLflow Model Registry (the model bank).

Every version points at a LoggedModel: :func:`register_network` logs a spec + state_dict in the
``mlflow_ccfv`` flavor (no pickled code); :func:`register_logged_model` converts a model logged with
``mlflow.pytorch`` to that flavor, or registers it pickled when its spec cannot be recovered.

Version tags written here: ``architecture``, ``source_dataset``, ``feature_layers``, ``in_channels``,
``out_channels``, ``patch_size``, ``ccfv.bank``, ``ccfv.flavor`` and ``ccfv.network``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.networks import (
    DEFAULT_PATCH_SIZE,
    NetworkSpec,
    build_with_weights,
    check_finite_weights,
    check_patch_fits,
    check_spec,
    decoder_layers,
    normalise_state_dict,
)
from mlflow_ccfv.networks.introspect import first_last_channels, spec_of_module
from mlflow_ccfv.options import format_ints, parse_ints
from mlflow_ccfv.scoring.ranking import network_identity
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME, default_patch_size, log_model
from mlflow_ccfv.tracking.load import load_pytorch, resolve_logged_model_id
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.runs import process_identity
from mlflow_ccfv.tracking.search import BANK_TAG, DEFAULT_BANK, check_name

__all__ = [
    "VERSION_TAGS",
    "Registration",
    "delete_version",
    "register_logged_model",
    "register_network",
    "register_spec",
]

_logger = logging.getLogger(__name__)

VERSION_TAGS = (
    T.ARCHITECTURE,
    T.SOURCE_DATASET,
    T.FEATURE_LAYERS,
    T.IN_CHANNELS,
    T.OUT_CHANNELS,
    T.PATCH_SIZE,
    BANK_TAG,
)
#: MLflow's longest tag value.
_MAX_TAG_VALUE = 5000


@dataclass(frozen=True)
class Registration:
    """Where and how a network is registered: the registered model ``name``, the ``source_dataset`` it
    was trained on, its ``bank``, ``extra_tags`` (any name outside the ones register writes itself),
    the version ``description``, and ``patch_size`` (the training ROI in voxels, ``"96,96,96"`` or a
    sequence; None: UNETR's ``img_size`` or 32³). The names are checked (:func:`check_name`) on creation."""

    name: str
    source_dataset: str
    bank: str = DEFAULT_BANK
    extra_tags: Mapping[str, Any] | None = None
    description: str | None = None
    patch_size: Sequence[int] | str | None = None

    def __post_init__(self) -> None:
        check_name("Registered model name", self.name)
        check_name("source_dataset", self.source_dataset)
        check_name("bank", self.bank)

    def patch(self, spec: NetworkSpec | None) -> tuple[int, ...]:
        """The patch size as three ints (``spec``'s default when none was given)."""
        patch_size = self.patch_size
        if patch_size is None:
            patch_size = default_patch_size(spec) if spec is not None else DEFAULT_PATCH_SIZE
        return parse_ints(patch_size, "patch_size", length=3, minimum=1, maximum=4096)


@dataclass(frozen=True)
class _NetworkTags:
    """What a version's tags say about its network (``network``: its identity, for finding its twin)."""

    architecture: str
    feature_layers: Sequence[str]
    in_channels: int
    out_channels: int
    flavor: str
    network: str | None = None


def _version_tags(net: _NetworkTags, registration: Registration, patch: tuple[int, ...]) -> dict[str, str]:
    """The tags of a new version: the network's, the registration's, then its checked extra tags."""
    tags = {
        T.ARCHITECTURE: net.architecture,
        T.SOURCE_DATASET: registration.source_dataset,
        T.FEATURE_LAYERS: ",".join(net.feature_layers),
        T.IN_CHANNELS: str(int(net.in_channels)),
        T.OUT_CHANNELS: str(int(net.out_channels)),
        T.PATCH_SIZE: format_ints(patch),
        BANK_TAG: registration.bank,
        T.FLAVOR: net.flavor,
    }
    if net.network is not None:
        tags[T.NETWORK] = net.network
    for key, value in (registration.extra_tags or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Tag names must be non-empty strings; got {key!r}.")
        if key in tags:
            raise ValueError(f"Tag {key!r} is set by register itself; pass it through its own argument.")
        tags[key] = str(value)
    for key, value in tags.items():
        if len(value) > _MAX_TAG_VALUE:
            raise ValueError(f"Tag {key!r} is longer than MLflow's 5000-character limit.")
    return tags


def _ensure_registered_model(name: str, bank: str) -> bool:
    """Create-or-get the registered model ``name``: True if this call created it. Two processes creating
    the same new name both succeed (the loser of the race gets the winner's model)."""
    client = MlflowClient()
    try:
        client.create_registered_model(name, tags={BANK_TAG: bank})
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc).lower():
            try:  # e.g. a lock error after the model was created by someone else
                client.get_registered_model(name)
            except MlflowException:
                raise exc from None
        return False


def _create_version(registration: Registration, source: str, model_id: str, tags: dict[str, str]) -> ModelVersion:
    """Create the registered model if needed (idempotently) and a version carrying all tags at once.

    Concurrent registrations of one name collide on the next version number; the insert is atomic,
    so it is retried. A registered model this call created is removed again if it ends up empty."""
    name = registration.name
    client = MlflowClient()
    created_model = retrying(_ensure_registered_model, name, tags[BANK_TAG], what=f"create registered model {name}")
    try:
        return retrying(
            client.create_model_version,
            name,
            source=source,
            tags=tags,
            description=registration.description,
            model_id=model_id,
            what=f"create a version of {name}",
        )
    except Exception:
        if created_model and not MlflowClient().search_model_versions(f"name = '{name}'", max_results=1):
            with contextlib.suppress(MlflowException):  # another process added a version meanwhile
                client.delete_registered_model(name)
        raise


def register_spec(spec: NetworkSpec, state_dict: dict[str, torch.Tensor], registration: Registration) -> ModelVersion:
    """:func:`register_network` with its registration settings in one :class:`Registration`."""
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"spec must be a NetworkSpec; got {type(spec).__name__}.")
    state = normalise_state_dict(state_dict)
    check_spec(spec)
    check_finite_weights(state)
    patch = registration.patch(spec)
    check_patch_fits(spec, patch)  # a spec deeper than its patch would fail every later score
    module = build_with_weights(spec, state)
    normalization = (registration.extra_tags or {}).get(T.IMPORT_NORMALIZATION)
    net = _NetworkTags(
        architecture=spec.architecture,
        feature_layers=list(decoder_layers(module)),
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        flavor=FLAVOR_NAME,
        network=network_identity(spec.architecture, spec.kwargs, patch, normalization),
    )
    tags = _version_tags(net, registration, patch)
    # The owner process on the LoggedModel: a killed register leaves it PENDING, the next run removes it.
    owned = {**tags, T.PROCESS: process_identity(), T.REGISTERING: "true"}
    info = log_model(spec, state, name=registration.name, tags=owned, patch_size=patch)
    try:
        mv = _create_version(registration, info.model_uri, info.model_id, tags)
    except Exception:
        MlflowClient().delete_logged_model(info.model_id)
        raise
    with contextlib.suppress(MlflowException):  # registered: no longer an orphan if this process dies now
        MlflowClient().delete_logged_model_tag(info.model_id, T.REGISTERING)
    _logger.info(
        "registered %s version %s (%s, source %s, bank %s)",
        registration.name,
        mv.version,
        spec.architecture,
        registration.source_dataset,
        registration.bank,
    )
    return mv


def register_network(
    spec: NetworkSpec,
    state_dict: dict[str, torch.Tensor],
    name: str,
    source_dataset: str,
    bank: str = DEFAULT_BANK,
    extra_tags: dict[str, Any] | None = None,
    description: str | None = None,
    patch_size: Sequence[int] | str | None = None,
) -> ModelVersion:
    """Log ``spec`` + ``state_dict`` as an ``mlflow_ccfv`` LoggedModel and register it as a version of ``name``.

    Everything (names, tags, architecture, checkpoint keys and shapes, decoder layers) is validated
    before anything is created; if the registry refuses the version, the LoggedModel is deleted
    again. ``state_dict`` may be nested under ``"state_dict"`` or carry a ``module.`` prefix.
    ``patch_size`` (the training ROI, voxels) defaults to UNETR's ``img_size`` or 32³.
    Returns the ``ModelVersion``.
    """
    registration = Registration(name, source_dataset, bank, extra_tags, description, patch_size)
    return register_spec(spec, state_dict, registration)


def register_logged_model(
    model_uri: str,
    registration: Registration,
    *,
    allow_pickle: bool | None = None,
    spec: NetworkSpec | None = None,
    channels: tuple[int, int] | None = None,
) -> ModelVersion:
    """Register a model already logged with ``mlflow.pytorch`` (``models:/m-...`` or ``runs:/...``),
    converted to the pickle-free ``mlflow_ccfv`` flavor.

    Loading it unpickles code, so it needs the opt-in (:func:`~mlflow_ccfv.tracking.load.pickle_allowed`
    of ``allow_pickle``). Its weights are then registered with ``spec`` or, when not given, the spec read
    back from the MONAI module (:func:`~mlflow_ccfv.networks.introspect.spec_of_module`); later loads
    need no opt-in. If no spec can be found, the pickled model itself is registered (flavor ``pytorch``,
    every load needs the opt-in; ``channels``: its ``(in, out)`` channels, default those of its first and
    last convolution) with a warning that says how to convert it (pass its spec).
    """
    model_id = resolve_logged_model_id(model_uri)
    module = load_pytorch(f"models:/{model_id}", allow_pickle)
    patch = registration.patch(spec)
    converted = spec if spec is not None else spec_of_module(module, patch)
    if converted is not None:
        tags = {**(registration.extra_tags or {}), "converted_from": f"models:/{model_id}"}
        return register_spec(converted, module.state_dict(), replace(registration, extra_tags=tags, patch_size=patch))
    warnings.warn(
        f"models:/{model_id} ({type(module).__name__}) could not be converted to the mlflow_ccfv flavor "
        "(its constructor arguments are not recoverable); it is registered pickled, and every load needs "
        "--allow-pickle. Pass its network spec (register --spec/--small-spec with --logged-model) to convert it.",
        UserWarning,
        stacklevel=2,
    )
    first, last = channels if channels is not None else first_last_channels(module)
    net = _NetworkTags(type(module).__name__, list(decoder_layers(module)), first, last, flavor="pytorch")
    mv = _create_version(registration, f"models:/{model_id}", model_id, _version_tags(net, registration, patch))
    _logger.info(
        "registered %s version %s (mlflow.pytorch model %s, bank %s)",
        registration.name,
        mv.version,
        model_id,
        registration.bank,
    )
    return mv


def delete_version(name: str, version: str) -> None:
    """Delete one model version (retried like every registry write)."""
    retrying(MlflowClient().delete_model_version, name, str(version), what=f"delete {name}/{version}")
