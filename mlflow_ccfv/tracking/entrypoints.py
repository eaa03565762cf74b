"""What the commands do with their (string) parameters: ``register``, ``score``, the training budgets.

MLproject parameters arrive as strings (``-P random_init=true``); these functions turn them into
calls of the registry / scoring API so that :mod:`mlflow_ccfv.cli` holds no logic.
"""

from __future__ import annotations

import json
import logging

import torch

from mlflow_ccfv.features.networks import NetworkSpec, build_network, small_spec as _small_spec
from mlflow_ccfv.tracking.flavor import load_checkpoint, spec_from_json_or_file
from mlflow_ccfv.tracking.registry import register_logged_model, register_network

_logger = logging.getLogger(__name__)

#: Version tags ``import.<key>`` record where an imported network came from (``import.format``,
#: ``import.source``, ``import.normalization`` ...): the ``info`` of :mod:`mlflow_ccfv.networks.bundle` /
#: :mod:`mlflow_ccfv.networks.nnunet`.
IMPORT_TAG_PREFIX = "import."

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(value, name: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no) as MLproject passes them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false; got {value!r}.")


def parse_small_spec(text: str) -> NetworkSpec:
    """``ARCHITECTURE:IN:OUT`` -> :func:`~mlflow_ccfv.features.networks.small_spec`."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"--small-spec must look like UNet:1:3 (architecture:in_channels:out_channels); got {text!r}.")
    return _small_spec(parts[0], int(parts[1]), int(parts[2]))


def random_state_dict(spec: NetworkSpec, seed: int) -> dict[str, torch.Tensor]:
    """The weights of ``spec`` randomly initialised under ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(spec).state_dict()


def register_from_options(
    *,
    name: str,
    source_dataset: str,
    spec: str = "",
    small_spec: str = "",
    checkpoint: str = "",
    random_init="false",
    seed: int = 0,
    logged_model: str = "",
    bank: str = "default",
    patch_size=None,
    description: str | None = None,
    extra_tags: dict | None = None,
    bundle: str = "",
    nnunet: str = "",
    fold: str = "0",
):
    """One ``register`` invocation: exactly one of (spec|small_spec)+(checkpoint|random_init), logged_model,
    bundle (a MONAI bundle folder) or nnunet (an nnU-Net v2 trained-model folder, one ``fold``)."""
    random_init = parse_bool(random_init, "random_init")
    if bundle or nnunet:
        if sum(map(bool, (bundle, nnunet, spec or small_spec or checkpoint or random_init, logged_model))) > 1:
            raise ValueError("Pass one network source: --bundle, --nnunet, --logged-model or --spec/--small-spec.")
        return _register_imported(bundle, nnunet, fold, name=name, source_dataset=source_dataset, bank=bank,
                                  patch_size=patch_size, description=description, extra_tags=extra_tags)
    if logged_model:
        if spec or small_spec or checkpoint or random_init:
            raise ValueError("Pass either --logged-model or a network (--spec/--small-spec with --checkpoint/--random-init), not both.")
        return register_logged_model(
            logged_model, name, source_dataset, bank=bank, extra_tags=extra_tags,
            description=description, patch_size=patch_size,
        )
    if bool(spec) == bool(small_spec):
        raise ValueError("Pass exactly one of --spec (JSON or .json file) and --small-spec (e.g. UNet:1:3), or --logged-model.")
    net = spec_from_json_or_file(spec) if spec else parse_small_spec(small_spec)
    if bool(checkpoint) == random_init:
        raise ValueError("Pass exactly one of --checkpoint PATH and --random-init true.")
    tags = dict(extra_tags or {})
    if random_init:
        state = random_state_dict(net, seed)
        tags.setdefault("init", f"random(seed={seed})")
    else:
        state = load_checkpoint(checkpoint)
    return register_network(
        net, state, name, source_dataset, bank=bank, extra_tags=tags,
        description=description, patch_size=patch_size,
    )


