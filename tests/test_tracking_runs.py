"""``tracking.runs.release_interrupted``: an interrupt that lands inside a write to the sqlite store no
longer locks the process out of its own store; the run still ends, at once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_ccfv.tracking.runs import release_interrupted, released_on_interrupt


def _interrupted_inside_a_write(db: Path) -> None:
    """Ctrl-C while a write holds sqlite's lock: the connection, inside its transaction, is a local of
    this frame, which the exception's traceback keeps alive (as it keeps SQLAlchemy's)."""
    connection = sqlite3.connect(db)
    connection.execute("BEGIN IMMEDIATE")  # the write lock an INSERT takes
    raise KeyboardInterrupt


def _can_write(db: Path) -> bool:
    probe = sqlite3.connect(db, timeout=0.2)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        probe.close()


def test_the_interrupted_write_holds_the_lock_until_released(tracking_uri):
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    try:
        _interrupted_inside_a_write(db)
    except KeyboardInterrupt as exc:
        assert not _can_write(db)  # what made the interrupted score's own writes fail
        release_interrupted(exc)
        assert _can_write(db)


def test_a_run_interrupted_inside_a_write_ends_at_once(tracking_uri):
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    started = time.monotonic()
    # KeyboardInterrupt, not MLflow's "database is locked" raised by the run's end after 20 s
    with pytest.raises(KeyboardInterrupt), mlflow.start_run() as run, released_on_interrupt():
        _interrupted_inside_a_write(db)
    assert time.monotonic() - started < 10
    assert MlflowClient().get_run(run.info.run_id).info.status != "RUNNING"


def _fails_with_a_local() -> None:
    value = 41  # noqa: F841 (read back from the frame)
    raise ValueError("an ordinary error")


def test_ordinary_errors_keep_their_frames():
    with pytest.raises(ValueError) as caught, released_on_interrupt():
        _fails_with_a_local()
    tb = caught.value.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_locals["value"] == 41  # a debugger still sees them
