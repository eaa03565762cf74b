"""The model bank: pre-trained networks as versions in the MLflow Model Registry.

A *bank* is the set of model versions tagged ``ccfv.bank=<bank>`` (one tag filter). Each version
points at a LoggedModel (``m-...``) in the ``mlflow_ccfv`` flavor (:mod:`mlflow_ccfv.tracking.flavor`:
a declarative :class:`~mlflow_ccfv.networks.specs.NetworkSpec` + a state_dict, no pickled code),
or at a model a user logged earlier with ``mlflow.pytorch`` (pickled: loaded only with the opt-in of
:func:`pickle_allowed`).

After any scoring of a dataset, :func:`rerank` recomputes ``transferability.rank.<dataset>`` and the
``best-<dataset>`` alias from every version in the registry that holds a complete, current score
(docs/reliability.md).

Version tags written here: ``architecture``, ``source_dataset``, ``feature_layers``, ``in_channels``,
``out_channels``, ``patch_size``, ``ccfv.bank`` and ``ccfv.flavor``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import random
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from torch import nn

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.data.normalization import IntensityNormalization
from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.estimators import METHODS
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
from mlflow_ccfv.options import format_ints, parse_ints
from mlflow_ccfv.scoring.ranking import AUTO_RANK, Member, RankOrder, network_identity, rank_members
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME, default_patch_size, log_model, read_local_model
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.runs import process_identity
from mlflow_ccfv.tracking.server import lost_tracking_server
from mlflow_ccfv.tracking.summary import refresh_summaries

_logger = logging.getLogger(__name__)

BANK_TAG = T.BANK
FLAVOR_TAG = T.FLAVOR
DEFAULT_BANK = "default"
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
#: ``1``/``true``/``yes``/``on``: load ``mlflow.pytorch`` (pickled) models without ``--allow-pickle``.
ALLOW_PICKLE_ENV = "MLFLOW_CCFV_ALLOW_PICKLE"
PICKLE_ENV = ALLOW_PICKLE_ENV  # the name the evaluator imports
#: Page size of registry searches (every page is read: no silent truncation).
_PAGE = 200


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
        patch_size = default_patch_size(spec) if spec is not None else DEFAULT_PATCH_SIZE
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
    network: str | None = None,
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
    if network is not None:
        tags[T.NETWORK] = network
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


def _ensure_registered_model(name: str, bank: str) -> bool:
    """Create-or-get the registered model ``name``: True if this call created it. Two processes creating
    the same new name both succeed (the loser of the race gets the winner's model)."""
    client = _client()
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


def _create_version(name: str, source: str, model_id: str, tags: dict[str, str], description: str | None):
    """Create the registered model if needed (idempotently) and a version carrying all tags at once.

    Concurrent registrations of one name collide on the next version number; the insert is atomic,
    so it is retried. A registered model this call created is removed again if it ends up empty."""
    client = _client()
    created_model = retrying(_ensure_registered_model, name, tags[BANK_TAG], what=f"create registered model {name}")
    try:
        return retrying(
            client.create_model_version,
            name,
            source=source,
            tags=tags,
            description=description,
            model_id=model_id,
            what=f"create a version of {name}",
        )
    except Exception:
        if created_model and not _client().search_model_versions(f"name = '{name}'", max_results=1):
            with contextlib.suppress(MlflowException):  # another process added a version meanwhile
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
    patch = _patch_size(patch_size, spec)
    check_patch_fits(spec, patch)  # a spec deeper than its patch would fail every later score
    module = build_with_weights(spec, state)
    patch = _patch_size(patch_size, spec)
    tags = _version_tags(
        architecture=spec.architecture,
        source_dataset=source_dataset,
        feature_layers=_decoder_layers(module),
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        patch_size=patch,
        bank=bank,
        flavor=FLAVOR_NAME,
        extra_tags=extra_tags,
        network=network_identity(spec.architecture, spec.kwargs, patch, (extra_tags or {}).get(T.IMPORT_NORMALIZATION)),
    )
    # The owner process on the LoggedModel: a killed register leaves it PENDING, the next run removes it.
    info = log_model(
        spec, state, name=name, tags={**tags, T.PROCESS: process_identity(), T.REGISTERING: "true"}, patch_size=patch
    )
    try:
        mv = _create_version(name, info.model_uri, info.model_id, tags, description)
    except Exception:
        _client().delete_logged_model(info.model_id)
        raise
    with contextlib.suppress(MlflowException):  # registered: no longer an orphan if this process dies now
        _client().delete_logged_model_tag(info.model_id, T.REGISTERING)
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


#: Constructor arguments MONAI stores under another attribute name.
_ATTRIBUTE_ALIASES = {"spatial_dims": ("dimensions",)}


def _json_value(value: Any) -> Any:
    return [_json_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def spec_of_module(module: nn.Module, patch_size: Sequence[int] = DEFAULT_PATCH_SIZE) -> NetworkSpec | None:
    """The :class:`NetworkSpec` of a MONAI network instance, read from the constructor arguments it keeps
    as attributes, or None when they cannot be recovered. Accepted only if the spec rebuilds a network
    that takes the module's weights strictly and gives the same output on a probe input."""
    cls = type(module)
    if not cls.__module__.startswith("monai.networks.nets"):
        return None
    kwargs: dict[str, Any] = {}
    for pname, param in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        attr = next((a for a in (pname, *_ATTRIBUTE_ALIASES.get(pname, ())) if hasattr(module, a)), None)
        if attr is None:
            if param.default is param.empty:
                return None
            continue
        value = _json_value(getattr(module, attr))
        if param.default is not param.empty and value == _json_value(param.default):
            continue
        try:
            json.dumps(value)
        except TypeError:
            return None
        kwargs[pname] = value
    try:
        spec = NetworkSpec(cls.__name__, kwargs)
        rebuilt = build_with_weights(spec, module.state_dict()).eval()
        first, _ = _first_last_channels(module)
        probe = torch.randn((1, first, *patch_size), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = torch.allclose(module.eval()(probe), rebuilt(probe), atol=1e-5)
    except Exception as exc:  # any mismatch: not convertible
        _logger.debug("%s is not convertible: %s", cls.__name__, exc)
        return None
    return spec if same else None


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
    *,
    allow_pickle: bool | None = None,
    spec: NetworkSpec | None = None,
):
    """Register a model already logged with ``mlflow.pytorch`` (``models:/m-...`` or ``runs:/...``),
    converted to the pickle-free ``mlflow_ccfv`` flavor.

    Loading it unpickles code, so it needs the opt-in (:func:`pickle_allowed` of ``allow_pickle``). Its
    weights are then registered with ``spec`` or, when not given, the spec read back from the MONAI
    module (:func:`spec_of_module`); later loads need no opt-in. If no spec can be found, the pickled
    model itself is registered (flavor ``pytorch``, every load needs the opt-in) with a warning that
    says how to convert it (pass its spec).
    """
    _check_name("Registered model name", name)
    _check_name("source_dataset", source_dataset)
    _check_name("bank", bank)
    model_id = _resolve_logged_model_id(model_uri)
    module = _load_pytorch(f"models:/{model_id}", allow_pickle)
    patch = _patch_size(patch_size, spec)
    converted = spec if spec is not None else spec_of_module(module, patch)
    if converted is not None:
        tags = {**(extra_tags or {}), "converted_from": f"models:/{model_id}"}
        return register_network(
            converted,
            module.state_dict(),
            name,
            source_dataset,
            bank=bank,
            extra_tags=tags,
            description=description,
            patch_size=patch,
        )
    warnings.warn(
        f"models:/{model_id} ({type(module).__name__}) could not be converted to the mlflow_ccfv flavor "
        "(its constructor arguments are not recoverable); it is registered pickled, and every load needs "
        "--allow-pickle. Pass its network spec (register --spec/--small-spec with --logged-model) to convert it.",
        UserWarning,
        stacklevel=2,
    )
    first, last = _first_last_channels(module)
    tags = _version_tags(
        architecture=type(module).__name__,
        source_dataset=source_dataset,
        feature_layers=_decoder_layers(module),
        in_channels=in_channels if in_channels is not None else first,
        out_channels=out_channels if out_channels is not None else last,
        patch_size=patch,
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


def _load_pytorch(model_uri: str, allow_pickle: bool | None = None, what: str | None = None) -> nn.Module:
    what = what or model_uri
    if not pickle_allowed(allow_pickle):
        raise PickleRefusedError(pickle_refusal(what))
    import mlflow.pytorch  # imported here: only for the pickled flavor

    _logger.warning("%s is an mlflow.pytorch model: unpickling it (opted in to pickle loading)", what)
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
        lost = lost_tracking_server(exc)
        if lost is not None:  # not a missing version: the server is gone
            raise lost from None
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
        model_id = _resolve_logged_model_id(model_uri)
        tags = dict(_client().get_logged_model(model_id).tags or {})
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}")
    flavors = Model.load(str(Path(local) / "MLmodel")).flavors
    if FLAVOR_NAME in flavors:
        spec, module = read_local_model(local)
        flavor = FLAVOR_NAME
    elif "pytorch" in flavors:
        spec, module, flavor = None, _load_pytorch(local, allow_pickle, what=model_uri), "pytorch"
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
    """Explicit ``models:/`` URIs (each must exist, each once) or, when none are given, every version of
    ``bank``."""
    models = [m for m in (models or []) if m]
    if models:
        versions = [get_version(m) for m in models]
        seen: dict[tuple[str, str], str] = {}
        for uri, v in zip(models, versions):
            key = (v.name, str(v.version))
            if key in seen:
                raise OptionError(
                    f"--models names {v.name}/{v.version} twice ({seen[key]} and {uri}); give each version once."
                )
            seen[key] = uri
        return versions
    versions = bank_versions(bank)
    if not versions:
        raise RegistryError(
            f"The bank {bank!r} is empty: no model version is tagged {BANK_TAG}={bank}. Register models "
            "with `mlflow-ccfv register ... --bank " + bank + "` or pass explicit models:/ URIs."
        )
    return versions


def find_versions(name: str, tags: dict[str, str]) -> list[ModelVersion]:
    """Every version of ``name`` whose tags include ``tags``, oldest first (none if ``name`` is unknown)."""
    try:
        found = search_versions(f"name = '{name}'")
    except MlflowException:
        return []
    matching = [v for v in found if all((v.tags or {}).get(k) == val for k, val in tags.items())]
    return sorted(matching, key=lambda v: int(v.version))


def delete_version(name: str, version: str) -> None:
    """Delete one model version (retried like every registry write)."""
    retrying(_client().delete_model_version, name, str(version), what=f"delete {name}/{version}")


def find_version(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """The newest version of ``name`` whose tags include ``tags`` (for reuse), or None."""
    matching = find_versions(name, tags)
    return matching[-1] if matching else None


def _search_versions(filter_string: str) -> list[ModelVersion]:
    """:func:`search_versions` with the ranking's page size (``_PAGE``; tests shrink it to force paging)."""
    return search_versions(filter_string, page_size=_PAGE)


def _alias_holders(alias: str) -> dict[str, str]:
    """``{registered model name: version}`` of every registered model holding ``alias`` (all pages)."""
    client = _client()
    holders: dict[str, str] = {}
    token = None
    while True:
        page = client.search_registered_models(max_results=_PAGE, page_token=token)
        for rm in page:
            aliases = rm.aliases or {}
            if alias in aliases:
                holders[rm.name] = str(aliases[alias])
        token = page.token
        if not token:
            return holders


def set_version_tag(name: str, version: str, key: str, value: str) -> None:
    """Set one tag of a version (retried under concurrent writers)."""
    _set_version_tag(name, version, key, value)


def _set_version_tag(name: str, version: str, key: str, value: str) -> None:
    retrying(_client().set_model_version_tag, name, version, key, value, what=f"tag {key} on {name}/{version}")


def _delete_version_tag(name: str, version: str, key: str) -> None:
    try:
        retrying(_client().delete_model_version_tag, name, version, key, what=f"untag {key} on {name}/{version}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # already gone (another writer): the goal
            raise


def write_version_scores(
    name: str,
    version: str,
    dataset: str,
    scores: dict[str, float],
    *,
    settings: str = T.DEFAULT_SETTINGS,
    data_digest: str,
) -> None:
    """Write one version's score tags on ``dataset`` so that no partial set is ever seen as complete.

    MLflow has no batch write for version tags, so the completeness marker ``transferability.scored.
    <dataset>`` (value ``<settings>/<data digest>``) is deleted first, then the scores, the sampler
    settings (``transferability.sampler.<dataset>``) are written, then the marker last. Score tags of
    methods not in ``scores`` left over from an earlier scoring are removed. The rank is not written
    here: call :func:`rerank` once the scores of a batch are stored. The version's description summary
    follows the tags (:func:`~mlflow_ccfv.tracking.summary.refresh_version_summary`).
    """
    current = dict(_client().get_model_version(name, version).tags or {})
    marker = T.scored_tag(dataset)
    if marker in current:
        _delete_version_tag(name, version, marker)
    wanted = {T.score_tag(m, dataset): f"{v:.6g}" for m, v in scores.items()}
    wanted[T.sampler_tag(dataset)] = settings
    for key in T.dataset_score_keys(current, dataset):
        if key not in wanted and key not in (marker, T.rank_tag(dataset)):
            _delete_version_tag(name, version, key)
    for key, value in wanted.items():
        if current.get(key) != value:
            _set_version_tag(name, version, key, value)
    _set_version_tag(name, version, marker, T.scored_value(settings, data_digest))
    refresh_summaries([(name, version)])


def clear_version_scores(name: str, version: str, dataset: str) -> list[str]:
    """Remove every ``transferability.*.<dataset>`` tag of a version whose latest scoring failed (its old
    scores are stale); the marker goes first. Returns the keys removed. Call :func:`rerank` afterwards."""
    current = dict(_client().get_model_version(name, version).tags or {})
    keys = T.dataset_score_keys(current, dataset)
    for key in keys:
        _delete_version_tag(name, version, key)
    refresh_summaries([(name, version)])
    return keys


@dataclass
class Ranking:
    """The outcome of :func:`rerank`: ``ranked`` = ``(name, version, score)`` of the candidates best first
    (rank 1 first; random-init controls are not ranked); ``best`` = the alias holder ``(name, version)``
    or None; ``group`` = the ranked scores' marker value; ``bank`` = the bank ranked within;
    ``order`` = the rule's full outcome (:class:`~mlflow_ccfv.scoring.ranking.RankOrder`: the
    controls, the candidates without a twin, the controls above every candidate)."""

    dataset: str
    group: str
    ranked: list[tuple[str, str, float]]
    best: tuple[str, str] | None
    rounds: int
    method: str = "ccfv"
    without_twin: list[str] = field(default_factory=list)
    bank: str | None = None
    order: RankOrder | None = None

    def warning(self) -> str | None:
        """The ranking's sentence for the user when a random-init control beats every candidate."""
        return self.order.warning() if self.order is not None else None


def _split_label(label: str) -> tuple[str, str]:
    name, _, version = label.rpartition("/")
    return name, version


@dataclass
class _Plan:
    order: RankOrder
    ranked: list[tuple[str, str, float]]
    set_tags: list[tuple[str, str, str, str]]
    drop_tags: list[tuple[str, str, str]]
    drop_alias: list[str]
    set_alias: tuple[str, str] | None

    @property
    def changes(self) -> bool:
        return bool(self.set_tags or self.drop_tags or self.drop_alias or self.set_alias)


def _group_members(dataset: str, group: str, bank: str | None) -> tuple[list[Member], dict[str, dict[str, str]]]:
    """The versions of ``bank`` (None: every bank) whose marker on ``dataset`` is ``group``, as ranking
    members, and each one's tags by label."""
    marker = T.scored_tag(dataset)
    members, tags_of = [], {}
    for mv in _search_versions(f"tags.`{marker}` = '{group}'"):
        tags = mv.tags or {}
        if bank is not None and tags.get(BANK_TAG, DEFAULT_BANK) != bank:
            continue
        scores = T.dataset_scores(tags, dataset)
        if not scores:
            continue  # a marker without a readable score: not comparable
        label = f"{mv.name}/{mv.version}"
        members.append(Member(label, tags.get(T.NETWORK), tags.get(T.SOURCE_DATASET), scores))
        tags_of[label] = tags
    return members, tags_of


def _plan_ranking(dataset: str, group: str, method: str, bank: str | None) -> _Plan:
    """Read the registry: the ranking of ``group`` within ``bank`` (:func:`~mlflow_ccfv.scoring.ranking.
    rank_members`), the rank and ranking-score tags to write or remove, and the alias changes."""
    members, tags_of = _group_members(dataset, group, bank)
    order = rank_members(members, method)
    rank_key, method_key = T.rank_tag(dataset), T.score_tag(order.method, dataset)
    by_key = T.ranked_by_tag(dataset)
    ranked = [(*_split_label(m.model), value) for m, value in order.ranked]
    set_tags: list[tuple[str, str, str, str]] = []
    for i, (m, _) in enumerate(order.ranked, 1):
        name, version = _split_label(m.model)
        if tags_of[m.model].get(by_key) != order.method:
            set_tags.append((name, version, by_key, order.method))
        if tags_of[m.model].get(rank_key) != str(i):
            set_tags.append((name, version, rank_key, str(i)))
    not_estimator = order.method not in METHODS  # a ranking of its own (ccfv_twin ...): stored beside the estimators'
    for m, value in [*order.ranked, *order.controls]:
        name, version = _split_label(m.model)
        text = f"{value:.6g}"
        if not_estimator and value == value and tags_of[m.model].get(method_key) != text:
            set_tags.append((name, version, method_key, text))
    candidates = {m.model for m, _ in order.ranked}
    drop_tags = [
        (mv.name, str(mv.version), key)
        for mv in _search_versions(f"tags.`{rank_key}` LIKE '%'")
        if f"{mv.name}/{mv.version}" not in candidates
        and (bank is None or (mv.tags or {}).get(BANK_TAG, DEFAULT_BANK) == bank)
        for key in (by_key, rank_key)  # the ranking first: a rank is never left without what it follows
        if key in (mv.tags or {})
    ]
    best = _split_label(order.best.model) if order.best is not None else None
    holders = _alias_holders(T.best_alias(dataset))
    if bank is not None:
        holders = {n: v for n, v in holders.items() if _model_bank(n) == bank}
    drop_alias = sorted(n for n in holders if best is None or n != best[0])
    set_alias = best if best is not None and holders.get(best[0]) != best[1] else None
    return _Plan(order, ranked, set_tags, drop_tags, drop_alias, set_alias)


def _model_bank(name: str) -> str:
    """The bank of a registered model (its ``ccfv.bank`` tag)."""
    try:
        return (_client().get_registered_model(name).tags or {}).get(BANK_TAG, DEFAULT_BANK)
    except MlflowException:
        return DEFAULT_BANK


def rerank(
    dataset: str,
    settings: str = T.DEFAULT_SETTINGS,
    data_digest: str | None = None,
    *,
    method: str = AUTO_RANK,
    bank: str | None = None,
    rounds: int = 10,
) -> Ranking:
    """Recompute ``transferability.rank.<dataset>`` and the ``best-<dataset>`` alias within ``bank``
    (None: over every bank) from the registry.

    The ranked versions are the versions of the bank whose completeness marker says their scores on
    ``dataset`` were made with ``settings`` on data ``data_digest`` (None: the data digest of the
    version scored last with these settings, i.e. the newest marker). Random-init controls are scored
    but never ranked nor aliased (:mod:`mlflow_ccfv.scoring.ranking`). Whatever subset was just scored,
    exactly one version of the bank is rank 1 and exactly one of its registered models holds the alias;
    versions of the bank outside the group lose their rank tag (their scores stay, tagged with their
    settings). With ``ccfv_twin`` (or ``auto`` resolving to it) each member's ``transferability.
    ccfv_twin.<dataset>`` is written too. Once the tags are settled, the description summary of every
    ranked version, control and version whose rank tag this call changed is refreshed.

    Safe when several scorers (processes, Ray tasks) finish at once: each store its own versions'
    scores (:func:`write_version_scores`) and then calls this; every round reads the whole bank,
    writes only what differs, and repeats until a read finds nothing to change, so the last writer's
    final read has seen every stored score. ``method`` orders the versions (higher = better): an
    estimator, ``ccfv_twin``, or ``auto`` (:func:`~mlflow_ccfv.scoring.ranking.choose_ranking`; the
    returned :class:`Ranking` says which).
    """
    if data_digest is None:
        newest = [
            mv
            for mv in _search_versions(f"tags.`{T.scored_tag(dataset)}` LIKE '{settings}/%'")
            if T.parse_scored_value((mv.tags or {}).get(T.scored_tag(dataset), ""))
            and (bank is None or (mv.tags or {}).get(BANK_TAG, DEFAULT_BANK) == bank)
        ]
        if newest:
            latest = max(newest, key=lambda mv: (mv.last_updated_timestamp or 0, mv.name, int(mv.version)))
            data_digest = T.parse_scored_value(latest.tags[T.scored_tag(dataset)])[1]  # type: ignore[index]
    group = T.scored_value(settings, data_digest or "-")
    client = _client()
    jitter = random.Random()
    alias = T.best_alias(dataset)
    touched: list[tuple[str, str]] = []  # versions whose rank or ranking-score tags this call changed
    for round_ in range(1, rounds + 1):
        plan = _plan_ranking(dataset, group, method, bank)
        if not plan.changes:
            ranked = [_split_label(m.model) for m, _ in [*plan.order.ranked, *plan.order.controls]]
            refresh_summaries([*touched, *ranked])  # the descriptions follow the tags just settled
            best = plan.ranked[0][:2] if plan.ranked else None
            if best is not None:
                _logger.info(
                    "%s: rank 1 of %d version(s) by %s is %s/%s", dataset, len(plan.ranked), plan.order.method, *best
                )
            return Ranking(
                dataset,
                group,
                plan.ranked,
                best,
                round_,
                plan.order.method,
                plan.order.without_twin,
                bank,
                plan.order,
            )
        for name, version, key, value in plan.set_tags:
            _set_version_tag(name, version, key, value)
        for name, version, key in plan.drop_tags:
            _delete_version_tag(name, version, key)
        touched += [(n, v) for n, v, *_ in [*plan.set_tags, *plan.drop_tags]]
        if plan.set_alias is not None:
            retrying(
                client.set_registered_model_alias, plan.set_alias[0], alias, plan.set_alias[1], what=f"alias {alias}"
            )
        for name in plan.drop_alias:
            try:
                retrying(client.delete_registered_model_alias, name, alias, what=f"remove alias {alias}")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        time.sleep(0.02 * jitter.random())  # let a concurrent reranker's writes land before re-reading
    raise RegistryError(
        f"The ranks of {dataset} kept changing under concurrent writers after {rounds} rounds; "
        "run `mlflow-ccfv score` again once the other scorers have finished."
    )


def move_alias(alias: str, name: str, version: str, bank: str) -> list[str]:
    """Give ``alias`` to version ``version`` of the registered model ``name`` and take it from every other
    registered model of ``bank`` (one holder per bank, as ``best-<dataset>``); returns the names it left."""
    client = _client()
    holders = {n: v for n, v in _alias_holders(alias).items() if _model_bank(n) == bank}
    if holders.get(name) != str(version):
        retrying(client.set_registered_model_alias, name, alias, str(version), what=f"alias {alias}")
    left = sorted(n for n in holders if n != name)
    for other in left:
        try:
            retrying(client.delete_registered_model_alias, other, alias, what=f"remove alias {alias}")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # removed by another writer: the goal
                raise
    return left


def delete_version_tag(name: str, version: str, key: str) -> None:
    """Remove one tag of a version (retried; a tag already gone is fine)."""
    _delete_version_tag(name, version, key)


__all__ = [
    "BANK_TAG",
    "DEFAULT_BANK",
    "DEFAULT_PATCH_SIZE",
    "LoadedModel",
    "PICKLE_ENV",
    "RegistryError",
    "VERSION_TAGS",
    "bank_versions",
    "check_name",
    "delete_version",
    "delete_version_tag",
    "move_alias",
    "find_version",
    "find_versions",
    "get_version",
    "load_version",
    "version_normalization",
    "logged_model_id",
    "pickle_allowed",
    "register_logged_model",
    "register_network",
    "resolve_versions",
    "search_versions",
    "set_version_tag",
    "version_uri",
    "ALLOW_PICKLE_ENV",
    "PickleRefusedError",
    "Ranking",
    "clear_version_scores",
    "pickle_refusal",
    "rerank",
    "spec_of_module",
    "write_version_scores",
]
