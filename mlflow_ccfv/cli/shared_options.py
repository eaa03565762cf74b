"""The options several commands share, each declared once: a decorator per option (or group of options).

Every option is typed (:mod:`mlflow_ccfv.cli.types`, click's ranges and choices), so a bad value is
refused before any work with the option's name in the message; where the help shows a bound, it is
formatted from the same constant the type enforces.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from mlflow_ccfv.cli.base import DEFAULT_DATA_ROOT, DEFAULT_EXPERIMENT
from mlflow_ccfv.cli.types import (
    SEED,
    Architecture,
    BoolText,
    DeviceType,
    EnumChoice,
    IntTuple,
    MethodsText,
    OptionalInt,
    RankBy,
)
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.options import (
    CACHE_ENV,
    DATA_ROOT_ENV,
    DEFAULT_CACHE_DIR,
    MAX_SEED,
    SYNTHETIC_MAX_CASES,
    SYNTHETIC_SHAPE_RANGE,
    ExecutorKind,
    Optimizer,
)

__all__ = [
    "add_twins_option",
    "Decorator",
    "BATCH_SIZE_RANGE",
    "CASES_RANGE",
    "PATCH_SIDE_RANGE",
    "WINDOW_SIDE_RANGE",
    "allow_pickle_option",
    "architecture_option",
    "bank_option",
    "bool_option",
    "cache_dir_option",
    "count_option",
    "data_root_option",
    "device_option",
    "experiment_option",
    "folder_option",
    "json_option",
    "methods_help",
    "methods_option",
    "models_option",
    "n_cases_option",
    "optional_int_option",
    "overlap_option",
    "validation_fraction_option",
    "rank_by_option",
    "ray_options",
    "request_from_options",
    "seed_option",
    "seeds_option",
    "shape_option",
    "steps_options",
    "target_option",
    "train_config_from_options",
    "train_options",
    "window_size_option",
]

#: What an option factory returns: a decorator of a command function.
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: MLflow's own variable naming the experiment; here it is the default of ``--experiment``.
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"

#: ``--n-cases`` of a demo or study family, split 80/20: at least one case on each side.
CASES_RANGE = (2, SYNTHETIC_MAX_CASES)
#: ``--batch-size`` and the sides of ``--patch-size``: the minimum is :class:`~mlflow_ccfv.training.TrainConfig`'s,
#: the maximum a sanity bound of the command line.
BATCH_SIZE_RANGE = (1, 1024)
PATCH_SIDE_RANGE = (4, 1024)
#: ``--learning-rate``: positive (``TrainConfig``), at most this.
MAX_LEARNING_RATE = 10
#: Sides of a sliding window or training patch given for a version (``register --patch-size``,
#: ``score --roi-size``), in voxels.
WINDOW_SIDE_RANGE = (1, 4096)


def _stack(decorators: list[Decorator]) -> Decorator:
    """One decorator applying ``decorators`` so that ``--help`` lists their options in the given order."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return decorate


def bool_option(flag: str, *, default: bool | None = False, help: str) -> Decorator:
    """A boolean option that takes a value, ``--force true`` / ``--force false`` (as ``mlflow run -P
    force=true`` passes it; :class:`~mlflow_ccfv.cli.types.BoolText`), and alone, ``--force``, means true.
    ``default=None``: not given (the command decides)."""
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


def json_option(what: str = "the table") -> Decorator:
    """``--json`` (a :func:`bool_option`): print JSON records instead of ``what`` as Markdown."""
    return bool_option("--json", help=f"true: print JSON records instead of {what} as Markdown.")


def allow_pickle_option() -> Decorator:
    """``--allow-pickle``: load ``mlflow.pytorch`` (pickled) models, which runs their code; absent, the
    environment variable ``MLFLOW_CCFV_ALLOW_PICKLE`` decides (``tracking.load.pickle_allowed``)."""
    return bool_option(
        "--allow-pickle",
        default=None,
        help="Load mlflow.pytorch (pickled) models: this runs code saved by whoever logged them. "
        "Default: refused unless MLFLOW_CCFV_ALLOW_PICKLE=1.",
    )


