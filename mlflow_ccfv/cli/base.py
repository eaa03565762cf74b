"""What every command shares: the click command class, typed options, error exits, training options.

Options are typed with click's own machinery (``click.ParamType``, ranges, choices, ``envvar=``), so a
bad value is refused before any work with the option's name in the message. ``mlflow run`` passes
every ``-P`` value as text and an unset optional one as ``""``; the types below read ``""`` as "not
given" (``None``), so the same commands work from a shell and from an MLproject entry point.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from mlflow_ccfv.errors import CCFVError, OptionError, cap_message
from mlflow_ccfv.options import (
    ExecutorKind,
    Optimizer,
    StrEnum,
    parse_bool,
    parse_device,
    parse_float,
    parse_int,
    parse_ints,
)

__all__ = [
    "DEFAULT_DATA_ROOT",
    "DEFAULT_EXPERIMENT",
    "DEMO_EXPERIMENT",
    "STUDY_EXPERIMENT",
    "INPUT_ERRORS",
    "BoolText",
    "CCFVCommand",
    "EnumChoice",
    "IntTuple",
    "MethodsText",
    "OptionalFloat",
    "OptionalInt",
    "allow_pickle_option",
    "architecture_option",
    "bool_option",
    "cache_dir_option",
    "data_root_option",
    "target_option",
    "device_option",
    "experiment_option",
    "json_option",
    "ray_options",
    "RankBy",
    "exit_code_of",
    "exit_on_input_error",
    "train_config_from_options",
    "train_options",
]

#: The errors a command reports as one line ``<command> failed: ...`` (bad input, missing registry
#: entries, missing files); anything else is a bug and keeps its traceback. The exit status is
#: :func:`exit_code_of` the error (docs/cli.md).
INPUT_ERRORS: tuple[type[BaseException], ...] = (CCFVError, ValueError, LookupError, FileNotFoundError)

#: Environment variables documented in docs/cli.md.
DATA_ROOT_ENV = "MLFLOW_CCFV_DATA"
CACHE_ENV = "MLFLOW_CCFV_CACHE"
#: MLflow's own variable naming the experiment; here it is the default of ``--experiment``.
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
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


def allow_pickle_option(f):
    """``--allow-pickle``: load ``mlflow.pytorch`` (pickled) models, which runs their code; absent, the
    environment variable ``MLFLOW_CCFV_ALLOW_PICKLE`` decides (``tracking.load.pickle_allowed``)."""
    return bool_option(
        "--allow-pickle",
        default=None,
        help="Load mlflow.pytorch (pickled) models: this runs code saved by whoever logged them. "
        "Default: refused unless MLFLOW_CCFV_ALLOW_PICKLE=1.",
    )(f)


def bool_option(flag: str, *, default: bool | None = False, help: str):
    """A boolean option that takes a value, ``--force true`` / ``--force false`` (as ``mlflow run -P
    force=true`` passes it; :class:`BoolText`), and alone, ``--force``, means true. ``default=None``:
    not given (the command decides)."""
    return click.option(
        flag,
        flag.removeprefix("--").replace("-", "_"),
        type=BoolText(),
        default=None if default is None else str(default).lower(),
        is_flag=False,
        flag_value="true",
        show_default=default is not None,
        help=help,
    )


def json_option(what: str = "the table"):
    """``--json`` (a :func:`bool_option`): print JSON records instead of ``what`` as Markdown."""
    return bool_option("--json", help=f"true: print JSON records instead of {what} as Markdown.")


# --------------------------------------------------------------------------- typed options
def _option_name(param: click.Parameter | None) -> str:
    return f"--{param.name.replace('_', '-')}" if param is not None and param.name else "value"


class OptionalInt(click.ParamType):
    """An integer in ``[minimum, maximum]`` (:func:`~mlflow_ccfv.options.parse_int`); ``""`` (an unset
    MLproject parameter) is ``None``."""

    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            return parse_int(value, _option_name(param), minimum=self.minimum, maximum=self.maximum)
        except OptionError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "INTEGER"


class OptionalFloat(click.ParamType):
    """A finite number in ``[minimum, maximum]`` (``max_open``: below ``maximum``;
    :func:`~mlflow_ccfv.options.parse_float`); ``""`` is ``None``."""

    name = "float"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *, max_open: bool = False):
        self.minimum, self.maximum, self.max_open = minimum, maximum, max_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            return parse_float(
                value, _option_name(param), minimum=self.minimum, maximum=self.maximum, max_open=self.max_open
            )
        except OptionError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "FLOAT"


class IntTuple(click.ParamType):
    """``32,32,32`` (or ``32x32x32``) via :func:`~mlflow_ccfv.options.parse_ints`: ``length`` integers in
    ``[minimum, maximum]``; ``""`` is ``None`` (or ``()`` with ``empty_as_tuple``)."""

    name = "integers"

    def __init__(
        self,
        length: int | None = None,
        minimum: int | None = 1,
        maximum: int | None = None,
        *,
        empty_as_tuple: bool = False,
    ):
        self.length, self.minimum, self.maximum, self.empty_as_tuple = length, minimum, maximum, empty_as_tuple

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...] | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return () if self.empty_as_tuple else None
        if isinstance(value, tuple):
            return value
        try:
            return parse_ints(
                value, _option_name(param), length=self.length, minimum=self.minimum, maximum=self.maximum
            )
        except OptionError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "N,N,N" if self.length == 3 else "N[,N...]"


class BoolText(click.ParamType):
    """``true``/``false`` as MLproject passes them (also 1/0, yes/no, on/off; ``""`` = false)."""

    name = "boolean"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        try:
            return parse_bool(value, _option_name(param))
        except OptionError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "[true|false]"


class DeviceType(click.ParamType):
    """``cpu``, ``cuda`` or ``cuda:N``; ``""`` = CUDA when available, else the CPU (``None``)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | None:
        try:
            return parse_device(value)
        except OptionError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "[cpu|cuda|cuda:N]"


