"""``mlflow-ccfv pretrain``: train a MONAI network on a source task and register it in the bank."""

from __future__ import annotations

import click

from mlflow_ccfv.cli import shared_options as shared
from mlflow_ccfv.cli.base import check_tracking_server, command, exit_on_input_error
from mlflow_ccfv.cli.types import IntTuple

__all__ = ["pretrain"]


@command()
@click.option("--dataset", required=True, help="Source task: a name under --data-root (Task03) or a folder path.")
@shared.data_root_option()
@shared.architecture_option()
@click.option(
    "--channels",
    default="",
    type=IntTuple(minimum=0, maximum=1023, empty_as_tuple=True),
    help="Input channels to keep, e.g. 0 (BRATS FLAIR only); default all.",
)
@click.option("--name", default="", help="Registered model name (default <architecture>-<source>).")
@shared.bank_option("Bank tag ccfv.bank of the new version.")
@shared.bool_option("--reuse", default=True, help="true: return an existing version with the same budget.")
@shared.optional_int_option(
    "--curve-every", "Measure the source Dice every N steps (0: at the end).", default="0", minimum=0
)
@shared.optional_int_option("--early-step", "Also register the step-N checkpoint as <name>-early.", minimum=1)
@shared.train_options(steps=300, seed=1)
@shared.device_option()
@shared.experiment_option()
def pretrain(**options) -> None:
    """Pre-train a network (nnU-Net-like: foreground-oversampled patches, Dice+CE, AdamW + poly) and register it."""
    from mlflow_ccfv.pipelines.pretrain import PretrainRequest, pretrain_checkpoints

    with exit_on_input_error("pretrain"):
        config = shared.train_config_from_options(options)
        check_tracking_server(options["experiment"])
        request = shared.request_from_options(
            PretrainRequest,
            options,
            source=options["dataset"],
            config=config,
            channels=tuple(options["channels"]) or None,
            curve_every=options["curve_every"] or 0,
        )
        versions = pretrain_checkpoints(request)
    from mlflow_ccfv.tracking import tags as T

    for mv in versions:
        click.echo(
            f"registered models:/{mv.name}/{mv.version} (source {mv.tags[T.SOURCE_DATASET]}, bank "
            f"{mv.tags[T.BANK]}, {mv.tags.get(T.pretrain_tag('steps'))} steps, source Dice "
            f"{mv.tags.get(T.PRETRAIN_SOURCE_DICE, 'not measured')})"
        )
