"""The model bank: pre-trained networks as versions in the MLflow Model Registry.

A *bank* is the set of model versions tagged ``ccfv.bank=<bank>`` (one tag filter). Each version
points at a LoggedModel (``m-...``) in the ``mlflow_ccfv`` flavor (:mod:`mlflow_ccfv.tracking.flavor`:
a declarative :class:`~mlflow_ccfv.networks.specs.NetworkSpec` + a state_dict, no pickled code),
or at a model a user logged earlier with ``mlflow.pytorch`` (pickled; loading it warns).

Version tags written here: ``architecture``, ``source_dataset``, ``feature_layers``, ``in_channels``,
``out_channels``, ``patch_size``, ``ccfv.bank`` and ``ccfv.flavor``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from torch import nn

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.networks import (
    NetworkSpec,
    build_with_weights,
    check_finite_weights,
    check_spec,
    decoder_layers,
    normalise_state_dict,
)
from mlflow_ccfv.options import format_ints, parse_ints
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME, log_model, read_local_model

_logger = logging.getLogger(__name__)

BANK_TAG = T.BANK
FLAVOR_TAG = T.FLAVOR
DEFAULT_BANK = "default"
#: Sliding-window ROI recorded when neither the caller nor the spec (UNETR's ``img_size``) gives one.
DEFAULT_PATCH_SIZE = (32, 32, 32)
VERSION_TAGS = (
    T.ARCHITECTURE,
    T.SOURCE_DATASET,
    T.FEATURE_LAYERS,
    T.IN_CHANNELS,
    T.OUT_CHANNELS,
    T.PATCH_SIZE,
    BANK_TAG,
)
_MODEL_ID_URI = re.compile(r"^models:/(m-[0-9a-f]+)/?$")


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


def _client():
    return MlflowClient()


def _decoder_layers(module: nn.Module) -> list[str]:
    return list(decoder_layers(module))


def check_name(kind: str, value: str) -> str:
    """``value`` if it can name a registered model, bank or dataset in URIs and search filters; else an
    :class:`~mlflow_ccfv.errors.OptionError` naming ``kind``."""
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"{kind} must be a non-empty string; got {value!r}.")
    if any(c in value for c in "/@:'\"`\\") or value != value.strip() or len(value) > 256:
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise OptionError(
            f"{kind} {shown!r} contains '/', '@', ':', quotes, backslashes or surrounding spaces (or is over 256 "
            "characters), which break models:/ URIs and registry searches; use letters, digits, '-', '_' and '.'."
        )
    return value


_check_name = check_name


def _patch_size(patch_size: Sequence[int] | str | None, spec: NetworkSpec | None) -> tuple[int, ...]:
    if patch_size is None:
        if spec is not None and "img_size" in spec.kwargs:
            patch_size = spec.kwargs["img_size"]
        else:
            patch_size = DEFAULT_PATCH_SIZE
    return parse_ints(patch_size, "patch_size", length=3, minimum=1, maximum=4096)


def _version_tags(
    *,
    architecture: str,
    source_dataset: str,
    feature_layers: Sequence[str],
    in_channels: int,
    out_channels: int,
    patch_size: tuple[int, ...],
    bank: str,
    flavor: str,
    extra_tags: dict[str, Any] | None,
) -> dict[str, str]:
    tags = {
        T.ARCHITECTURE: architecture,
        T.SOURCE_DATASET: source_dataset,
        T.FEATURE_LAYERS: ",".join(feature_layers),
        T.IN_CHANNELS: str(int(in_channels)),
        T.OUT_CHANNELS: str(int(out_channels)),
        T.PATCH_SIZE: format_ints(patch_size),
        BANK_TAG: bank,
        FLAVOR_TAG: flavor,
    }
    for key, value in (extra_tags or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Tag names must be non-empty strings; got {key!r}.")
        if key in tags:
            raise ValueError(f"Tag {key!r} is set by register itself; pass it through its own argument.")
        tags[key] = str(value)
    for key, value in tags.items():
        if len(value) > 5000:
            raise ValueError(f"Tag {key!r} is longer than MLflow's 5000-character limit.")
    return tags


def _create_version(name: str, source: str, model_id: str, tags: dict[str, str], description: str | None):
    """Create the registered model if needed and a version carrying all tags at once."""
    client = _client()
    created_model = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={BANK_TAG: tags[BANK_TAG]})
        created_model = True
    try:
        return client.create_model_version(name, source=source, tags=tags, description=description, model_id=model_id)
    except Exception:
        if created_model:
            client.delete_registered_model(name)
        raise


def register_network(
    spec: NetworkSpec,
    state_dict: dict[str, torch.Tensor],
    name: str,
    source_dataset: str,
    bank: str = DEFAULT_BANK,
    extra_tags: dict[str, Any] | None = None,
    description: str | None = None,
    patch_size: Sequence[int] | str | None = None,
):
    """Log ``spec`` + ``state_dict`` as an ``mlflow_ccfv`` LoggedModel and register it as a version of ``name``.

    Everything (names, tags, architecture, checkpoint keys and shapes, decoder layers) is validated
    before anything is created; if the registry refuses the version, the LoggedModel is deleted
    again. ``state_dict`` may be nested under ``"state_dict"`` or carry a ``module.`` prefix.
    ``patch_size`` (the training ROI, voxels) defaults to UNETR's ``img_size`` or 32³.
    Returns the ``ModelVersion``.
    """
    _check_name("Registered model name", name)
    _check_name("source_dataset", source_dataset)
    _check_name("bank", bank)
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"spec must be a NetworkSpec; got {type(spec).__name__}.")
    state = normalise_state_dict(state_dict)
    check_spec(spec)
    check_finite_weights(state)
    module = build_with_weights(spec, state)
    tags = _version_tags(
        architecture=spec.architecture,
        source_dataset=source_dataset,
        feature_layers=_decoder_layers(module),
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        patch_size=_patch_size(patch_size, spec),
        bank=bank,
        flavor=FLAVOR_NAME,
        extra_tags=extra_tags,
    )
    info = log_model(spec, state, name=name, tags=tags)
    try:
        mv = _create_version(name, info.model_uri, info.model_id, tags, description)
    except Exception:
        _client().delete_logged_model(info.model_id)
        raise
    _logger.info(
        "registered %s version %s (%s, source %s, bank %s)", name, mv.version, spec.architecture, source_dataset, bank
    )
    return mv


def _first_last_channels(module: nn.Module) -> tuple[int, int]:
    convs = [
        m for m in module.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d))
    ]
    if not convs:
        raise ValueError(
            f"Cannot infer in/out channels of {type(module).__name__} (no convolution); pass them explicitly."
        )
    return convs[0].in_channels, convs[-1].out_channels


def register_logged_model(
    model_uri: str,
    name: str,
    source_dataset: str,
    bank: str = DEFAULT_BANK,
    extra_tags: dict[str, Any] | None = None,
    description: str | None = None,
    patch_size: Sequence[int] | str | None = None,
    in_channels: int | None = None,
    out_channels: int | None = None,
):
    """Register a model already logged with ``mlflow.pytorch`` (``models:/m-...`` or ``runs:/...``).

    The model is loaded (pickled: only register models you trust; a warning says so) to check it is a
    MONAI network whose decoder layers are known and to fill the version tags; channels are read from
    its first and last convolution unless given.
    """
    _check_name("Registered model name", name)
    _check_name("source_dataset", source_dataset)
    _check_name("bank", bank)
    model_id = _resolve_logged_model_id(model_uri)
    module = _load_pytorch(f"models:/{model_id}")
    first, last = _first_last_channels(module)
    tags = _version_tags(
        architecture=type(module).__name__,
        source_dataset=source_dataset,
        feature_layers=_decoder_layers(module),
        in_channels=in_channels if in_channels is not None else first,
        out_channels=out_channels if out_channels is not None else last,
        patch_size=_patch_size(patch_size, None),
        bank=bank,
        flavor="pytorch",
        extra_tags=extra_tags,
    )
    mv = _create_version(name, f"models:/{model_id}", model_id, tags, description)
    _logger.info("registered %s version %s (mlflow.pytorch model %s, bank %s)", name, mv.version, model_id, bank)
    return mv


def _resolve_logged_model_id(model_uri: str) -> str:
    match = _MODEL_ID_URI.match(model_uri)
    if match:
        model_id = match.group(1)
        try:
            _client().get_logged_model(model_id)
        except MlflowException as exc:
            raise RegistryError(f"No logged model {model_id} in the tracking store ({model_uri}).") from exc
        return model_id
    if model_uri.startswith("runs:/"):
        run_id, _, artifact_path = model_uri[len("runs:/") :].partition("/")
        try:
            run = _client().get_run(run_id)
        except MlflowException as exc:
            raise RegistryError(f"No run {run_id} in the tracking store ({model_uri}).") from exc
        ids = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
        models = [m for m in (_client().get_logged_model(i) for i in ids) if m.name == artifact_path.strip("/")]
        if len(models) != 1:
            raise RegistryError(
                f"Run {run_id} has {len(models)} logged models named {artifact_path!r}; "
                "pass the model as models:/m-<id> instead."
            )
        return models[0].model_id
    raise ValueError(f"Expected a logged model URI (models:/m-<id> or runs:/<run_id>/<name>); got {model_uri!r}.")


#: Environment variable that opts in to unpickling ``mlflow.pytorch`` models (``1``/``true``/``yes``).
PICKLE_ENV = "MLFLOW_CCFV_ALLOW_PICKLE"


def pickle_allowed(allow: bool | None = None) -> bool:
    """Whether ``mlflow.pytorch`` (pickled) models may be used: ``allow`` when given, else ``$MLFLOW_CCFV_ALLOW_PICKLE``."""
    if allow is not None:
        return bool(allow)
    return os.environ.get(PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def _load_pytorch(model_uri: str) -> nn.Module:
    import mlflow.pytorch  # imported here: only for the pickled flavor

    warnings.warn(
        f"{model_uri} is an mlflow.pytorch model: loading it unpickles code saved by whoever logged it. "
        "Register weights with register_network (mlflow_ccfv flavor) to avoid this.",
        UserWarning,
        stacklevel=3,
    )
    module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    if isinstance(module, torch.fx.GraphModule) or not any(True for _ in module.named_children()):
        raise ValueError(
            f"{model_uri} reloads without its named modules (an exported 'pt2' graph?); log it with "
            "mlflow.pytorch.log_model(..., serialization_format='pickle') or register its state_dict "
            "with a NetworkSpec instead."
        )
    module.eval()
    return module


def version_uri(version) -> str:
    """``models:/<name>/<version>`` of a ``ModelVersion``."""
    return f"models:/{version.name}/{version.version}"


def logged_model_id(version) -> str:
    """The LoggedModel id (``m-...``) behind a ``ModelVersion`` (``mv.model_id`` or its ``models:/m-...`` source)."""
    if getattr(version, "model_id", None):
        return version.model_id
    match = _MODEL_ID_URI.match(version.source or "")
    if match:
        return match.group(1)
    raise RegistryError(
        f"Model version {version.name}/{version.version} has no LoggedModel (source {version.source!r}); "
        "register it again with register_network or register_logged_model."
    )


def get_version(model_uri: str):
    """The ``ModelVersion`` of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``; clear errors otherwise."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"Expected models:/<name>/<version> or models:/<name>@<alias>; got {model_uri!r}.")
    body = model_uri[len("models:/") :].strip("/")
    client = _client()
    if "@" in body:
        name, alias = body.split("@", 1)
        getter, what = (lambda: client.get_model_version_by_alias(name, alias)), f"alias @{alias}"
    else:
        name, _, version = body.rpartition("/")
        if not name or not version.isdigit():
            raise ValueError(
                f"Expected models:/<name>/<version> (a version number) or models:/<name>@<alias>; got {model_uri!r}."
            )
        getter, what = (lambda: client.get_model_version(name, version)), f"version {version}"
    try:
        return getter()
    except MlflowException as exc:
        try:
            versions = sorted(int(v.version) for v in search_versions(f"name = '{name}'"))
        except MlflowException:
            versions = []
        if not versions:
            hint = (
                f"there is no registered model {name!r}; list a bank's versions with "
                "`mlflow-ccfv bank --bank <bank>` (default bank: default)"
            )
        else:
            hint = f"{name!r} has versions {', '.join(map(str, versions))}"
        raise RegistryError(f"{model_uri}: {what} not found ({hint}).") from exc


