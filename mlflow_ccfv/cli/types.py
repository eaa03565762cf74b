"""The click parameter types of the command line: each parses one kind of option text once, at the edge.

``mlflow run`` passes every ``-P`` value as text and an unset optional one as ``""``; the types read
``""`` as "not given" (``None``), so the same commands work from a shell and from an MLproject entry
point. Each type parses with :mod:`mlflow_ccfv.options` and turns its
:class:`~mlflow_ccfv.errors.OptionError` into click's usage error, which names the option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.options import (
    MAX_SEED,
    StrEnum,
    parse_bool,
    parse_device,
    parse_float,
    parse_int,
    parse_ints,
    split_list,
)

__all__ = [
    "Architecture",
    "BoolText",
    "DeviceType",
    "EnumChoice",
    "IntTuple",
    "MethodsText",
    "OptionalFloat",
    "OptionalInt",
    "RankBy",
    "SEED",
    "Triple",
]


def _option_name(param: click.Parameter | None) -> str:
    return f"--{param.name.replace('_', '-')}" if param is not None and param.name else "value"


def _blank(value: Any) -> bool:
    """``None`` or ``""`` (an unset MLproject parameter)."""
    return value is None or (isinstance(value, str) and not value.strip())


class _Parsed(click.ParamType):
    """A type whose :meth:`parse` raises :class:`~mlflow_ccfv.errors.OptionError`, reported as click's
    usage error for the option; ``""`` is :meth:`empty`."""

    metavar = "TEXT"

    def parse(self, value: Any, option: str) -> Any:
        raise NotImplementedError

    def empty(self) -> Any:
        return None

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if _blank(value):
            return self.empty()
        try:
            return self.parse(value, _option_name(param))
        except OptionError as exc:
            self.fail(str(exc), param, ctx)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return self.metavar


class OptionalInt(_Parsed):
    """An integer in ``[minimum, maximum]`` (:func:`~mlflow_ccfv.options.parse_int`); ``""`` is ``None``."""

    name = "integer"
    metavar = "INTEGER"

    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    def parse(self, value: Any, option: str) -> int:
        return parse_int(value, option, minimum=self.minimum, maximum=self.maximum)


class OptionalFloat(_Parsed):
    """A finite number in ``[minimum, maximum]`` (``max_open``: below ``maximum``;
    :func:`~mlflow_ccfv.options.parse_float`); ``""`` is ``None``."""

    name = "float"
    metavar = "FLOAT"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *, max_open: bool = False):
        self.minimum, self.maximum, self.max_open = minimum, maximum, max_open

    def parse(self, value: Any, option: str) -> float:
        return parse_float(value, option, minimum=self.minimum, maximum=self.maximum, max_open=self.max_open)


class IntTuple(_Parsed):
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
        self.metavar = "N,N,N" if length == 3 else "N[,N...]"

    def empty(self) -> tuple[int, ...] | None:
        return () if self.empty_as_tuple else None

    def parse(self, value: Any, option: str) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        return parse_ints(value, option, length=self.length, minimum=self.minimum, maximum=self.maximum)


class BoolText(_Parsed):
    """``true``/``false`` as MLproject passes them (also 1/0, yes/no, on/off; ``""`` = false)."""

    name = "boolean"
    metavar = "[true|false]"

    def empty(self) -> bool:
        return False

    def parse(self, value: Any, option: str) -> bool:
        return parse_bool(value, option)


class DeviceType(_Parsed):
    """``cpu``, ``cuda`` or ``cuda:N``; ``""`` = CUDA when available, else the CPU (``None``)."""

    name = "device"
    metavar = "[cpu|cuda|cuda:N]"

    def parse(self, value: Any, option: str) -> str | None:
        return parse_device(value)


class Triple(click.ParamType):
    """Three ``kind`` values, ``64,64,48`` (or ``64x64x48``); bounds are the consumer's (the synthetic
    generator checks its own). The error names the option and shows its default."""

    name = "triple"

    def __init__(self, kind: Callable[[str], Any], what: str):
        self.kind, self.what = kind, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple | None:
        if value is None or isinstance(value, tuple):
            return value
        parts = [p for p in str(value).replace("x", ",").split(",") if p.strip()]
        try:
            values = tuple(self.kind(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3:
            default = param.default if param is not None else ""
            self.fail(f"expected three numbers ({self.what}) like {default}, got {str(value)[:60]!r}", param, ctx)
        return values

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "X,Y,Z"


class EnumChoice(click.Choice):
    """A ``click.Choice`` of a :class:`~mlflow_ccfv.options.StrEnum`'s values, converted to the member."""

    def __init__(self, enum_type: type[StrEnum], case_sensitive: bool = True):
        self.enum_type = enum_type
        super().__init__([member.value for member in enum_type], case_sensitive=case_sensitive)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self.enum_type(super().convert(value, param, ctx))


class _Catalogue(click.ParamType):
    """A name (``many``: comma-separated names) from a catalogue that is imported on first use (it loads
    torch or the statistics stack), so that ``--help`` stays fast."""

    metavar = "TEXT"

    def __init__(self, *, many: bool = False):
        self.many = many

    def allowed(self) -> list[str]:
        raise NotImplementedError

    def refusal(self, name: str, allowed: list[str]) -> str:
        return f"{name!r} is not one of {', '.join(allowed)}."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        names = split_list(value) if self.many else [value]
        allowed = self.allowed()
        for name in names:
            if name not in allowed:
                self.fail(self.refusal(name, allowed), param, ctx)
        return names if self.many else str(value)

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return self.metavar


class Architecture(_Catalogue):
    """A MONAI network of :data:`~mlflow_ccfv.networks.specs.SUPPORTED_ARCHITECTURES` (``many``: a
    comma-separated list of them, returned as a list)."""

    name = "architecture"

    def allowed(self) -> list[str]:
        from mlflow_ccfv.networks.specs import SUPPORTED_ARCHITECTURES  # imports torch: only when parsed

        return list(SUPPORTED_ARCHITECTURES)


class RankBy(_Catalogue):
    """``--rank-by``: ``auto``, an estimator, or a ranking computed from stored scores (``<estimator>_twin``,
    ``rank_aggregate``); the names come from the method catalogue."""

    name = "ranking"
    metavar = "[auto|ccfv_twin|METHOD]"

    def refusal(self, name: str, allowed: list[str]) -> str:
        return f"{name!r} is not a ranking; choose one of {', '.join(allowed)}."

    def allowed(self) -> list[str]:
        from mlflow_ccfv.estimators import METHODS
        from mlflow_ccfv.scoring.ranking import AUTO_RANK
        from mlflow_ccfv.study.variants import VARIANTS

        return [AUTO_RANK, *VARIANTS, *METHODS]


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


#: A seed option's type: an integer in ``[0, MAX_SEED]``.
SEED = click.IntRange(min=0, max=MAX_SEED)
