"""MemoryReleaser: freed heap pages go back to the OS every N units of work (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes.util

from mlflow_ccfv.features.resources import MemoryReleaser


def test_memory_is_released_every_nth_call_where_glibc_is():
    releaser = MemoryReleaser(every=3)
    done = [releaser.tick() for _ in range(7)]
    has_trim = ctypes.util.find_library("c") is not None and hasattr(
        ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim"
    )
    assert done == [False, False, has_trim, False, False, has_trim, False]
    assert releaser.calls == 7 and releaser.released == (2 if has_trim else 0)
    assert MemoryReleaser(every=0).every == 1  # every call, not never