class EnumChoice(click.Choice):
    """A ``click.Choice`` of a :class:`~mlflow_ccfv.options.StrEnum`'s values, converted to the member."""

    def __init__(self, enum_type: type[StrEnum], case_sensitive: bool = True):
        self.enum_type = enum_type
        super().__init__([member.value for member in enum_type], case_sensitive=case_sensitive)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self.enum_type(super().convert(value, param, ctx))


class MethodsText(click.ParamType):
    """Comma-separated estimator names (``all``, ``default``, ``""``: :func:`~mlflow_ccfv.scoring.parse_methods`),
    checked here and passed on as typed."""

    name = "methods"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from mlflow_ccfv.scoring import parse_methods

        try:
            parse_methods(value)
        except OptionError as exc:
            self.fail(str(exc), param, ctx)
        return value


class RankBy(click.ParamType):
    """``--rank-by``: ``auto``, an estimator, or a ranking computed from stored scores (``<estimator>_twin``,
    ``rank_aggregate``); the names come from the method catalogue (imported on first use: it loads the
    statistics stack)."""

    name = "ranking"

    def allowed(self) -> list[str]:
        from mlflow_ccfv.estimators import METHODS
        from mlflow_ccfv.scoring.ranking import AUTO_RANK
        from mlflow_ccfv.study.variants import VARIANTS

        return [AUTO_RANK, *VARIANTS, *METHODS]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        allowed = self.allowed()
        if value not in allowed:
            self.fail(f"{value!r} is not a ranking; choose one of {', '.join(allowed)}.", param, ctx)
        return str(value)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "[auto|ccfv_twin|METHOD]"