def _register_imported(bundle: str, nnunet: str, fold: str, *, name, source_dataset, bank, patch_size,
                       description, extra_tags):
    """Register a MONAI bundle or an nnU-Net fold; its ``info`` becomes ``import.*`` tags, its ROI the patch size."""
    if bundle:
        from mlflow_ccfv.networks.bundle import read_bundle

        imported = read_bundle(bundle)
    else:
        from mlflow_ccfv.networks.nnunet import read_nnunet

        fold = str(fold).strip()
        if not (fold.isdigit() or fold == "all"):
            raise ValueError(f"--fold must be a fold number (0-4) or 'all'; got {fold!r}.")
        imported = read_nnunet(nnunet, fold)
    tags = {
        IMPORT_TAG_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
        for key, value in imported.info.items()
        if value is not None and key != "patch_size"
    }
    return register_network(
        imported.spec, imported.state_dict, name, source_dataset, bank=bank, extra_tags={**tags, **(extra_tags or {})},
        description=description, patch_size=patch_size or imported.info.get("patch_size"),
    )


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated integers (e.g. 32,32,32); got {text!r}.") from exc


def train_config_from_options(options: dict):
    """A :class:`~mlflow_ccfv.study.training.TrainConfig` from the command line's string options
    (``steps``, ``patch_size`` "32,32,32" ...; see :func:`mlflow_ccfv.cli.base.train_options`)."""
    from mlflow_ccfv.study.training import TrainConfig

    try:
        return TrainConfig(
            steps=int(options["steps"]), batch_size=int(options["batch_size"]),
            patch_size=parse_ints(str(options["patch_size"]), "patch_size"),
            learning_rate=float(options["learning_rate"]), optimizer=str(options["optimizer"]),
            foreground_fraction=float(options["foreground_fraction"]), seed=int(options["seed"]),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Bad training option: {exc}") from exc


def score_from_options(
    *,
    dataset: str,
    data_root: str = "data",
    bank: str = "default",
    models: str = "",
    methods: str = "",
    split: str = "train",
    roi_size: str = "",
    overlap: str = "",
    global_samples: str = "",
    layer_budgets: str = "",
    sampler_seed: str = "",
    force="false",
    cache_dir: str = "",
    verify="true",
):
    """One ``score`` invocation: resolve and verify the target, score the bank (or ``models``), log.

    Returns the ranked table (failed versions have ``error`` set).
    """
    from mlflow_ccfv.data import MSDDataset
    from mlflow_ccfv.tracking.datasets import make_target
    from mlflow_ccfv.tracking.registry import resolve_versions
    from mlflow_ccfv.tracking.scoring import parse_methods, score_versions

    method_list = parse_methods(methods)  # validate before any work
    overrides: dict = {}
    if roi_size:
        overrides["roi_size"] = parse_ints(roi_size, "roi_size")
    if overlap:
        overrides["overlap"] = float(overlap)
    if global_samples:
        overrides["global_samples"] = int(global_samples)
    if layer_budgets:
        overrides["layer_budgets"] = parse_ints(layer_budgets, "layer_budgets")
    if sampler_seed:
        overrides["seed"] = int(sampler_seed)
    if overrides:
        from mlflow_ccfv.features import SamplerConfig

        SamplerConfig(**overrides)  # validate the values now
    uris = [m.strip() for m in models.split(",") if m.strip()]
    versions = resolve_versions(uris, bank=bank)
    ds = MSDDataset.load(dataset, data_root=data_root or None)
    if parse_bool(verify, "verify"):
        ds.verify()
    target = make_target(ds, split)
    _logger.info("scoring %d version(s) on %s (%s split, %d cases, digest %s)",
                 len(versions), target.name, split, len(target.case_ids), target.digest)
    return score_versions(versions, target, method_list, overrides or None, force=parse_bool(force, "force"),
                          cache_dir=cache_dir or None)
