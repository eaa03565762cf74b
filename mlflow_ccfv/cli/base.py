"""What every command shares: the click command class, error exits, list options, training options."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

#: The errors a command reports as one line ``<command> failed: ...`` with exit status 2 (bad input,
#: missing registry entries, missing files); anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, LookupError, FileNotFoundError)


@contextmanager
def exit_on_input_error(command: str, errors: tuple[type[BaseException], ...] = INPUT_ERRORS) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``<command> failed: <message>`` on stderr, exit 2."""
    try:
        yield
    except errors as exc:
        click.echo(f"{command} failed: {exc}", err=True)
        sys.exit(2)


def split_list(text: str) -> list[str]:
    """A comma-separated option as a list, blanks dropped (``""`` -> ``[]``)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def train_options(steps: int, seed: int):
    """Decorator adding ``--steps``, ``--batch-size`` ... (strings, as MLproject passes them); see
    :func:`mlflow_ccfv.tracking.entrypoints.train_config_from_options`."""
    opts = [
        click.option("--steps", default=str(steps), show_default=True, help="Optimiser steps."),
        click.option("--batch-size", "batch_size", default="2", show_default=True, help="Patches per step."),
        click.option("--patch-size", "patch_size", default="32,32,32", show_default=True,
                     help="Patch (and sliding-window) size in voxels."),
        click.option("--learning-rate", "learning_rate", default="0.003", show_default=True,
                     help="Peak learning rate (polynomial decay to 0)."),
        click.option("--optimizer", default="adamw", show_default=True,
                     help="adamw, or sgd (nnU-Net: Nesterov momentum 0.99)."),
        click.option("--foreground-fraction", "foreground_fraction", default="0.5", show_default=True,
                     help="Share of patches centred on a foreground voxel."),
        click.option("--seed", default=str(seed), show_default=True,
                     help="Seed of initialisation, patch sampling and augmentation."),
    ]

    def decorate(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


class CCFVCommand(click.Command):
    """A click command whose unknown-option error lists every valid parameter.

    ``mlflow run -P name=value`` passes a misspelled ``name`` through as ``--name value``; this turns
    it into an error that names the valid parameters instead of a terse "No such option".
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            valid = sorted(
                opt.lstrip("-").replace("-", "_")
                for p in self.params
                if isinstance(p, click.Option)
                for opt in p.opts
                if opt.startswith("--")
            )
            raise click.UsageError(
                f"Unknown parameter {exc.option_name!r} for '{self.name}'. "
                f"Valid parameters: {', '.join(valid)}.",
                ctx,
            ) from exc
