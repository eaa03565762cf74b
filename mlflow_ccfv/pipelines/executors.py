"""Where the per-item work of a pipeline runs: in this process, or as Ray tasks on a cluster.

Scoring is independent per model version and fine-tuning per (model, target, seed), so a pipeline
hands a list of task descriptions and a module-level task function to an :class:`Executor` and gets
the results back in the same order:

- :class:`SerialExecutor`: one after the other, in this process (the default);
- :class:`RayExecutor`: one Ray task per item with ``num_cpus``/``num_gpus`` resources, retried up to
  ``max_retries`` times when its worker dies. It joins the cluster at ``address`` (``ray start
  --head`` elsewhere, ``auto`` for the local node's cluster) or starts a local Ray instance, and ships
  this package's code to the workers (:func:`ray_runtime_env`: ``py_modules``), so a worker runs
  exactly the driver's code. Each task talks to the tracking server itself (``MLFLOW_TRACKING_URI`` is passed to the
  workers), so the tracking URI must be one every worker reaches (an ``http://`` server, not a local
  sqlite file on another node).

A task that still fails after its retries comes back as a :class:`TaskFailure` (its item and the
error), never as a hole in the results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow

from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.options import CACHE_ENV, ExecutorKind
from mlflow_ccfv.tracking.server import HTTP_RETRY_DEFAULTS

__all__ = [
    "CANCEL_WAIT_S",
    "Executor",
    "RayExecutor",
    "SerialExecutor",
    "TaskFailure",
    "make_executor",
    "ray_runtime_env",
]

_logger = logging.getLogger(__name__)

#: Seconds an interrupted :class:`RayExecutor` waits for its cancelled tasks to end.
CANCEL_WAIT_S = 10.0
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TaskFailure:
    """A task that did not return: its item and the error (after Ray's retries)."""

    item: Any
    error: str


class Executor(Protocol):
    """Runs ``fn`` on every item; results in item order; ``on_done(index, result)`` as each finishes."""

    name: str
    in_process: bool

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[int, Any], None] | None = None
    ) -> list[Any]: ...

    def close(self) -> None: ...


@dataclass
class SerialExecutor:
    """Every item in this process, in order."""

    name: str = field(default="serial", init=False)
    in_process: bool = field(default=True, init=False)

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[int, Any], None] | None = None
    ) -> list[Any]:
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if on_done is not None:
                on_done(i, out[-1])
        return out

    def close(self) -> None:
        return None


@dataclass
class RayExecutor:
    """One Ray task per item. ``address``: a running cluster (``ray://host:10001``, ``host:6379`` or
    ``auto``); None starts a local instance with ``local_cpus`` CPUs (default: all) unless Ray is already
    initialised in this process. ``num_cpus``/``num_gpus``: resources of each task; ``max_retries``:
    re-runs of a task whose worker died. When ``map`` is interrupted (Ctrl-C), its unfinished tasks are
    cancelled (running ones killed) and awaited up to :data:`CANCEL_WAIT_S` seconds before it re-raises."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3
    local_cpus: int | None = None
    name: str = field(default="ray", init=False)
    in_process: bool = field(default=False, init=False)
    _started: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_cpus <= 0 or self.num_gpus < 0 or self.max_retries < 0:
            raise OptionError(
                f"Ray task resources must be num_cpus > 0, num_gpus >= 0, max_retries >= 0; got "
                f"{self.num_cpus}, {self.num_gpus}, {self.max_retries}."
            )

    def start(self) -> None:
        """Join or start Ray (once); a Ray already initialised in this process is used as is."""
        try:
            import ray
        except ImportError as exc:
            raise OptionError(
                "--executor ray needs Ray: pip install 'mlflow-ccfv[ray]' (or `pip install ray`)."
            ) from exc
        if ray.is_initialized():
            return
        _logger.info("starting Ray (%s)", self.address or "local instance")
        ray.init(
            address=self.address,
            num_cpus=self.local_cpus if self.address is None else None,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env=ray_runtime_env(),
        )
        self._started = True

    def _runtime_env(self) -> dict[str, Any]:
        """The tasks' environment variables (merged with the job's runtime environment by Ray)."""
        threads = str(max(1, int(self.num_cpus)))
        env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "OMP_NUM_THREADS": threads}
        for var in (CACHE_ENV, "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", *HTTP_RETRY_DEFAULTS):
            if os.environ.get(var):
                env[var] = os.environ[var]
        return {"env_vars": env}

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], on_done: Callable[[int, Any], None] | None = None
    ) -> list[Any]:
        import ray

        self.start()
        remote = ray.remote(fn).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_retries=self.max_retries,
            runtime_env=self._runtime_env(),
        )
        refs = [remote.remote(item) for item in items]
        where = {ref: i for i, ref in enumerate(refs)}
        out: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = where[ref]
                    try:
                        out[i] = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the task died more often than max_retries allows
                        out[i] = TaskFailure(items[i], f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
                        _logger.error("Ray task %d failed: %s", i, out[i].error)
                    if on_done is not None:
                        on_done(i, out[i])
        except BaseException:  # Ctrl-C or an error in on_done: no task may write after the caller cleans up
            self._cancel(pending)
            raise
        return out

    def _cancel(self, refs: Sequence[Any]) -> None:
        """Stop the tasks of ``refs`` (running ones killed) and wait up to :data:`CANCEL_WAIT_S` for them to end."""
        import ray

        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:  # already finished, or the cluster is gone
                _logger.debug("could not cancel a Ray task: %s", exc)
        if refs:
            try:
                ray.wait(list(refs), num_returns=len(refs), timeout=CANCEL_WAIT_S)
            except Exception as exc:
                _logger.debug("waiting for cancelled Ray tasks: %s", exc)

    def close(self) -> None:
        """Shut Ray down if this executor started it."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def ray_runtime_env() -> dict[str, Any]:
    """The Ray job's ``runtime_env``: this package's folder as ``py_modules``, so every worker imports the
    driver's code. :class:`RayExecutor` passes it when it starts Ray; pass it yourself when you call
    ``ray.init`` (``ray.init(num_cpus=2, runtime_env=ray_runtime_env())``)."""
    return {"py_modules": [str(_PACKAGE_DIR)]}


def make_executor(
    name: str = "serial",
    *,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_retries: int = 3,
) -> Executor:
    """The executor called ``name`` (``serial`` or ``ray``); the Ray settings are ignored by ``serial``."""
    if name == "serial":
        if address:
            raise OptionError("--ray-address is for --executor ray; drop it or add --executor ray.")
        return SerialExecutor()
    if name == "ray":
        return RayExecutor(address=address or None, num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
    raise OptionError(f"Unknown executor {name!r}; valid: {', '.join(ExecutorKind)}.")
