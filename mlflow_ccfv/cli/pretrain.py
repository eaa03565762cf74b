"""``mlflow-ccfv pretrain``: train a MONAI network on a source task and register it in the bank."""

from __future__ import annotations

import click

from mlflow_ccfv.cli.base import CCFVCommand, exit_on_input_error, train_options


@click.command(cls=CCFVCommand)
@click.option("--dataset", required=True, help="Source task: a name under --data-root (Task03) or a folder path.")
@click.option(
    "--data-root", "data_root", default="data", show_default=True, help="Folder holding the MSD task folders."
)
@click.option("--architecture", default="UNet", show_default=True, help="MONAI network: UNet or UNETR (CPU-sized).")
@click.option("--channels", default="", help="Input channels to keep, e.g. 0 (BRATS FLAIR only); default all.")
@click.option("--name", default="", help="Registered model name (default <architecture>-<source>).")
@click.option("--bank", default="default", show_default=True, help="Bank tag ccfv.bank of the new version.")
@click.option(
    "--reuse", default="true", show_default=True, help="true: return an existing version with the same budget."
)
@click.option(
    "--curve-every", "curve_every", default="0", help="Measure the source Dice every N steps (0: at the end)."
)
@click.option("--early-step", "early_step", default="", help="Also register the step-N checkpoint as <name>-early.")
@train_options(steps=300, seed=1)
def pretrain(**options) -> None:
    """Pre-train a network (nnU-Net-like: foreground-oversampled patches, Dice+CE, AdamW + poly) and register it."""
    from mlflow_ccfv.cli.base import train_config_from_options
    from mlflow_ccfv.options import parse_bool, parse_ints
    from mlflow_ccfv.pipelines.pretrain import pretrain_checkpoints

    with exit_on_input_error("pretrain"):
        config = train_config_from_options(options)
        channels = list(parse_ints(options["channels"], "channels")) or None
        versions = pretrain_checkpoints(
            options["dataset"],
            options["architecture"],
            config,
            name=options["name"] or None,
            bank=options["bank"],
            data_root=options["data_root"] or None,
            channels=channels,
            reuse=parse_bool(options["reuse"], "reuse"),
            curve_every=int(options["curve_every"] or 0),
            early_step=int(options["early_step"]) if options["early_step"] else None,
        )
    for mv in versions:
        click.echo(
            f"registered models:/{mv.name}/{mv.version} (source {mv.tags['source_dataset']}, bank "
            f"{mv.tags['ccfv.bank']}, {mv.tags.get('pretrain.steps')} steps, source Dice "
            f"{mv.tags.get('pretrain.source_dice', 'not measured')})"
        )
