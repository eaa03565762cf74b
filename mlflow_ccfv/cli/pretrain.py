"""``mlflow-ccfv pretrain``: train a MONAI network on a source task and register it in the bank."""

from __future__ import annotations

import sys

import click

from mlflow_ccfv.cli.base import CCFVCommand


def train_options(steps: int, seed: int, prefix: str = ""):
    """Decorator adding ``--<prefix>steps``, ``--<prefix>batch-size`` ... (strings, as MLproject passes them)."""
    dash, under = (f"{prefix}-", f"{prefix}_") if prefix else ("", "")
    opts = [
        click.option(f"--{dash}steps", f"{under}steps", default=str(steps), show_default=True, help="Optimiser steps."),
        click.option(f"--{dash}batch-size", f"{under}batch_size", default="2", show_default=True, help="Patches per step."),
        click.option(f"--{dash}patch-size", f"{under}patch_size", default="32,32,32", show_default=True,
                     help="Patch (and sliding-window) size in voxels."),
        click.option(f"--{dash}learning-rate", f"{under}learning_rate", default="0.003", show_default=True,
                     help="Peak learning rate (polynomial decay to 0)."),
        click.option(f"--{dash}optimizer", f"{under}optimizer", default="adamw", show_default=True,
                     help="adamw, or sgd (nnU-Net: Nesterov momentum 0.99)."),
        click.option(f"--{dash}foreground-fraction", f"{under}foreground_fraction", default="0.5", show_default=True,
                     help="Share of patches centred on a foreground voxel."),
        click.option(f"--{dash}seed", f"{under}seed", default=str(seed), show_default=True,
                     help="Seed of initialisation, patch sampling and augmentation."),
    ]

    def decorate(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


@click.command(cls=CCFVCommand)
@click.option("--dataset", required=True, help="Source task: a name under --data-root (Task03) or a folder path.")
@click.option("--data-root", "data_root", default="data", show_default=True, help="Folder holding the MSD task folders.")
@click.option("--architecture", default="UNet", show_default=True, help="MONAI network: UNet or UNETR (CPU-sized).")
@click.option("--channels", default="", help="Input channels to keep, e.g. 0 (BRATS FLAIR only); default all.")
@click.option("--name", default="", help="Registered model name (default <architecture>-<source>).")
@click.option("--bank", default="default", show_default=True, help="Bank tag ccfv.bank of the new version.")
@click.option("--reuse", default="true", show_default=True, help="true: return an existing version with the same budget.")
@train_options(steps=300, seed=1)
def pretrain(**options) -> None:
    """Pre-train a network (nnU-Net-like: foreground-oversampled patches, Dice+CE, AdamW + poly) and register it."""
    from mlflow_ccfv.tracking.entrypoints import parse_bool
    from mlflow_ccfv.tracking.finetuning import pretrain_and_register
    from mlflow_ccfv.tracking.workflows import train_config_from_options

    try:
        config = train_config_from_options(options)
        channels = [int(c) for c in options["channels"].split(",") if c.strip()] or None
        mv = pretrain_and_register(options["dataset"], options["architecture"], config, name=options["name"] or None,
                                   bank=options["bank"], data_root=options["data_root"] or None, channels=channels,
                                   reuse=parse_bool(options["reuse"], "reuse"))
    except (ValueError, LookupError, FileNotFoundError) as exc:
        click.echo(f"pretrain failed: {exc}", err=True)
        sys.exit(2)
    click.echo(f"registered models:/{mv.name}/{mv.version} (source {mv.tags['source_dataset']}, bank {mv.tags['ccfv.bank']}, "
               f"{mv.tags.get('pretrain.steps')} steps)")
