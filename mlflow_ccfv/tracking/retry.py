"""Writes that tolerate other writers of the same tracking store.

Several ``score`` or ``register`` processes writing to one store (an embedded sqlite file or an
``mlflow server``) collide on rows both insert: the target dataset of ``log_input``, a version tag, a
registered model, the next version number. The store then answers with sqlite's ``UNIQUE constraint
failed`` (``IntegrityError``), ``database is locked``, or MLflow's ``RESOURCE_ALREADY_EXISTS``. Every
such write here is idempotent or atomic (nothing was written when it failed), so it is retried with
exponential backoff and jitter; any other error is raised at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException

__all__ = ["is_transient", "retrying"]

_logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Fragments of the messages a store gives when a concurrent writer won a race (sqlite, SQLAlchemy,
#: PostgreSQL/MySQL behind a server, MLflow's own error code).
_TRANSIENT = (
    "database is locked",
    "unique constraint failed",
    "integrityerror",
    "duplicate key value",
    "duplicate entry",
    "deadlock",
    "could not serialize",
    "resource_already_exists",
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost race with another writer (worth retrying), not a real error."""
    if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_ALREADY_EXISTS":
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(fragment in text for fragment in _TRANSIENT)


def retrying(fn: Callable[..., R], *args, what: str, attempts: int = 10, **kwargs) -> R:
    """``fn(*args, **kwargs)``, retried on :func:`is_transient` errors with backoff (50 ms doubling to
    2 s, jittered) up to ``attempts`` times; ``what`` names the write in the debug log."""
    jitter = random.Random()  # own generator: the global RNG is not ours to advance
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            _logger.debug("%s collided with another writer (%s); retry %d", what, exc, attempt)
            time.sleep(delay * (0.5 + jitter.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
