"""Text options as users type them: the one parser for integer tuples, comma lists and booleans.

MLproject parameters, CLI options, evaluator settings and registry tags all carry numbers as text
(``-P roi_size=32,32,32``, the tag ``patch_size=32,32,32``). Every layer parses them here, so
``"32,32,32"``, ``"32x32x32"`` and ``"32 32 32"`` mean the same everywhere and every error names the
option. Errors are :class:`~mlflow_ccfv.errors.OptionError` (a ``ValueError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mlflow_ccfv.errors import OptionError

__all__ = ["format_ints", "parse_bool", "parse_ints", "parse_source", "split_list"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_INT_SEPARATORS = re.compile(r"[,x\s]+")


def split_list(text: str | Iterable[str] | None) -> list[str]:
    """A comma-separated option as a list, blanks dropped (``""`` and ``None`` -> ``[]``); a list stays a list."""
    if text is None:
        return []
    items = str(text).split(",") if isinstance(text, str) else [str(t) for t in text]
    return [item.strip() for item in items if item.strip()]


def parse_ints(
    value: str | Sequence[int] | None,
    name: str,
    *,
    length: int | None = None,
    minimum: int | None = None,
) -> tuple[int, ...]:
    """``"32,32,32"`` (or ``32x32x32``, ``"32 32 32"``, a sequence) -> ``(32, 32, 32)``.

    ``length``: the number of values required; ``minimum``: the smallest value allowed. The error
    names ``name`` and shows an example.
    """
    example = ",".join(["32"] * (length or 3))
    parts: Sequence = (
        [p for p in _INT_SEPARATORS.split(value.strip()) if p] if isinstance(value, str) else (value or ())
    )
    try:
        values = tuple(_as_int(p) for p in parts)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be comma-separated integers (e.g. {example}); got {value!r}.") from None
    if length is not None and len(values) != length:
        raise OptionError(f"{name} must be {length} integers (e.g. {example}); got {value!r}.")
    if minimum is not None and any(v < minimum for v in values):
        raise OptionError(f"{name} must be integers >= {minimum}; got {value!r}.")
    return values


def _as_int(part: object) -> int:
    if isinstance(part, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(part, float) and not part.is_integer():
        raise ValueError(part)
    return int(part)  # type: ignore[call-overload]


def format_ints(values: Sequence[int]) -> str:
    """``(32, 32, 32)`` -> ``"32,32,32"`` (what :func:`parse_ints` reads back)."""
    return ",".join(str(int(v)) for v in values)


def parse_bool(value: object, name: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no, on/off; blank = false) as MLproject passes them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"{name} must be true or false; got {value!r}.")


def parse_source(text: str) -> tuple[str, tuple[int, ...] | None]:
    """A study source as typed: ``PATH_OR_TASK`` or ``PATH_OR_TASK:CHANNELS`` (``/data/Task01_BrainTumour:0``
    keeps the FLAIR channel only) -> ``(path or task, channels or None)``."""
    head, sep, tail = str(text).rpartition(":")
    if sep and head and re.fullmatch(r"[\d,x\s]+", tail):
        return head, parse_ints(tail, f"channels of source {head}", minimum=0)
    return str(text), None