def _env_default(env: str, default: str) -> Callable[[click.Context, click.Parameter, Any], str]:
    """``""`` (an unset MLproject parameter) -> ``$env`` or ``default``."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> str:
        return str(value) if value else os.environ.get(env) or default

    return callback


def target_option():
    """``--dataset``: the target of ``score``, ``select`` and ``finetune`` (a task name under ``--data-root``, a
    folder path, or a logged dataset ``runs:/<run_id>/<folder>``)."""
    return click.option(
        "--dataset",
        required=True,
        help="Target: a task name under --data-root (Task07), a folder path, or a logged dataset "
        "(runs:/<run_id>/<folder>).",
    )


def data_root_option(default: str = DEFAULT_DATA_ROOT, help_text: str = "Folder holding the MSD task folders."):
    """``--data-root`` (``$MLFLOW_CCFV_DATA``, then ``default``)."""
    return click.option(
        "--data-root",
        "data_root",
        default=default,
        envvar=DATA_ROOT_ENV,
        show_envvar=True,
        show_default=True,
        type=click.Path(file_okay=False),
        callback=_env_default(DATA_ROOT_ENV, default),
        help=help_text,
    )


def steps_options(pretrain: int, finetune: int):
    """``--pretrain-steps`` and ``--finetune-steps`` (the budgets of a demo or a study), with their defaults."""

    def decorate(f):
        for flag, name, default, what in (
            ("--finetune-steps", "finetune_steps", finetune, "Fine-tuning"),
            ("--pretrain-steps", "pretrain_steps", pretrain, "Pre-training"),
        ):
            f = click.option(
                flag,
                name,
                default=default,
                type=click.IntRange(min=1),
                show_default=True,
                help=f"{what} steps per model.",
            )(f)
        return f

    return decorate


def cache_dir_option():
    """``--cache-dir`` (``$MLFLOW_CCFV_CACHE``, then ``.ccfv-cache``)."""
    return click.option(
        "--cache-dir",
        "cache_dir",
        default=".ccfv-cache",
        envvar=CACHE_ENV,
        show_envvar=True,
        show_default=True,
        type=click.Path(file_okay=False),
        callback=_env_default(CACHE_ENV, ".ccfv-cache"),
        help="Feature cache folder (entries are checksummed and recomputed when corrupt).",
    )


def experiment_option(default: str = DEFAULT_EXPERIMENT):
    """``--experiment``: the MLflow experiment the command's runs and models go to: the option, else
    ``$MLFLOW_EXPERIMENT_NAME``, else ``default``. The value stays ``""`` when neither is given, so that
    :func:`check_tracking_server` can tell a chosen experiment from the default."""
    return click.option(
        "--experiment",
        default="",
        envvar=EXPERIMENT_ENV,
        show_envvar=True,
        help=f"MLflow experiment of the command's runs and models; default {default} (a run started by "
        "mlflow run keeps its own).",
    )


def _check_architecture(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from mlflow_ccfv.networks.specs import SUPPORTED_ARCHITECTURES  # imports torch: only when the command runs

    if value not in SUPPORTED_ARCHITECTURES:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(SUPPORTED_ARCHITECTURES)}.", ctx, param)
    return value


def architecture_option(f):
    """``--architecture``: a MONAI network of :data:`~mlflow_ccfv.networks.specs.SUPPORTED_ARCHITECTURES`."""
    return click.option(
        "--architecture",
        default="UNet",
        show_default=True,
        callback=_check_architecture,
        help="MONAI network, CPU-sized: UNet, BasicUNet, DynUNet, UNETR, SwinUNETR, SegResNet, SegResNetDS.",
    )(f)


def ray_options(f):
    """``--executor``, ``--ray-address``, ``--num-cpus`` and ``--num-gpus`` (score, study)."""
    for option in reversed(
        [
            click.option(
                "--executor",
                default=ExecutorKind.SERIAL.value,
                show_default=True,
                type=EnumChoice(ExecutorKind),
                help="serial: in this process; ray: one Ray task per scored version (and, in a study, per fine-tune).",
            ),
            click.option(
                "--ray-address", "ray_address", default="", help="Ray cluster to join (default: a local Ray instance)."
            ),
            click.option(
                "--num-cpus",
                "num_cpus",
                default=1.0,
                type=click.FloatRange(min=0),
                show_default=True,
                help="CPUs per Ray task (>= 0).",
            ),
            click.option(
                "--num-gpus",
                "num_gpus",
                default=0.0,
                type=click.FloatRange(min=0),
                show_default=True,
                help="GPUs per Ray task (>= 0).",
            ),
        ]
    ):
        f = option(f)
    return f


def device_option():
    """``--device``: cpu, cuda or cuda:N; empty = CUDA when available, else the CPU."""
    return click.option(
        "--device",
        default="",
        type=DeviceType(),
        help="Where networks run: cpu, cuda or cuda:N (default: CUDA when available, else the CPU).",
    )


# --------------------------------------------------------------------------- training options
def train_options(steps: int | None, seed: int):
    """Decorator adding ``--steps``, ``--batch-size`` ... (typed; see :func:`train_config_from_options`);
    ``steps=None``: no ``--steps`` (a command whose steps come from another option, e.g. ``select --rounds``)."""
    opts = [
        click.option(
            "--steps", default=steps, type=click.IntRange(min=1), show_default=True, help="Optimiser steps (>= 1)."
        ),
        click.option(
            "--batch-size",
            "batch_size",
            default=2,
            type=click.IntRange(min=1, max=1024),
            show_default=True,
            help="Patches per step (1-1024).",
        ),
        click.option(
            "--patch-size",
            "patch_size",
            default="32,32,32",
            type=IntTuple(length=3, minimum=4, maximum=1024),
            show_default=True,
            help="Patch (and sliding-window) size in voxels, three sides of 4-1024 (memory is checked before training).",
        ),
        click.option(
            "--learning-rate",
            "learning_rate",
            default=0.003,
            type=click.FloatRange(min=0, min_open=True, max=10),
            show_default=True,
            help="Peak learning rate (polynomial decay to 0).",
        ),
        click.option(
            "--optimizer",
            default=Optimizer.ADAMW.value,
            type=EnumChoice(Optimizer, case_sensitive=False),
            show_default=True,
            help="adamw, or sgd (nnU-Net: Nesterov momentum 0.99).",
        ),
        click.option(
            "--foreground-fraction",
            "foreground_fraction",
            default=0.5,
            type=click.FloatRange(min=0, max=1),
            show_default=True,
            help="Share of patches centred on a foreground voxel (0-1).",
        ),
        click.option(
            "--seed",
            default=seed,
            type=click.IntRange(min=0, max=2**32 - 1),
            show_default=True,
            help="Seed of initialisation, patch sampling and augmentation.",
        ),
    ]

    if steps is None:
        opts = opts[1:]

    def decorate(f):
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


def train_config_from_options(options: dict):
    """A :class:`~mlflow_ccfv.training.TrainConfig` from the typed options of :func:`train_options`."""
    from mlflow_ccfv.training import TrainConfig

    try:
        return TrainConfig(
            steps=int(options["steps"]),
            batch_size=int(options["batch_size"]),
            patch_size=tuple(options["patch_size"]),
            learning_rate=float(options["learning_rate"]),
            optimizer=str(options["optimizer"]).lower(),
            foreground_fraction=float(options["foreground_fraction"]),
            seed=int(options["seed"]),
        )
    except (TypeError, ValueError) as exc:
        raise OptionError(f"Bad training option: {exc}") from exc


def methods_help(prefix: str) -> str:
    """``prefix`` followed by every estimator name (from :data:`mlflow_ccfv.estimators.METHODS`)."""
    from mlflow_ccfv.estimators import METHODS

    return f"{prefix} Methods: {', '.join(METHODS)}."


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


def check_tracking_server(experiment: str | None = None, default: str = DEFAULT_EXPERIMENT) -> None:
    """Open the store as every command does first (:func:`~mlflow_ccfv.tracking.server.open_store`):
    refuse up front (exit 6, one line) when ``MLFLOW_TRACKING_URI`` is a server that does not answer,
    bound MLflow's HTTP retries, and close the runs of killed processes; then, for a command that writes,
    make its experiment the active one: ``experiment`` (its :func:`experiment_option`; ``""``:
    ``default``) through :func:`~mlflow_ccfv.tracking.runs.use_experiment`."""
    from mlflow_ccfv.tracking.server import open_store

    open_store()
    if experiment is not None:
        from mlflow_ccfv.tracking.runs import use_experiment

        use_experiment(experiment or default, chosen=bool(experiment))


def choices(values: Sequence[str]) -> click.Choice:
    """A case-sensitive ``click.Choice`` of ``values``."""
    return click.Choice(list(values))