def _env_default(env: str, default: str) -> Callable[[click.Context, click.Parameter, Any], str]:
    """``""`` (an unset MLproject parameter) -> ``$env`` or ``default``."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> str:
        return str(value) if value else os.environ.get(env) or default

    return callback


def folder_option(flag: str, help: str, *, name: str | None = None, required: bool = False) -> Decorator:
    """A folder path option: ``required``, or ``""`` (none) when not given."""
    names = [flag] if name is None else [flag, name]
    kind = click.Path(file_okay=False)
    if required:
        return click.option(*names, required=True, type=kind, help=help)
    return click.option(*names, default="", type=kind, help=help)


def _env_folder_option(flag: str, env: str, default: str, help: str) -> Decorator:
    """A folder path option whose ``""`` means ``$env``, then ``default`` (both shown in ``--help``)."""
    return click.option(
        flag,
        default=default,
        envvar=env,
        show_envvar=True,
        show_default=True,
        type=click.Path(file_okay=False),
        callback=_env_default(env, default),
        help=help,
    )


def data_root_option(
    default: str = DEFAULT_DATA_ROOT, help_text: str = "Folder holding the MSD task folders."
) -> Decorator:
    """``--data-root`` (``$MLFLOW_CCFV_DATA``, then ``default``)."""
    return _env_folder_option("--data-root", DATA_ROOT_ENV, default, help_text)


def cache_dir_option() -> Decorator:
    """``--cache-dir`` (``$MLFLOW_CCFV_CACHE``, then ``.ccfv-cache``)."""
    return _env_folder_option(
        "--cache-dir",
        CACHE_ENV,
        DEFAULT_CACHE_DIR,
        "Feature cache folder (entries are checksummed and recomputed when corrupt).",
    )


def target_option() -> Decorator:
    """``--dataset``: the target of ``score``, ``select`` and ``finetune`` (a task name under ``--data-root``, a
    folder path, or a logged dataset ``runs:/<run_id>/<folder>``)."""
    return click.option(
        "--dataset",
        required=True,
        help="Target: a task name under --data-root (Task07), a folder path, or a logged dataset "
        "(runs:/<run_id>/<folder>).",
    )


def experiment_option(default: str = DEFAULT_EXPERIMENT) -> Decorator:
    """``--experiment``: the MLflow experiment the command's runs and models go to: the option, else
    ``$MLFLOW_EXPERIMENT_NAME``, else ``default``. The value stays ``""`` when neither is given, so that
    :func:`~mlflow_ccfv.cli.base.check_tracking_server` can tell a chosen experiment from the default."""
    return click.option(
        "--experiment",
        default="",
        envvar=EXPERIMENT_ENV,
        show_envvar=True,
        help=f"MLflow experiment of the command's runs and models; default {default} (a run started by "
        "mlflow run keeps its own).",
    )


def bank_option(help: str, *, default: str = "default", required: bool = False) -> Decorator:
    """``--bank``: a bank name (the tag ``ccfv.bank``); ``required``: no default."""
    if required:
        return click.option("--bank", required=True, help=help)
    return click.option("--bank", default=default, show_default=bool(default), help=help)


def models_option() -> Decorator:
    """``--models``: registered versions given instead of a bank."""
    return click.option(
        "--models", default="", help="Instead of the bank: comma-separated models:/<name>/<version> URIs."
    )


def methods_help(prefix: str) -> str:
    """``prefix`` followed by every estimator name (from :data:`mlflow_ccfv.estimators.METHODS`)."""
    from mlflow_ccfv.estimators import METHODS

    return f"{prefix} Methods: {', '.join(METHODS)}."


def methods_option(help: str) -> Decorator:
    """``--methods``: comma-separated estimators, checked against the catalogue (``help`` lists it)."""
    return click.option("--methods", default="", type=MethodsText(), help=methods_help(help))


class _RankByOption(click.Option):
    """``--rank-by``, whose help names what ``auto`` ranks by when help is shown: the default lives in
    :mod:`mlflow_ccfv.scoring.ranking`, which imports torch, so it is not read while commands are built."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING, TWIN_METHOD

        purpose = self.help or ""
        self.help = (
            f"{purpose} auto: {DEFAULT_RANKING} (the pre-registered default; docs/study.md says why), "
            f"{TWIN_METHOD} (CC-FV minus that of the model's random-init twin), or an estimator (ccfv: the paper's)."
        )
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = purpose


