"""What every command shares: the click command class, the error exits, the tracking-server check and
the default names (experiments, data root).

The typed options live in :mod:`mlflow_ccfv.cli.types` and :mod:`mlflow_ccfv.cli.shared_options`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from mlflow_ccfv.errors import CCFVError, OptionError, cap_message

__all__ = [
    "DEFAULT_DATA_ROOT",
    "DEFAULT_EXPERIMENT",
    "DEMO_EXPERIMENT",
    "STUDY_EXPERIMENT",
    "INPUT_ERRORS",
    "CCFVCommand",
    "check_tracking_server",
    "command",
    "exit_code_of",
    "exit_on_input_error",
]

#: The errors a command reports as one line ``<command> failed: ...`` (bad input, missing registry
#: entries, missing files); anything else is a bug and keeps its traceback. The exit status is
#: :func:`exit_code_of` the error (docs/cli.md).
INPUT_ERRORS: tuple[type[BaseException], ...] = (CCFVError, ValueError, LookupError, FileNotFoundError)

#: ``--experiment`` of every command that writes to MLflow (``study``, ``demo``, ``log-dataset``: their own).
DEFAULT_EXPERIMENT = "ccfv"
STUDY_EXPERIMENT = "ccfv-study"
DEMO_EXPERIMENT = "ccfv-demo"
#: ``--data-root`` of every command that reads task folders (``verify``: ``.``; ``study``: ``data/synthetic``).
DEFAULT_DATA_ROOT = "data"


def exit_code_of(exc: BaseException) -> int:
    """The exit status of an input error: its class's ``exit_code``; a plain ``LookupError`` is a
    missing registry entry (4), any other ``ValueError``/``FileNotFoundError`` a bad option (2)."""
    from mlflow_ccfv.errors import RegistryError

    if isinstance(exc, CCFVError):
        return exc.exit_code
    if isinstance(exc, LookupError):
        return RegistryError.exit_code
    return OptionError.exit_code


@contextmanager
def exit_on_input_error(command: str, errors: tuple[type[BaseException], ...] = INPUT_ERRORS) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``<command> failed: <message>`` on stderr (capped
    at :data:`~mlflow_ccfv.errors.MESSAGE_LIMIT` characters) and exit with :func:`exit_code_of`; any
    other error raised because the tracking server stopped answering
    (:func:`~mlflow_ccfv.tracking.server.lost_tracking_server`) into its one line and exit status 6."""
    from mlflow_ccfv.tracking.server import lost_tracking_server

    try:
        yield
    except errors as exc:
        if isinstance(exc, (KeyError, IndexError)) and not isinstance(exc, CCFVError):
            raise  # a missing key or index is a bug, not an input error: keep the traceback
        click.echo(f"{command} failed: {cap_message(str(exc))}", err=True)
        sys.exit(exit_code_of(exc))
    except Exception as exc:
        lost = lost_tracking_server(exc)  # the server stopped answering mid-command: one line, not MLflow's
        if lost is None:
            raise
        click.echo(f"{command} failed: {cap_message(str(lost))}", err=True)
        sys.exit(lost.exit_code)


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


def command() -> Callable[[Callable[..., Any]], click.Command]:
    """The decorator of every ``mlflow-ccfv`` command: a click command of class :class:`CCFVCommand`, named
    after its function."""
    return click.command(cls=CCFVCommand)


def check_tracking_server(experiment: str | None = None, default: str = DEFAULT_EXPERIMENT) -> None:
    """Open the store as every command does first (:func:`~mlflow_ccfv.tracking.server.open_store`):
    refuse up front (exit 6, one line) when ``MLFLOW_TRACKING_URI`` is a server that does not answer,
    bound MLflow's HTTP retries, and close the runs of killed processes; then, for a command that writes,
    make its experiment the active one: ``experiment`` (its
    :func:`~mlflow_ccfv.cli.shared_options.experiment_option`; ``""``:
    ``default``) through :func:`~mlflow_ccfv.tracking.runs.use_experiment`."""
    from mlflow_ccfv.tracking.server import open_store

    open_store()
    if experiment is not None:
        from mlflow_ccfv.tracking.runs import use_experiment

        use_experiment(experiment or default, chosen=bool(experiment))