def registered_version(model_uri):
    """The ``ModelVersion`` behind ``model_uri`` (a ModelVersion, ``models:/name/1`` or ``models:/name@alias``)
    without loading its weights; None for a ``models:/m-...`` LoggedModel URI."""
    if not isinstance(model_uri, str):
        return model_uri
    return None if _MODEL_ID_URI.match(model_uri) else get_version(model_uri)


def load_version(model_uri) -> LoadedModel:
    """Load a registered version (``models:/name/1``, ``models:/name@alias``, ``models:/m-...`` or a ModelVersion).

    ``mlflow_ccfv`` models load without unpickling (spec + ``weights_only`` state_dict);
    ``mlflow.pytorch`` models load the original ``nn.Module`` with a warning.
    """
    name = version = None
    tags: dict[str, str] = {}
    mv = registered_version(model_uri)
    if not isinstance(model_uri, str):
        model_uri = version_uri(mv)
    if mv is not None:
        name, version, tags = mv.name, mv.version, dict(mv.tags or {})
        model_id = logged_model_id(mv)
    else:
        model_id = _resolve_logged_model_id(model_uri)
        tags = dict(_client().get_logged_model(model_id).tags or {})
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}")
    flavors = Model.load(str(Path(local) / "MLmodel")).flavors
    if FLAVOR_NAME in flavors:
        spec, module = read_local_model(local)
        flavor = FLAVOR_NAME
    elif "pytorch" in flavors:
        spec, module, flavor = None, _load_pytorch(local), "pytorch"
    else:
        raise ValueError(f"{model_uri} has flavors {sorted(flavors)}; expected {FLAVOR_NAME} or pytorch.")
    layers = [l for l in tags.get(T.FEATURE_LAYERS, "").split(",") if l] or _decoder_layers(module)
    named = dict(module.named_modules())
    wrong = [l for l in layers if l not in named]
    if wrong:
        raise ValueError(
            f"{model_uri}: feature layer(s) {', '.join(wrong)} (tag feature_layers) are not modules of "
            f"{type(module).__name__}; fix the tag (e.g. {','.join(_decoder_layers(module))})."
        )
    return LoadedModel(module, spec, tags, model_id, model_uri, name, version, flavor, layers)