def add_twins_option() -> Decorator:
    """``--add-twins``: register the random-init twins a ranking is read against."""
    return bool_option(
        "--add-twins",
        default=True,
        help="true: register and score a random-init twin of every network that has none (same network, "
        "random weights, no training): the reference that shows whether pre-training helped.",
    )


def rank_by_option(help: str) -> Decorator:
    """``--rank-by``: ``auto``, ``ccfv_twin`` or an estimator (:class:`~mlflow_ccfv.cli.types.RankBy`); ``help``
    says what the ranking decides, the option adds what each value means."""
    return click.option("--rank-by", cls=_RankByOption, default="auto", show_default=True, type=RankBy(), help=help)


def architecture_option() -> Decorator:
    """``--architecture``: a MONAI network of :data:`~mlflow_ccfv.networks.specs.SUPPORTED_ARCHITECTURES`."""
    return click.option(
        "--architecture",
        default="UNet",
        show_default=True,
        type=Architecture(),
        help="MONAI network, CPU-sized: UNet, BasicUNet, DynUNet, UNETR, SwinUNETR, SegResNet, SegResNetDS.",
    )


def device_option() -> Decorator:
    """``--device``: cpu, cuda or cuda:N; empty = CUDA when available, else the CPU."""
    return click.option(
        "--device",
        default="",
        type=DeviceType(),
        help="Where networks run: cpu, cuda or cuda:N (default: CUDA when available, else the CPU).",
    )


def seed_option(flag: str, help: str, *, default: int = 0, maximum: int | None = MAX_SEED) -> Decorator:
    """A seed: an integer in ``[0, maximum]`` (``None``: no upper bound)."""
    kind = SEED if maximum == MAX_SEED else click.IntRange(min=0, max=maximum)
    return click.option(flag, default=default, type=kind, show_default=True, help=help)


def seeds_option(help: str, *, default: str = "0,1,2") -> Decorator:
    """``--seeds``: comma-separated fine-tuning seeds; with no ``default``, ``""`` is ``()`` (the command's
    own default), else ``None``."""
    kind = IntTuple(minimum=0, maximum=MAX_SEED, empty_as_tuple=not default)
    return click.option("--seeds", default=default, type=kind, show_default=bool(default), help=help)


def shape_option(help: str) -> Decorator:
    """``--shape`` of a generated synthetic family: three sides in ``SYNTHETIC_SHAPE_RANGE`` voxels."""
    lo, hi = SYNTHETIC_SHAPE_RANGE
    kind = IntTuple(length=3, minimum=lo, maximum=hi)
    return click.option("--shape", default="64,64,48", type=kind, show_default=True, help=f"{help} ({lo}-{hi} a side).")


def n_cases_option(help: str) -> Decorator:
    """``--n-cases`` of a generated synthetic family (:data:`CASES_RANGE`)."""
    kind = click.IntRange(*CASES_RANGE)
    return click.option("--n-cases", default=50, type=kind, show_default=True, help=help)


def overlap_option(help: str) -> Decorator:
    """``--overlap`` of the sliding windows that measure Dice, in ``[0, 1)``."""
    kind = click.FloatRange(min=0, max=1, max_open=True)
    return click.option("--overlap", default=0.5, type=kind, show_default=True, help=help)


def validation_fraction_option(help: str) -> Decorator:
    """``--validation-fraction``: the share of a target's training cases a race measures Dice on, in ``(0, 1)``."""
    kind = click.FloatRange(min=0, max=1, min_open=True, max_open=True)
    return click.option("--validation-fraction", default=0.2, type=kind, show_default=True, help=help)


def window_size_option(flag: str, help: str) -> Decorator:
    """A sliding-window or patch size, three sides in :data:`WINDOW_SIDE_RANGE`; ``""``: the version's own."""
    kind = IntTuple(length=3, minimum=WINDOW_SIDE_RANGE[0], maximum=WINDOW_SIDE_RANGE[1])
    return click.option(flag, default="", type=kind, help=help)


def count_option(flag: str, help: str, *, default: int, minimum: int = 1) -> Decorator:
    """A whole number of things (steps, candidates, draws): an integer of at least ``minimum``."""
    kind = click.IntRange(min=minimum)
    return click.option(flag, default=default, type=kind, show_default=True, help=help)


