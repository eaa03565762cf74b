"""Random-init controls and twins: registered networks with random weights, the reference of ``ccfv_twin``.

``register_control``: the randomly initialised CPU-sized network of an architecture
(``source_dataset=random-init``), the control every study includes. ``register_random_init``: the same
for any network specification. ``register_twins``: the random-init twin of every network of a bank
that has no control (its network, random weights, no training), safe when scorers race;
``drop_duplicate_twins`` keeps a listing made during such a race from scoring a twin twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.networks import DEFAULT_PATCH_SIZE, NetworkSpec, small_spec
from mlflow_ccfv.options import format_ints, parse_ints
from mlflow_ccfv.pipelines.pretrain import bank_name
from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE, TWIN_SEED, network_identity
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME
from mlflow_ccfv.tracking.load import load_version
from mlflow_ccfv.tracking.ranking_writes import set_version_tag
from mlflow_ccfv.tracking.register import delete_version, register_network
from mlflow_ccfv.tracking.search import DEFAULT_BANK, find_version, find_versions
from mlflow_ccfv.training import seeded_network

__all__ = [
    "drop_duplicate_twins",
    "network_of",
    "register_control",
    "register_random_init",
    "register_twins",
]

_logger = logging.getLogger(__name__)

#: (bank, network identity): what one twin stands for.
_NetworkKey = tuple[str, str]


def register_control(
    architecture: str,
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int],
    *,
    bank: str = DEFAULT_BANK,
    seed: int = 0,
) -> ModelVersion:
    """Register (or reuse) the control of ``architecture`` in ``bank``: the CPU-sized :func:`small_spec` with
    these channels and random weights from ``seed``, named ``<architecture>-random-init``
    (:func:`register_random_init`)."""
    patch = tuple(int(s) for s in patch_size)
    return register_random_init(small_spec(architecture, in_channels, out_channels, patch), patch, bank=bank, seed=seed)


def register_random_init(
    spec: NetworkSpec,
    patch_size: Sequence[int],
    *,
    bank: str = DEFAULT_BANK,
    seed: int = 0,
    name: str | None = None,
    reuse: bool = True,
    normalization: str | None = None,
) -> ModelVersion:
    """Register ``spec`` with random weights drawn from ``seed`` as ``name`` (default
    ``<architecture>-random-init``) in ``bank`` (tag ``source_dataset=random-init``; the spec's digest is
    tagged, so with ``reuse`` an existing version is returned only for the same spec, seed and patch
    size). ``normalization``: the ``import.normalization`` of the model it is the twin of (the same
    input as that model)."""
    patch = tuple(int(s) for s in patch_size)
    name = name or bank_name(spec.architecture, CONTROL_SOURCE)
    wanted = _control_tags(spec, bank, seed, patch)
    if reuse and (existing := find_version(name, wanted)) is not None:
        return existing
    state = seeded_network(spec, seed).state_dict()
    return register_network(
        spec,
        state,
        name,
        CONTROL_SOURCE,
        bank=bank,
        patch_size=patch,
        extra_tags={
            **{k: v for k, v in wanted.items() if k.startswith(T.pretrain_tag(""))},  # steps, seed, spec
            **({T.IMPORT_NORMALIZATION: normalization} if normalization else {}),
        },
        description=f"{spec.architecture}, randomly initialised (seed {seed}): the control",
    )


def _control_tags(spec: NetworkSpec, bank: str, seed: int, patch: Sequence[int]) -> dict[str, str]:
    """The tags that identify a random-init control: same tags, same network and weights."""
    return {
        T.SOURCE_DATASET: CONTROL_SOURCE,
        T.BANK: bank,
        T.pretrain_tag("steps"): "0",
        T.pretrain_tag("seed"): str(seed),
        T.PATCH_SIZE: format_ints(patch),
        T.pretrain_tag("spec"): T.spec_digest(spec.to_json()),
    }


def _is_control(version: ModelVersion) -> bool:
    return (version.tags or {}).get(T.SOURCE_DATASET) == CONTROL_SOURCE


def _patch_size(tags: Mapping[str, str]) -> tuple[int, ...]:
    """A version's tagged patch size, or the default for one registered without it."""
    return parse_ints(tags[T.PATCH_SIZE], T.PATCH_SIZE) if tags.get(T.PATCH_SIZE) else DEFAULT_PATCH_SIZE


def _twin_key(version: ModelVersion) -> tuple[str, ...] | None:
    """What makes two twins the same (name and the identifying tags); None for a version that is not one."""
    tags = version.tags or {}
    if tags.get(T.SOURCE_DATASET) != CONTROL_SOURCE or not tags.get(T.pretrain_tag("spec")):
        return None
    keys = (T.BANK, T.pretrain_tag("seed"), T.PATCH_SIZE, T.NETWORK)
    return (version.name, *(str(tags.get(k)) for k in keys))


def drop_duplicate_twins(versions: Sequence[ModelVersion]) -> list[ModelVersion]:
    """``versions`` without the twins registered twice by scorers that raced (every one but the oldest
    of the same name, bank, seed, patch and network; :func:`register_twins` deletes the newer one, this
    keeps a listing made before that deletion from scoring it)."""
    oldest: dict[tuple[str, ...], int] = {}
    for v in versions:
        key = _twin_key(v)
        if key is not None:
            oldest[key] = min(oldest.get(key, int(v.version)), int(v.version))
    return [v for v in versions if (key := _twin_key(v)) is None or int(v.version) == oldest[key]]


