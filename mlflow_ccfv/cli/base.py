"""What every command shares: the click command class, error exits, training options."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from mlflow_ccfv.errors import CCFVError, OptionError
from mlflow_ccfv.options import parse_ints

__all__ = [
    "INPUT_ERRORS",
    "CCFVCommand",
    "allow_pickle_option",
    "exit_on_input_error",
    "train_config_from_options",
    "train_options",
]

#: The errors a command reports as one line ``<command> failed: ...`` (bad input, missing registry
#: entries, missing files); anything else is a bug and keeps its traceback. The exit status is the
#: error's :attr:`~mlflow_ccfv.errors.CCFVError.exit_code` (2 for the built-in kinds).
INPUT_ERRORS = (CCFVError, ValueError, LookupError, FileNotFoundError)


@contextmanager
def exit_on_input_error(command: str, errors: tuple[type[BaseException], ...] = INPUT_ERRORS) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``<command> failed: <message>`` on stderr and exit
    with the error kind's status (docs/cli.md)."""
    try:
        yield
    except errors as exc:
        click.echo(f"{command} failed: {exc}", err=True)
        sys.exit(exc.exit_code if isinstance(exc, CCFVError) else OptionError.exit_code)


def allow_pickle_option(f):
    """``--allow-pickle``: load ``mlflow.pytorch`` (pickled) models, which runs their code; absent, the
    environment variable ``MLFLOW_CCFV_ALLOW_PICKLE`` decides (``tracking.registry.pickle_allowed``)."""
    return click.option(
        "--allow-pickle",
        "allow_pickle",
        is_flag=True,
        default=None,
        help="Load mlflow.pytorch (pickled) models: this runs code saved by whoever logged them. "
        "Default: refused unless MLFLOW_CCFV_ALLOW_PICKLE=1.",
    )(f)


def train_options(steps: int, seed: int):
    """Decorator adding ``--steps``, ``--batch-size`` ... (strings, as MLproject passes them); see
    :func:`train_config_from_options`."""
    opts = [
        click.option("--steps", default=str(steps), show_default=True, help="Optimiser steps."),
        click.option("--batch-size", "batch_size", default="2", show_default=True, help="Patches per step."),
        click.option(
            "--patch-size",
            "patch_size",
            default="32,32,32",
            show_default=True,
            help="Patch (and sliding-window) size in voxels.",
        ),
        click.option(
            "--learning-rate",
            "learning_rate",
            default="0.003",
            show_default=True,
            help="Peak learning rate (polynomial decay to 0).",
        ),
        click.option(
            "--optimizer", default="adamw", show_default=True, help="adamw, or sgd (nnU-Net: Nesterov momentum 0.99)."
        ),
        click.option(
            "--foreground-fraction",
            "foreground_fraction",
            default="0.5",
            show_default=True,
            help="Share of patches centred on a foreground voxel.",
        ),
        click.option(
            "--seed",
            default=str(seed),
            show_default=True,
            help="Seed of initialisation, patch sampling and augmentation.",
        ),
    ]

    def decorate(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


def train_config_from_options(options: dict):
    """A :class:`~mlflow_ccfv.training.TrainConfig` from the command line's string options
    (``steps``, ``patch_size`` "32,32,32" ...; see :func:`train_options`)."""
    from mlflow_ccfv.training import TrainConfig

    try:
        return TrainConfig(
            steps=int(options["steps"]),
            batch_size=int(options["batch_size"]),
            patch_size=parse_ints(str(options["patch_size"]), "patch_size"),
            learning_rate=float(options["learning_rate"]),
            optimizer=str(options["optimizer"]),
            foreground_fraction=float(options["foreground_fraction"]),
            seed=int(options["seed"]),
        )
    except (TypeError, ValueError) as exc:
        raise OptionError(f"Bad training option: {exc}") from exc


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
                f"Unknown parameter {exc.option_name!r} for '{self.name}'. Valid parameters: {', '.join(valid)}.",
                ctx,
            ) from exc
