"""``mlflow-ccfv pretrain``: train a MONAI network on a source task and register it in the bank."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import (
    CCFVCommand,
    IntTuple,
    OptionalInt,
    architecture_option,
    bool_option,
    check_tracking_server,
    data_root_option,
    device_option,
    exit_on_input_error,
    experiment_option,
    train_options,
)

__all__ = ["pretrain"]


@click.command(cls=CCFVCommand)
@click.option("--dataset", required=True, help="Source task: a name under --data-root (Task03) or a folder path.")
@data_root_option()
@architecture_option
@click.option(
    "--channels",
    default="",
    type=IntTuple(minimum=0, maximum=1023, empty_as_tuple=True),
    help="Input channels to keep, e.g. 0 (BRATS FLAIR only); default all.",
)
@click.option("--name", default="", help="Registered model name (default <architecture>-<source>).")
@click.option("--bank", default="default", show_default=True, help="Bank tag ccfv.bank of the new version.")
@bool_option("--reuse", default=True, help="true: return an existing version with the same budget.")
@click.option(
    "--curve-every",
    "curve_every",
    default="0",
    type=OptionalInt(0),
    help="Measure the source Dice every N steps (0: at the end).",
)
@click.option(
    "--early-step",
    "early_step",
    default="",
    type=OptionalInt(1),
    help="Also register the step-N checkpoint as <name>-early.",
)
@train_options(steps=300, seed=1)
@device_option()
@experiment_option()
def pretrain(**options) -> None:
    """Pre-train a network (nnU-Net-like: foreground-oversampled patches, Dice+CE, AdamW + poly) and register it."""
    from mlflow_ccfv.cli.base import train_config_from_options
    from mlflow_ccfv.pipelines.pretrain import PretrainRequest, pretrain_checkpoints

    with exit_on_input_error("pretrain"):
        config = train_config_from_options(options)
        check_tracking_server(options["experiment"])
        request = PretrainRequest(
            options["dataset"],
            options["architecture"],
            config,
            name=options["name"] or None,
            bank=options["bank"],
            data_root=options["data_root"] or None,
            channels=tuple(options["channels"]) or None,
            reuse=options["reuse"],
            curve_every=options["curve_every"] or 0,
            early_step=options["early_step"],
            device=options["device"],
        )
        versions = pretrain_checkpoints(request)
    from mlflow_ccfv.tracking import tags as T

    for mv in versions:
        click.echo(
            f"registered models:/{mv.name}/{mv.version} (source {mv.tags[T.SOURCE_DATASET]}, bank "
            f"{mv.tags[T.BANK]}, {mv.tags.get(T.pretrain_tag('steps'))} steps, source Dice "
            f"{mv.tags.get(T.PRETRAIN_SOURCE_DICE, 'not measured')})"
        )
