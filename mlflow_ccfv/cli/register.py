"""``mlflow-ccfv register``: add a pre-trained network to the model bank (MLproject entry point ``register``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.errors import OptionError

if TYPE_CHECKING:
    from mlflow_ccfv.networks import NetworkSpec
    from mlflow_ccfv.pipelines.register import NetworkSource

__all__ = ["register"]


def _parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"--tag {item[:60]!r} is not KEY=VALUE.")
        tags[key] = value
    return tags


@command()
@click.option("--name", required=True, help="Registered model name (a new version is added).")
@click.option(
    "--source-dataset",
    required=True,
    help="The dataset the network was trained on (tag source_dataset), or 'none' for random init.",
)
@click.option(
    "--spec", default="", help='NetworkSpec as JSON text or a .json file: {"architecture": "UNet", "kwargs": {...}}.'
)
@click.option(
    "--small-spec",
    "small",
    default="",
    help="Instead of --spec: ARCHITECTURE:IN_CHANNELS:OUT_CHANNELS of the CPU-sized preset (e.g. UNet:1:3).",
)
@click.option(
    "--checkpoint", default="", help="state_dict file (torch.save; also {'state_dict': ...} or module.-prefixed)."
)
@shared.bool_option(
    "--random-init", help="true: register the randomly initialised network (seeded) instead of a checkpoint."
)
@shared.seed_option("--seed", "Seed of --random-init.")
@click.option(
    "--logged-model",
    default="",
    help="Instead of spec+checkpoint: a model logged with mlflow.pytorch (models:/m-... or runs:/...); needs "
    "--allow-pickle, and is converted to the pickle-free flavor (its spec read back, or given by --spec).",
)
@click.option(
    "--bundle",
    default="",
    help="Instead of spec+checkpoint: a MONAI bundle folder (configs/inference.json, "
    "models/model.pt); its inferer roi_size is the default patch size.",
)
@click.option(
    "--nnunet",
    default="",
    help="Instead of spec+checkpoint: an nnU-Net v2 trained-model folder "
    "(plans.json, dataset.json, fold_N/checkpoint_final.pth); its plans' patch size is the default.",
)
@click.option("--fold", default="0", show_default=True, help="The fold of --nnunet: 0-4 (any fold number) or all.")
@shared.bank_option("Bank name (tag ccfv.bank).")
@shared.window_size_option(
    "--patch-size", "Training patch / sliding-window ROI, e.g. 32,32,32 (default: UNETR img_size or 32,32,32)."
)
@click.option("--description", default="", help="Version description.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Extra version tag KEY=VALUE (repeatable); not in the namespaces mlflow-ccfv writes "
    "(transferability., finetune., ccfv., pretrain., weights.).",
)
@shared.allow_pickle_option()
@shared.experiment_option()
def register(**options) -> None:
    """Register a MONAI network (spec + checkpoint, or a MONAI bundle), an nnU-Net v2 model or an
    mlflow.pytorch model as a bank version."""
    from mlflow_ccfv.pipelines.register import BankEntry, register_version

    with exit_on_input_error("register"):
        entry = BankEntry(
            options["name"],
            options["source_dataset"],
            bank=options["bank"],
            patch_size=options["patch_size"] or None,
            description=options["description"] or None,
            extra_tags=_parse_tags(options["tags"]),
        )
        source = _network_source(options)
        check_tracking_server(options["experiment"])
        mv = register_version(source, entry)
    click.echo(f"Registered models:/{mv.name}/{mv.version} (bank {entry.bank})")


def _small_spec(text: str) -> NetworkSpec:
    """``ARCHITECTURE:IN:OUT`` -> :func:`~mlflow_ccfv.networks.small_spec`."""
    from mlflow_ccfv.networks import small_spec

    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise OptionError(
            f"--small-spec must look like UNet:1:3 (architecture:in_channels:out_channels); got {text!r}."
        )
    return small_spec(parts[0], int(parts[1]), int(parts[2]))


def _network(options: dict[str, Any]) -> NetworkSpec:
    """The network ``--spec`` (JSON or a .json file) or ``--small-spec`` names."""
    from mlflow_ccfv.networks.specs import spec_from_json_or_file

    return spec_from_json_or_file(options["spec"]) if options["spec"] else _small_spec(options["small"])


def _network_source(options: dict[str, Any]) -> NetworkSource:
    """The one network source the options name: --bundle, --nnunet (with --fold), --logged-model (its
    network optionally named by --spec/--small-spec), or --spec/--small-spec with --checkpoint or
    --random-init (with --seed)."""
    from mlflow_ccfv.pipelines.register import (
        BundleSource,
        CheckpointSource,
        LoggedModelSource,
        NnUNetSource,
        RandomInitSource,
    )

    spec, small, checkpoint, random_init = (options[k] for k in ("spec", "small", "checkpoint", "random_init"))
    bundle, nnunet, logged_model = options["bundle"], options["nnunet"], options["logged_model"]
    if bundle or nnunet:
        if sum(map(bool, (bundle, nnunet, spec or small or checkpoint or random_init, logged_model))) > 1:
            raise OptionError("Pass one network source: --bundle, --nnunet, --logged-model or --spec/--small-spec.")
        return BundleSource(bundle) if bundle else NnUNetSource(nnunet, options["fold"])
    if logged_model:
        if checkpoint or random_init or (spec and small):
            raise OptionError(
                "With --logged-model pass no --checkpoint/--random-init (the weights are the logged model's); "
                "--spec or --small-spec (one of them) only to name its network for the conversion."
            )
        return LoggedModelSource(logged_model, _network(options) if spec or small else None, options["allow_pickle"])
    if bool(spec) == bool(small):
        raise OptionError(
            "Pass exactly one of --spec (JSON or .json file) and --small-spec (e.g. UNet:1:3), or --logged-model."
        )
    net = _network(options)
    if bool(checkpoint) == random_init:
        raise OptionError("Pass exactly one of --checkpoint PATH and --random-init true.")
    return RandomInitSource(net, options["seed"]) if random_init else CheckpointSource(net, checkpoint)
