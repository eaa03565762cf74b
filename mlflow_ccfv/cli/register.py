"""``mlflow-ccfv register``: add a pre-trained network to the model bank (MLproject entry point ``register``)."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.errors import OptionError

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
def register(
    name,
    source_dataset,
    spec,
    small,
    checkpoint,
    random_init,
    seed,
    logged_model,
    bundle,
    nnunet,
    fold,
    bank,
    patch_size,
    description,
    tags,
    allow_pickle,
    experiment,
) -> None:
    """Register a MONAI network (spec + checkpoint, or a MONAI bundle), an nnU-Net v2 model or an
    mlflow.pytorch model as a bank version."""
    from mlflow_ccfv.pipelines.register import register_from_options

    with exit_on_input_error("register"):
        extra_tags = _parse_tags(tags)
        check_tracking_server(experiment)
        mv = register_from_options(
            name=name,
            source_dataset=source_dataset,
            spec=spec,
            small_spec=small,
            checkpoint=checkpoint,
            random_init=random_init,
            seed=seed,
            logged_model=logged_model,
            bundle=bundle,
            nnunet=nnunet,
            fold=fold,
            bank=bank,
            patch_size=patch_size or None,
            description=description or None,
            extra_tags=extra_tags,
            allow_pickle=allow_pickle,
        )
    click.echo(f"Registered models:/{mv.name}/{mv.version} (bank {bank})")