def network_of(version: ModelVersion) -> tuple[str | None, NetworkSpec | None]:
    """A version's network identity (tag ``ccfv.network``) and, when it had to be loaded to compute it,
    its spec. A version registered before the tag existed is loaded once and tagged (its identity is a
    function of its spec and patch size); one without a spec (``mlflow.pytorch``) has none."""
    tags = version.tags or {}
    if tags.get(T.NETWORK):
        return tags[T.NETWORK], None
    if tags.get(T.FLAVOR, FLAVOR_NAME) != FLAVOR_NAME:
        return None, None
    spec = load_version(version).spec
    if spec is None:
        return None, None
    identity = network_identity(spec.architecture, spec.kwargs, _patch_size(tags), tags.get(T.IMPORT_NORMALIZATION))
    set_version_tag(version.name, str(version.version), T.NETWORK, identity)
    return identity, spec


@dataclass
class _Networks:
    """Versions grouped by (bank, network identity): the candidates of each twin (versions that are
    not controls, by name and version), the keys that already have a control, and the specs loaded
    to compute an identity (by (name, version))."""

    candidates: dict[_NetworkKey, list[ModelVersion]] = field(default_factory=dict)
    controlled: set[_NetworkKey] = field(default_factory=set)
    specs: dict[tuple[str, str], NetworkSpec] = field(default_factory=dict)


def _group_by_network(versions: Sequence[ModelVersion]) -> _Networks:
    """Group ``versions`` by (bank, network identity); one that fails to load is passed over."""
    networks = _Networks()
    for v in sorted(versions, key=lambda mv: (mv.name, int(mv.version))):
        try:
            identity, known = network_of(v)
        except Exception as exc:  # a broken version: its own scoring reports it
            _logger.warning("random-init twin: %s/%s does not load (%s)", v.name, v.version, exc)
            continue
        if identity is None:
            continue
        if known is not None:
            networks.specs[(v.name, str(v.version))] = known
        key = ((v.tags or {}).get(T.BANK, DEFAULT_BANK), identity)
        if _is_control(v):
            networks.controlled.add(key)
        else:
            networks.candidates.setdefault(key, []).append(v)
    return networks


def register_twins(versions: Sequence[ModelVersion], *, seed: int = TWIN_SEED) -> list[ModelVersion]:
    """The random-init twin of every network among ``versions`` that has no control in its bank among
    them (``ccfv_twin``'s reference; no training). A twin is the network of the first version (by name
    and version) of its identity (:func:`~mlflow_ccfv.scoring.ranking.network_identity`: every
    constructor argument but the output channels, and the patch size), with random weights drawn from
    ``seed``, registered in that version's bank as ``<architecture>-random-init`` (an existing twin of the
    same identity, bank and seed is reused). Versions without a network specification (``mlflow.pytorch``)
    give none; one that fails to load is passed over (its scoring reports why). Safe when scorers race:
    each keeps the oldest twin of an identity and deletes the copy it made, if any
    (:func:`drop_duplicate_twins` for listings). Returns the twins, registered or reused."""
    networks = _group_by_network(versions)
    twins = []
    for key, candidates in sorted(networks.candidates.items()):
        if key in networks.controlled:
            continue
        twin = _twin_of_first_loadable(key, candidates, networks.specs, seed)
        if twin is not None:
            twins.append(twin)
    return twins


def _twin_of_first_loadable(
    key: _NetworkKey,
    candidates: Sequence[ModelVersion],
    specs: Mapping[tuple[str, str], NetworkSpec],
    seed: int,
) -> ModelVersion | None:
    """The twin of the first of ``candidates`` whose spec loads (``specs``: those already loaded)."""
    for v in candidates:
        try:
            spec = specs.get((v.name, str(v.version))) or load_version(v).spec
        except Exception as exc:  # a broken version: its own scoring reports it; try the next one
            _logger.warning("random-init twin: %s/%s does not load (%s)", v.name, v.version, exc)
            continue
        if spec is None:
            continue
        twin = _oldest_twin(spec, v, key, seed)
        _logger.info(
            "random-init twin of %s/%s (network %s): %s/%s (its network with random weights, seed %d; no training)",
            v.name,
            v.version,
            key[1],
            twin.name,
            twin.version,
            seed,
        )
        return twin
    return None


def _oldest_twin(spec: NetworkSpec, version: ModelVersion, key: _NetworkKey, seed: int) -> ModelVersion:
    """The oldest registered twin of ``version``'s network in its bank, registered first if there is none."""
    bank, identity = key
    tags = version.tags or {}
    name = bank_name(spec.architecture, CONTROL_SOURCE)
    wanted = {T.SOURCE_DATASET: CONTROL_SOURCE, T.BANK: bank, T.pretrain_tag("seed"): str(seed), T.NETWORK: identity}
    same = find_versions(name, wanted)
    if same:
        return same[0]
    mine = register_random_init(
        spec, _patch_size(tags), bank=bank, seed=seed, reuse=False, normalization=tags.get(T.IMPORT_NORMALIZATION)
    )
    # No conditional create in MLflow: a scorer racing this one may have registered the same
    # twin meanwhile. Every scorer keeps the oldest; the one that made a newer copy deletes it.
    twin = find_versions(name, wanted)[0]
    if str(twin.version) != str(mine.version):
        _logger.info(
            "%s/%s: registered twice by concurrent scorers; keeping version %s", name, mine.version, twin.version
        )
        delete_version(name, str(mine.version))
    return twin
