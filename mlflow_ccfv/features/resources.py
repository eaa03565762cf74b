"""Will a window fit? A lower bound on a network's activation memory is checked before any work.

A sliding window of ``--roi-size 100000,100000,100000`` asks for petabytes and a fine-tuning patch of
512³ is killed by the kernel at tens of GB, minutes in and without a word. The estimates here are
lower bounds per voxel of one window (or patch), measured on the project's CPU-sized networks with
``resource.getrusage`` (UNet 168, SegResNet 262 bytes per voxel at inference; UNet 354, SegResNet
727, UNETR 1091 bytes per voxel and batch item when training, 64³ patches): a size the bound already
refuses cannot run, and a size it lets through may still be large, but not absurd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import os
from collections.abc import Callable, Sequence

from mlflow_ccfv.errors import OptionError

__all__ = [
    "INFERENCE_BYTES_PER_VOXEL",
    "TRAINING_BYTES_PER_VOXEL",
    "MemoryReleaser",
    "available_memory_bytes",
    "check_memory",
    "inference_bytes",
    "training_bytes",
]

#: Lower bound of activation memory per voxel of a window at inference (bytes; measured 168-262).
INFERENCE_BYTES_PER_VOXEL = 128
#: Lower bound of activation + gradient memory per voxel and batch item when training (measured 354-1091).
TRAINING_BYTES_PER_VOXEL = 256


def inference_bytes(roi_size: Sequence[int], sw_batch_size: int, in_channels: int = 1) -> int:
    """Lower bound (bytes) of one sliding-window forward pass of ``sw_batch_size`` windows of ``roi_size``."""
    voxels = math.prod(int(s) for s in roi_size)
    return sw_batch_size * voxels * (INFERENCE_BYTES_PER_VOXEL + 4 * in_channels)


def training_bytes(patch_size: Sequence[int], batch_size: int, in_channels: int = 1) -> int:
    """Lower bound (bytes) of one training step on ``batch_size`` patches of ``patch_size``."""
    voxels = math.prod(int(s) for s in patch_size)
    return batch_size * voxels * (TRAINING_BYTES_PER_VOXEL + 4 * in_channels)


def available_memory_bytes() -> int | None:
    """Memory the system can give a process now: ``MemAvailable`` of /proc/meminfo, else the free
    physical pages (``os.sysconf``); None where neither is known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**50 else f"{n / 2**50:,.0f} PiB"


def check_memory(needed: int, option: str, value: Sequence[int], fix: str, available: int | None = None) -> None:
    """Refuse (:class:`~mlflow_ccfv.errors.OptionError` naming ``option``) when the lower bound ``needed``
    exceeds the available memory (``available``, default :func:`available_memory_bytes`)."""
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        shown = ",".join(str(int(v)) for v in value)
        raise OptionError(
            f"{option} {shown} needs at least {_gib(needed)} of memory, but {_gib(available)} is available; {fix}"
        )


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once per process (``find_library`` runs a subprocess), or None."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


class MemoryReleaser:
    """Give the memory that freed networks and feature sets leave behind back to the OS, every
    ``every`` calls of :meth:`tick`: ``gc.collect()`` (they sit in reference cycles that Python's
    generational collector reaches late) then glibc's ``malloc_trim(0)`` (a no-op count without glibc).

    Releasing after every version (``every=1``, the default) is what keeps the RSS of a long scoring
    loop flat; ``malloc_trim`` alone gives nothing back (docs/deploy.md, section 4, has the figures).

    ``freeze=True`` makes that collection cheap: a full collection walks every object the collector
    tracks (hundreds of thousands once torch, MONAI and MLflow are imported), almost all of them
    modules and caches that live as long as the process. After its first collection the releaser moves
    the survivors to the collector's permanent generation (``gc.freeze()``), so each later collection
    walks only what was allocated since, where the networks' cycles are. :meth:`close` (or leaving a
    ``with`` block) gives them back (``gc.unfreeze()``). Nothing is frozen when something else in the
    process already froze objects (its freeze is left alone). ``bench/bench_memory.py release``
    measures the variants side by side.
    """

    def __init__(self, every: int = 1, freeze: bool = False):
        self.every = max(1, int(every))
        self.freeze = freeze
        self.frozen = False
        self.calls = 0
        self.released = 0

    def tick(self) -> bool:
        """Count one unit of work; release memory on every ``every``-th call. True when it released."""
        self.calls += 1
        trim = _malloc_trim()
        if self.calls % self.every or trim is None:
            return False
        gc.collect()  # the pages are held by cyclic garbage: trimming alone gave nothing back (measured)
        if self.freeze and not self.frozen and gc.get_freeze_count() == 0:
            gc.freeze()  # what survived a full collection here lives on: later collections skip it
            self.frozen = True
        trim(0)
        self.released += 1
        return True

    def close(self) -> None:
        """Give the objects this releaser froze back to the collector."""
        if self.frozen:
            gc.unfreeze()
            self.frozen = False

    def __enter__(self) -> MemoryReleaser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