#: Versions per registry request; every query pages through all results with the server's page tokens.
SEARCH_PAGE_SIZE = 1000


def search_versions(filter_string: str, page_size: int = SEARCH_PAGE_SIZE) -> list[ModelVersion]:
    """Every model version matching ``filter_string``, page by page (``page_token``), never truncated
    at one page (a server answers at most ``max_results`` per request)."""
    client = _client()
    found: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(filter_string=filter_string, max_results=page_size, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def bank_versions(bank: str = DEFAULT_BANK) -> list:
    """All model versions tagged ``ccfv.bank=<bank>``, ordered by name and version number (paginated)."""
    _check_name("bank", bank)
    found = search_versions(f"tags.`{BANK_TAG}` = '{bank}'")
    return sorted(found, key=lambda mv: (mv.name, int(mv.version)))


def resolve_versions(models: Iterable[str] | None = None, bank: str = DEFAULT_BANK) -> list:
    """Explicit ``models:/`` URIs (each must exist) or, when none are given, every version of ``bank``."""
    models = [m for m in (models or []) if m]
    if models:
        return [get_version(m) for m in models]
    versions = bank_versions(bank)
    if not versions:
        raise RegistryError(
            f"The bank {bank!r} is empty: no model version is tagged {BANK_TAG}={bank}. Register models "
            "with `mlflow-ccfv register ... --bank " + bank + "` or pass explicit models:/ URIs."
        )
    return versions


def find_version(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """The newest version of ``name`` whose tags include ``tags`` (for reuse), or None."""
    try:
        found = search_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matching = [v for v in found if all((v.tags or {}).get(k) == val for k, val in tags.items())]
    return max(matching, key=lambda v: int(v.version)) if matching else None


def write_score_tags(name: str, version: str, dataset_name: str, scores: dict[str, float]) -> None:
    """The version's own ``transferability.<method>.<dataset>`` tags (one per scored method): what a
    scoring task stores for its version; ranks and the alias are the driver's
    (:func:`write_transferability_tags`), computed once every task has finished."""
    client = _client()
    for method, value in scores.items():
        client.set_model_version_tag(name, version, T.score_tag(method, dataset_name), f"{value:.6g}")


def write_transferability_tags(
    scored: Sequence[tuple[str, str | None, str, dict[str, float]]],
    table: pd.DataFrame,
    dataset_name: str,
    methods: Sequence[str],
) -> None:
    """Version tags ``transferability.<method>.<dataset>``, ``transferability.rank.<dataset>`` and the
    alias ``best-<dataset>`` on the registered model holding the top version.

    ``scored``: ``(name, version, label, scores)`` of each scored registry version; ``table`` the ranked
    table (``model`` = label, ``rank``).
    """
    client = _client()
    ranks = {row.model: int(row.rank) for row in table.itertuples() if row.error is None or pd.isna(row.error)}
    for name, version, label, scores in scored:
        for m in methods:
            client.set_model_version_tag(name, version, T.score_tag(m, dataset_name), f"{scores[m]:.6g}")
        client.set_model_version_tag(name, version, T.rank_tag(dataset_name), str(ranks[label]))
    if not scored:
        return
    alias = T.best_alias(dataset_name)
    best_name, best_version = next((n, v) for n, v, label, _ in scored if ranks[label] == 1)
    for name in sorted({n for n, *_ in scored} - {best_name}):
        if alias in (client.get_registered_model(name).aliases or {}):
            client.delete_registered_model_alias(name, alias)
    client.set_registered_model_alias(best_name, alias, best_version)


__all__ = [
    "BANK_TAG",
    "DEFAULT_BANK",
    "LoadedModel",
    "PICKLE_ENV",
    "RegistryError",
    "VERSION_TAGS",
    "bank_versions",
    "check_name",
    "find_version",
    "get_version",
    "load_version",
    "logged_model_id",
    "pickle_allowed",
    "register_logged_model",
    "register_network",
    "resolve_versions",
    "search_versions",
    "version_uri",
    "write_score_tags",
    "write_transferability_tags",
]
