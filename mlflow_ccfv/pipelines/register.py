"""The ``register`` pipeline: add a network to the bank from what the user has.

Exactly one :data:`NetworkSource` per call: a network specification with its weights
(:class:`CheckpointSource`, read with ``weights_only=True``) or randomly initialised
(:class:`RandomInitSource`), a model logged earlier with ``mlflow.pytorch`` (:class:`LoggedModelSource`:
loaded only when pickles are allowed, and converted to the pickle-free ``mlflow_ccfv`` flavor, with its
spec given or read back from the MONAI module), a MONAI bundle (:class:`BundleSource`) or an nnU-Net
fold (:class:`NnUNetSource`). What the new version is called and tagged is one :class:`BankEntry`.

Every call first cleans up after killed processes (PENDING LoggedModels of a killed ``register``,
RUNNING runs); registering a new name is create-or-get, so concurrent calls all succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import IntensityNormalization
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.networks import NetworkSpec, load_checkpoint, random_state_dict
from mlflow_ccfv.networks.bundle import read_bundle
from mlflow_ccfv.networks.nnunet import read_nnunet
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.register import Registration, register_logged_model, register_network
from mlflow_ccfv.tracking.runs import recover_crashed
from mlflow_ccfv.tracking.search import DEFAULT_BANK

__all__ = [
    "BankEntry",
    "BundleSource",
    "CheckpointSource",
    "LoggedModelSource",
    "NetworkSource",
    "NnUNetSource",
    "RandomInitSource",
    "check_user_tags",
    "register_imported",
    "register_version",
]

_logger = logging.getLogger(__name__)


def check_user_tags(tags: Mapping[str, Any] | None) -> None:
    """Refuse a user's extra version tag (``register --tag``) in a namespace this package writes itself
    (:data:`~mlflow_ccfv.tracking.tags.RESERVED_PREFIXES`): a hand-set ``transferability.rank.<dataset>``
    would be read as a score."""
    for key in tags or {}:
        prefix = T.reserved_prefix(str(key))
        if prefix is not None:
            raise OptionError(
                f"--tag {str(key)[:80]!r} is in the namespace {prefix!r}, which mlflow-ccfv writes itself "
                f"(reserved: {', '.join(T.RESERVED_PREFIXES)}); choose a key outside them."
            )


@dataclass(frozen=True)
class BankEntry:
    """What a new version is called and tagged: the registered model ``name``, its ``source_dataset`` tag,
    its ``bank``, the ``patch_size`` (sliding-window ROI; None: the source's own or the default), a
    ``description`` and the user's ``extra_tags`` (refused in a reserved namespace, :func:`check_user_tags`)."""

    name: str
    source_dataset: str
    bank: str = DEFAULT_BANK
    patch_size: tuple[int, ...] | None = None
    description: str | None = None
    extra_tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_user_tags(self.extra_tags)


@dataclass(frozen=True)
class CheckpointSource:
    """A network ``spec`` with the weights of a ``state_dict`` file (``checkpoint``)."""

    spec: NetworkSpec
    checkpoint: str


@dataclass(frozen=True)
class RandomInitSource:
    """A network ``spec`` with random weights drawn from ``seed`` (tag ``init=random(seed=<seed>)``)."""

    spec: NetworkSpec
    seed: int = 0


@dataclass(frozen=True)
class LoggedModelSource:
    """A model logged with ``mlflow.pytorch`` (``models:/m-...`` or ``runs:/...``), converted with ``spec``
    (None: read back from the MONAI module); loaded only with ``allow_pickle`` (None: the environment
    decides, :func:`~mlflow_ccfv.tracking.load.pickle_allowed`)."""

    uri: str
    spec: NetworkSpec | None = None
    allow_pickle: bool | None = None


@dataclass(frozen=True)
class BundleSource:
    """A MONAI bundle ``folder`` (``configs/inference.json``, ``models/model.pt``)."""

    folder: str


@dataclass(frozen=True)
class NnUNetSource:
    """An nnU-Net v2 trained-model ``folder`` and one of its folds (a fold number or ``all``)."""

    folder: str
    fold: str = "0"

    def __post_init__(self) -> None:
        fold = str(self.fold).strip()
        if not (fold.isdigit() or fold == "all"):
            raise OptionError(f"--fold must be a fold number (0-4) or 'all'; got {fold!r}.")
        object.__setattr__(self, "fold", fold)


#: Where a new version's network and weights come from: exactly one per ``register``.
NetworkSource = CheckpointSource | RandomInitSource | LoggedModelSource | BundleSource | NnUNetSource


def register_version(source: NetworkSource, entry: BankEntry) -> ModelVersion:
    """One ``register`` invocation: clean up after killed processes, then register ``source``'s network
    as a new version of ``entry``."""
    recover_crashed()
    if isinstance(source, BundleSource | NnUNetSource):
        return register_imported(source, entry)
    if isinstance(source, LoggedModelSource):
        return register_logged_model(
            source.uri,
            Registration(
                entry.name,
                entry.source_dataset,
                entry.bank,
                dict(entry.extra_tags),
                entry.description,
                entry.patch_size,
            ),
            allow_pickle=source.allow_pickle,
            spec=source.spec,
        )
    tags = dict(entry.extra_tags)
    if isinstance(source, RandomInitSource):
        state = random_state_dict(source.spec, source.seed)
        tags.setdefault("init", f"random(seed={source.seed})")
    else:
        state = load_checkpoint(source.checkpoint)
    return _register(source.spec, state, entry, tags, entry.patch_size)


def register_imported(source: BundleSource | NnUNetSource, entry: BankEntry) -> ModelVersion:
    """Register a MONAI bundle or an nnU-Net fold; its ``info`` becomes ``import.*`` tags (its intensity
    normalisation ``import.normalization``, checked here), its ROI the patch size (unless the entry has one)."""
    if isinstance(source, BundleSource):
        imported = read_bundle(source.folder)
    else:
        imported = read_nnunet(source.folder, source.fold)
    records = imported.info.get("normalization")
    if records:  # checked now: scoring and fine-tuning apply it to the target's images
        try:
            IntensityNormalization.from_records(records)
        except ValueError as exc:
            raise OptionError(
                f"{source.folder}: its intensity normalisation cannot be reproduced ({exc}); scoring it on "
                "differently normalised input would say little about it."
            ) from exc
    tags = T.import_tags({k: v for k, v in imported.info.items() if k != "patch_size"})
    patch_size = entry.patch_size or imported.info.get("patch_size")
    return _register(imported.spec, imported.state_dict, entry, {**tags, **entry.extra_tags}, patch_size)


def _register(
    spec: NetworkSpec, state: dict, entry: BankEntry, tags: dict[str, Any], patch_size: Sequence[int] | str | None
) -> ModelVersion:
    return register_network(
        spec,
        state,
        entry.name,
        entry.source_dataset,
        bank=entry.bank,
        extra_tags=tags,
        description=entry.description,
        patch_size=patch_size,
    )
