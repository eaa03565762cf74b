"""Text options as users type them: the one parser for integer tuples, comma lists and booleans.

MLproject parameters, CLI options, evaluator settings and registry tags all carry numbers as text
(``-P roi_size=32,32,32``, the tag ``patch_size=32,32,32``). Every layer parses them here, so
``"32,32,32"``, ``"32x32x32"`` and ``"32 32 32"`` mean the same everywhere and every error names the
option. Errors are :class:`~mlflow_ccfv.errors.OptionError` (a ``ValueError``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path

from mlflow_ccfv.errors import OptionError

__all__ = [
    "CACHE_ENV",
    "DATASET_EXPERIMENT",
    "DATA_ROOT_ENV",
    "DEFAULT_CACHE_DIR",
    "MAX_DRAWS",
    "MAX_SEED",
    "ExecutorKind",
    "Optimizer",
    "Orientation",
    "SYNTHETIC_MAX_CASES",
    "SYNTHETIC_SHAPE_RANGE",
    "SYNTHETIC_SPACING_RANGE",
    "TargetSplit",
    "cache_root",
    "format_ints",
    "parse_bool",
    "parse_device",
    "parse_float",
    "parse_int",
    "parse_ints",
    "parse_source",
    "split_list",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_INT_SEPARATORS = re.compile(r"[,x\s]+")
_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")
#: Longer option texts are refused by their length (nobody types a 10k-character ROI size).
_MAX_TEXT = 1000
#: The largest seed an option takes: seeds are unsigned 32-bit integers (NumPy's legacy seeding range).
MAX_SEED = 2**32 - 1
#: The most ordered random shortlists ``select-study`` averages a shortlist size over (every one when
#: there are fewer).
MAX_DRAWS = 2000
#: Environment variables every layer reads (docs/cli.md): the folder task names like ``Task07`` are looked
#: up in, and the cache of features, datasets and fine-tuning states (default :data:`DEFAULT_CACHE_DIR`).
DATA_ROOT_ENV = "MLFLOW_CCFV_DATA"
CACHE_ENV = "MLFLOW_CCFV_CACHE"
DEFAULT_CACHE_DIR = ".ccfv-cache"
#: The MLflow experiment holding the dataset runs of ``log-dataset`` (one per distinct dataset content).
DATASET_EXPERIMENT = "ccfv-datasets"
#: Bounds of the synthetic generator's settings: volume sides in voxels (a phantom's anatomy needs margins
#: of 16), voxel sizes in mm, cases per task.
SYNTHETIC_SHAPE_RANGE = (16, 1024)
SYNTHETIC_SPACING_RANGE = (0.01, 100.0)
SYNTHETIC_MAX_CASES = 10_000


if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are their values as text."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


# The string choices of the command line, each one catalogue (``click.Choice`` of their values in
# ``cli``; the layers that use them compare with plain text, which a member equals).
class TargetSplit(StrEnum):
    """The cases of a target that score the models: ``train`` (the 80% fine-tuned on), ``test``, ``all``."""

    TRAIN = "train"
    TEST = "test"
    ALL = "all"


class ExecutorKind(StrEnum):
    """Where ``score``/``study`` run their tasks: ``serial`` (this process) or ``ray`` (one Ray task each)."""

    SERIAL = "serial"
    RAY = "ray"


class Optimizer(StrEnum):
    """The training optimiser: ``adamw``, or ``sgd`` (nnU-Net's Nesterov momentum 0.99)."""

    ADAMW = "adamw"
    SGD = "sgd"


class Orientation(StrEnum):
    """Storage axis codes of synthetic NIfTI files: ``LPS`` (as DICOM-converted MSD files) or ``RAS``."""

    LPS = "LPS"
    RAS = "RAS"


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
    maximum: int | None = None,
) -> tuple[int, ...]:
    """``"32,32,32"`` (or ``32x32x32``, ``"32 32 32"``, a sequence) -> ``(32, 32, 32)``.

    ``length``: the number of values required; ``minimum``/``maximum``: the smallest/largest value
    allowed. The error names ``name`` and shows an example; an absurdly long text is refused by its
    length, not echoed back.
    """
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise OptionError(f"{name} is {len(value)} characters long; expected a few integers (e.g. 32,32,32).")
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
    if maximum is not None and any(v > maximum for v in values):
        raise OptionError(f"{name} must be integers <= {maximum}; got {value!r}.")
    return values


def parse_int(value: object, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``"7"`` (or ``7``, ``7.0``) -> ``7`` within ``[minimum, maximum]``; the error names ``name``."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and len(text) > _MAX_TEXT:
        raise OptionError(f"{name} must be an integer; got {len(text)} characters of text.")
    try:
        number = _as_int(text)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"{name} must be an integer; got {value!r}.") from None
    _check_range(number, name, minimum, maximum)
    return number


def parse_float(
    value: object, name: str, *, minimum: float | None = None, maximum: float | None = None, max_open: bool = False
) -> float:
    """``"0.5"`` -> ``0.5``: a finite number in ``[minimum, maximum]`` (``max_open``: below ``maximum``)."""
    if isinstance(value, bool) or (isinstance(value, str) and len(value) > _MAX_TEXT):
        raise OptionError(f"{name} must be a number; got {str(value)[:40]!r}.")
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"{name} must be a number; got {value!r}.") from None
    if not math.isfinite(number):
        raise OptionError(f"{name} must be a finite number; got {value!r}.")
    _check_range(number, name, minimum, maximum)
    if max_open and maximum is not None and number >= maximum:
        raise OptionError(f"{name} must be below {maximum}; got {value!r}.")
    return number


def _check_range(number: float, name: str, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and number < minimum:
        raise OptionError(f"{name} must be >= {minimum}; got {number!r}.")
    if maximum is not None and number > maximum:
        raise OptionError(f"{name} must be <= {maximum}; got {number!r}.")


_DEVICE = re.compile(r"^(cpu|cuda(:\d{1,3})?)$")


def parse_device(value: object) -> str | None:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given; ``""``/``None`` -> ``None`` (CUDA when available, else CPU)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    if not _DEVICE.match(text):
        raise OptionError(f"device must be cpu, cuda or cuda:N (e.g. cuda:0); got {str(value)[:40]!r}.")
    return text


def _as_int(part: object) -> int:
    if isinstance(part, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(part, float) and not part.is_integer():
        raise ValueError(part)
    if isinstance(part, str) and not _INT_TEXT.match(part.strip()):
        raise ValueError(part)  # int() would also take "1_000" and "٣"
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


def cache_root(given: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``given``, else ``$MLFLOW_CCFV_CACHE``, else :data:`DEFAULT_CACHE_DIR`."""
    return Path(given or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
