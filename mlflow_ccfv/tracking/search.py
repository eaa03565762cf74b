"""Finding model versions in the MLflow Model Registry: by URI, by bank, by tags, every page read.

A *bank* is the set of model versions tagged ``ccfv.bank=<bank>`` (one tag filter). Names that end
up in ``models:/`` URIs and search filters are checked first (:func:`check_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.tracking.server import lost_tracking_server

__all__ = [
    "BANK_TAG",
    "DEFAULT_BANK",
    "SEARCH_PAGE_SIZE",
    "bank_versions",
    "check_name",
    "find_version",
    "find_versions",
    "get_version",
    "logged_model_id",
    "model_id_in_uri",
    "registered_version",
    "resolve_versions",
    "search_versions",
    "version_uri",
]

BANK_TAG = T.BANK
DEFAULT_BANK = "default"
#: Versions per registry request; every query pages through all results with the server's page tokens.
SEARCH_PAGE_SIZE = 1000
_MODEL_ID_URI = re.compile(r"^models:/(m-[0-9a-f]+)/?$")


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


def model_id_in_uri(model_uri: str) -> str | None:
    """The LoggedModel id ``m-...`` of a ``models:/m-...`` URI; None for any other URI."""
    match = _MODEL_ID_URI.match(model_uri)
    return match.group(1) if match else None


def version_uri(version) -> str:
    """``models:/<name>/<version>`` of a ``ModelVersion``."""
    return f"models:/{version.name}/{version.version}"


def logged_model_id(version) -> str:
    """The LoggedModel id (``m-...``) behind a ``ModelVersion`` (``mv.model_id`` or its ``models:/m-...`` source)."""
    if getattr(version, "model_id", None):
        return version.model_id
    model_id = model_id_in_uri(version.source or "")
    if model_id is not None:
        return model_id
    raise RegistryError(
        f"Model version {version.name}/{version.version} has no LoggedModel (source {version.source!r}); "
        "register it again with register_network or register_logged_model."
    )


def _missing_version_hint(name: str) -> str:
    """What exists instead of a missing version of ``name``: its versions, or how to list a bank's."""
    try:
        versions = sorted(int(v.version) for v in search_versions(f"name = '{name}'"))
    except MlflowException:
        versions = []
    if not versions:
        return (
            f"there is no registered model {name!r}; list a bank's versions with "
            "`mlflow-ccfv bank --bank <bank>` (default bank: default)"
        )
    return f"{name!r} has versions {', '.join(map(str, versions))}"


def get_version(model_uri: str):
    """The ``ModelVersion`` of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``; clear errors otherwise."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"Expected models:/<name>/<version> or models:/<name>@<alias>; got {model_uri!r}.")
    body = model_uri[len("models:/") :].strip("/")
    client = MlflowClient()
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
        raise RegistryError(f"{model_uri}: {what} not found ({_missing_version_hint(name)}).") from exc


def registered_version(model_uri):
    """The ``ModelVersion`` behind ``model_uri`` (a ModelVersion, ``models:/name/1`` or ``models:/name@alias``)
    without loading its weights; None for a ``models:/m-...`` LoggedModel URI."""
    if not isinstance(model_uri, str):
        return model_uri
    return None if model_id_in_uri(model_uri) else get_version(model_uri)


def search_versions(filter_string: str, page_size: int = SEARCH_PAGE_SIZE) -> list[ModelVersion]:
    """Every model version matching ``filter_string``, page by page (``page_token``), never truncated
    at one page (a server answers at most ``max_results`` per request)."""
    client = MlflowClient()
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
    check_name("bank", bank)
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


def find_version(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """The newest version of ``name`` whose tags include ``tags`` (for reuse), or None."""
    matching = find_versions(name, tags)
    return matching[-1] if matching else None