def optional_int_option(
    flag: str, help: str, *, default: str = "", minimum: int, maximum: int | None = None
) -> Decorator:
    """An integer option in ``[minimum, maximum]`` that may be left empty (``None``)."""
    kind = OptionalInt(minimum, maximum)
    return click.option(flag, default=default, type=kind, show_default=bool(default), help=help)


def ray_options(
    executor_help: str = "serial: in this process; ray: one Ray task per scored version (and, in a study, per "
    "fine-tune).",
) -> Decorator:
    """``--executor`` (``executor_help`` says what one Ray task is; the default: that of score and study),
    ``--ray-address``, ``--num-cpus`` and ``--num-gpus``."""
    executor = EnumChoice(ExecutorKind)
    per_task = click.FloatRange(min=0)
    return _stack(
        [
            click.option(
                "--executor", default=ExecutorKind.SERIAL.value, show_default=True, type=executor, help=executor_help
            ),
            click.option("--ray-address", default="", help="Ray cluster to join (default: a local Ray instance)."),
            click.option("--num-cpus", default=1.0, type=per_task, show_default=True, help="CPUs per Ray task (>= 0)."),
            click.option("--num-gpus", default=0.0, type=per_task, show_default=True, help="GPUs per Ray task (>= 0)."),
        ]
    )


def steps_options(pretrain: int, finetune: int) -> Decorator:
    """``--pretrain-steps`` and ``--finetune-steps`` (the budgets of a demo or a study), with their defaults."""
    steps = click.IntRange(min=1)
    return _stack(
        [
            click.option(
                "--pretrain-steps",
                default=pretrain,
                type=steps,
                show_default=True,
                help="Pre-training steps per model.",
            ),
            click.option(
                "--finetune-steps", default=finetune, type=steps, show_default=True, help="Fine-tuning steps per model."
            ),
        ]
    )


def train_options(steps: int | None, seed: int) -> Decorator:
    """``--steps``, ``--batch-size`` ... ``--seed`` (typed; see :func:`train_config_from_options`);
    ``steps=None``: no ``--steps`` (a command whose steps come from another option, e.g. ``select --rounds``)."""
    batch, side = BATCH_SIZE_RANGE, PATCH_SIDE_RANGE
    rows: list[tuple[str, Any, click.ParamType, str]] = [
        # flag, default, type, help
        ("--steps", steps, click.IntRange(min=1), "Optimiser steps (>= 1)."),
        ("--batch-size", 2, click.IntRange(*batch), f"Patches per step ({batch[0]}-{batch[1]})."),
        (
            "--patch-size",
            "32,32,32",
            IntTuple(length=3, minimum=side[0], maximum=side[1]),
            f"Patch (and sliding-window) size in voxels, three sides of {side[0]}-{side[1]} (memory is checked "
            "before training).",
        ),
        (
            "--learning-rate",
            0.003,
            click.FloatRange(min=0, min_open=True, max=MAX_LEARNING_RATE),
            "Peak learning rate (polynomial decay to 0).",
        ),
        (
            "--optimizer",
            Optimizer.ADAMW.value,
            EnumChoice(Optimizer, case_sensitive=False),
            "adamw, or sgd (nnU-Net: Nesterov momentum 0.99).",
        ),
        (
            "--foreground-fraction",
            0.5,
            click.FloatRange(min=0, max=1),
            "Share of patches centred on a foreground voxel (0-1).",
        ),
        ("--seed", seed, SEED, "Seed of initialisation, patch sampling and augmentation."),
    ]
    if steps is None:
        rows = rows[1:]
    return _stack(
        [
            click.option(flag, default=default, type=kind, show_default=True, help=text)
            for flag, default, kind, text in rows
        ]
    )


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


Request = TypeVar("Request")


def request_from_options(kind: Callable[..., Request], options: Mapping[str, Any], **given: Any) -> Request:
    """The request dataclass ``kind`` of a command's parsed options, each field from the option of its own
    name; an empty text option (``""``) is not given, so its field keeps the request's default. ``given``
    supplies the fields no option holds as such (a parsed training config, a renamed option)."""
    values = dict(given)
    for field in dataclasses.fields(kind):  # type: ignore[arg-type]
        if field.init and field.name not in values and options.get(field.name, "") != "":
            values[field.name] = options[field.name]
    return kind(**values)
