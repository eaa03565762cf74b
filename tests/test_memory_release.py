"""MemoryReleaser: freed heap pages go back to the OS every N units of work (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes.util
import gc
import weakref

import pytest

from mlflow_ccfv.features.resources import MemoryReleaser


def test_memory_is_released_every_nth_call_where_glibc_is():
    releaser = MemoryReleaser(every=3)
    done = [releaser.tick() for _ in range(7)]
    has_trim = _has_trim()
    assert done == [False, False, has_trim, False, False, has_trim, False]
    assert releaser.calls == 7 and releaser.released == (2 if has_trim else 0)
    assert MemoryReleaser(every=0).every == 1  # every call, not never


def _has_trim() -> bool:
    name = ctypes.util.find_library("c")
    return name is not None and hasattr(ctypes.CDLL(name), "malloc_trim")


class _Cycle:
    def __init__(self):
        self.me = self


def test_freezing_skips_what_outlived_the_first_collection_and_still_collects_new_cycles():
    if not _has_trim():
        pytest.skip("no glibc malloc_trim: the releaser does nothing here")
    assert gc.get_freeze_count() == 0
    with MemoryReleaser(freeze=True) as releaser:
        survivor = _Cycle()
        releaser.tick()
        assert releaser.frozen and gc.get_freeze_count() > 0
        frozen_before = gc.get_freeze_count()
        # a cycle made after the freeze (a scored network's) is still collected by the next tick
        garbage = _Cycle()
        ref = weakref.ref(garbage)
        del garbage
        releaser.tick()
        assert ref() is None
        # frozen once, not every tick: a second freeze would add what was made since (``ref``, at least);
        # the count can only shrink otherwise (frozen objects freed by reference counting, e.g. by another thread)
        assert gc.get_freeze_count() <= frozen_before
        # a frozen object that turns into cyclic garbage waits for the unfreeze ...
        old = weakref.ref(survivor)
        del survivor
        gc.collect()
        assert old() is not None
    # ... leaving the block gives the frozen objects back, and a collection then takes it
    assert gc.get_freeze_count() == 0 and not releaser.frozen
    gc.collect()
    assert old() is None


def test_a_freeze_made_by_someone_else_is_left_alone():
    if not _has_trim():
        pytest.skip("no glibc malloc_trim: the releaser does nothing here")
    gc.freeze()
    try:
        host = gc.get_freeze_count()
        with MemoryReleaser(freeze=True) as releaser:
            releaser.tick()
            assert not releaser.frozen
        # the host's frozen objects stay frozen and nothing new is frozen; the count may drop a little, as
        # other threads (pytest-xdist's) free frozen objects
        assert 0 < gc.get_freeze_count() <= host
    finally:
        gc.unfreeze()


def test_without_freeze_nothing_is_frozen():
    releaser = MemoryReleaser()
    releaser.tick()
    releaser.close()
    assert not releaser.frozen and gc.get_freeze_count() == 0
