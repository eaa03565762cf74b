"""The ``register`` pipeline: add a network to the bank from what the user has.

Exactly one source per call: a network specification (``--spec`` JSON or ``--small-spec`` preset) with
its weights (``--checkpoint``, read with ``weights_only=True``) or randomly initialised
(``--random-init``), or a model logged earlier with ``mlflow.pytorch`` (``--logged-model``: loaded
only with ``--allow-pickle``, and converted to the pickle-free ``mlflow_ccfv`` flavor, with the spec
given by ``--spec``/``--small-spec`` or read back from the MONAI module).

Every call first cleans up after killed processes (PENDING LoggedModels of a killed ``register``,
RUNNING runs); registering a new name is create-or-get, so concurrent calls all succeed.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import IntensityNormalization
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.networks import NetworkSpec, load_checkpoint, random_state_dict, small_spec
from mlflow_ccfv.networks.bundle import read_bundle
from mlflow_ccfv.networks.nnunet import read_nnunet
from mlflow_ccfv.networks.specs import spec_from_json_or_file
from mlflow_ccfv.options import parse_bool
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.register import Registration, register_logged_model, register_network
from mlflow_ccfv.tracking.runs import recover_crashed

__all__ = ["check_user_tags", "parse_small_spec", "register_from_options", "register_imported"]

_logger = logging.getLogger(__name__)


def parse_small_spec(text: str) -> NetworkSpec:
    """``ARCHITECTURE:IN:OUT`` -> :func:`~mlflow_ccfv.networks.small_spec`."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise OptionError(
            f"--small-spec must look like UNet:1:3 (architecture:in_channels:out_channels); got {text!r}."
        )
    return small_spec(parts[0], int(parts[1]), int(parts[2]))


def check_user_tags(tags: dict[str, Any] | None) -> None:
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


def register_imported(
    bundle: str = "",
    nnunet: str = "",
    fold: str = "0",
    *,
    name: str,
    source_dataset: str,
    bank: str,
    patch_size: str | None = None,
    description: str | None = None,
    extra_tags: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a MONAI bundle or an nnU-Net fold; its ``info`` becomes ``import.*`` tags (its intensity
    normalisation ``import.normalization``, checked here), its ROI the patch size."""
    if bundle:
        imported = read_bundle(bundle)
    else:
        fold = str(fold).strip()
        if not (fold.isdigit() or fold == "all"):
            raise OptionError(f"--fold must be a fold number (0-4) or 'all'; got {fold!r}.")
        imported = read_nnunet(nnunet, fold)
    records = imported.info.get("normalization")
    if records:  # checked now: scoring and fine-tuning apply it to the target's images
        try:
            IntensityNormalization.from_records(records)
        except ValueError as exc:
            raise OptionError(
                f"{bundle or nnunet}: its intensity normalisation cannot be reproduced ({exc}); scoring it on "
                "differently normalised input would say little about it."
            ) from exc
    tags = T.import_tags({k: v for k, v in imported.info.items() if k != "patch_size"})
    return register_network(
        imported.spec,
        imported.state_dict,
        name,
        source_dataset,
        bank=bank,
        extra_tags={**tags, **(extra_tags or {})},
        description=description,
        patch_size=patch_size or imported.info.get("patch_size"),
    )


def register_from_options(
    *,
    name: str,
    source_dataset: str,
    spec: str = "",
    small_spec: str = "",
    checkpoint: str = "",
    random_init: bool | str = "false",
    seed: int = 0,
    logged_model: str = "",
    bank: str = "default",
    patch_size: str | None = None,
    description: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    bundle: str = "",
    nnunet: str = "",
    fold: str = "0",
    allow_pickle: bool | None = None,
) -> ModelVersion:
    """One ``register`` invocation: exactly one of (spec|small_spec)+(checkpoint|random_init), logged_model
    (optionally with spec|small_spec to convert it; needs ``allow_pickle``), bundle (a MONAI bundle
    folder) or nnunet (an nnU-Net v2 trained-model folder, one ``fold``). ``extra_tags`` may not use a
    reserved namespace (:func:`check_user_tags`)."""
    random_init = parse_bool(random_init, "random_init")
    check_user_tags(extra_tags)
    recover_crashed()
    if bundle or nnunet:
        if sum(map(bool, (bundle, nnunet, spec or small_spec or checkpoint or random_init, logged_model))) > 1:
            raise OptionError("Pass one network source: --bundle, --nnunet, --logged-model or --spec/--small-spec.")
        return register_imported(
            bundle,
            nnunet,
            fold,
            name=name,
            source_dataset=source_dataset,
            bank=bank,
            patch_size=patch_size,
            description=description,
            extra_tags=extra_tags,
        )
    if logged_model:
        if checkpoint or random_init or (spec and small_spec):
            raise OptionError(
                "With --logged-model pass no --checkpoint/--random-init (the weights are the logged model's); "
                "--spec or --small-spec (one of them) only to name its network for the conversion."
            )
        return register_logged_model(
            logged_model,
            Registration(name, source_dataset, bank, extra_tags, description, patch_size),
            allow_pickle=allow_pickle,
            spec=(spec_from_json_or_file(spec) if spec else parse_small_spec(small_spec))
            if spec or small_spec
            else None,
        )
    if bool(spec) == bool(small_spec):
        raise OptionError(
            "Pass exactly one of --spec (JSON or .json file) and --small-spec (e.g. UNet:1:3), or --logged-model."
        )
    net = spec_from_json_or_file(spec) if spec else parse_small_spec(small_spec)
    if bool(checkpoint) == random_init:
        raise OptionError("Pass exactly one of --checkpoint PATH and --random-init true.")
    tags = dict(extra_tags or {})
    if random_init:
        state = random_state_dict(net, seed)
        tags.setdefault("init", f"random(seed={seed})")
    else:
        state = load_checkpoint(checkpoint)
    return register_network(
        net,
        state,
        name,
        source_dataset,
        bank=bank,
        extra_tags=tags,
        description=description,
        patch_size=patch_size,
    )
