"""Is the tracking server there? One short request before any work, bounded retries during it.

With ``MLFLOW_TRACKING_URI=http://host:port`` pointing at nothing, MLflow's client retries every
request with back-off (7 retries, about 4 minutes a request by default) and then prints its
tracebacks. Commands open the store with :func:`open_store`: one ``GET /health`` with a short timeout
(:func:`ensure_tracking_reachable`), MLflow's HTTP retries bounded (:func:`bound_http_retries`), and
the runs of killed processes closed (:func:`~mlflow_ccfv.tracking.runs.recover_crashed`). A server
lost mid-command is recognised by :func:`lost_tracking_server`, which turns the client's error into
one :class:`~mlflow_ccfv.errors.TrackingError` line.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import mlflow

from mlflow_ccfv.errors import TrackingError
from mlflow_ccfv.tracking.runs import recover_crashed

__all__ = [
    "HTTP_RETRY_DEFAULTS",
    "TRACKING_TIMEOUT_ENV",
    "bound_http_retries",
    "ensure_tracking_reachable",
    "lost_tracking_server",
    "open_store",
    "retry_budget_seconds",
]

#: Seconds the up-front check waits for the server (default 5).
TRACKING_TIMEOUT_ENV = "MLFLOW_CCFV_TRACKING_TIMEOUT"

#: MLflow's HTTP retry settings a command uses unless the user set them: 4 retries, back-off 0, 2, 4,
#: 8 s (+ up to 1 s of jitter each): about 17 s before a request to a server that refuses connections
#: gives up; each try waits at most 30 s for an answer (a server that accepts but never answers).
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

#: Seconds the probe that tells a lost server from an error it answered waits.
_PROBE_TIMEOUT = 3.0


class _CommandState:
    """Set by :func:`bound_http_retries` (a command's process): once the server is confirmed lost, the
    command is ending, so its last requests (closing its run) are not retried for another budget."""

    bounded = False
    lost: TrackingError | None = None


def bound_http_retries() -> dict[str, str]:
    """Set :data:`HTTP_RETRY_DEFAULTS` in the environment where the user has not set the variable (MLflow
    reads them at every request; Ray workers get them from the executor), and stop retrying in this
    process once :func:`lost_tracking_server` has confirmed the server gone. Returns the values set.
    Called by the command line, which owns its process's environment."""
    chosen = {}
    for var, value in HTTP_RETRY_DEFAULTS.items():
        if not os.environ.get(var, "").strip():
            os.environ[var] = value
            chosen[var] = value
    _CommandState.bounded = True
    _CommandState.lost = None
    return chosen


def _env_number(var: str) -> float:
    try:
        return float(os.environ.get(var) or HTTP_RETRY_DEFAULTS[var])
    except ValueError:
        return float(HTTP_RETRY_DEFAULTS[var])


def retry_budget_seconds() -> float:
    """The longest one request retries a server that refuses connections under the current settings:
    urllib3's back-off ``factor * 2**k`` for k = 1 .. retries - 1 (the first retry is immediate), plus
    MLflow's default jitter of up to 1 s on each of those."""
    retries = int(_env_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    factor = _env_number("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    return sum(min(factor * 2**k + 1.0, 120.0) for k in range(1, retries))


def _probe(uri: str, timeout: float) -> str | None:
    """None if ``uri`` answers ``GET /health`` (any HTTP status) within ``timeout`` s, else the reason."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered (authentication, a proxy's status page ...)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def _http_uri() -> str | None:
    uri = mlflow.get_tracking_uri()
    return uri if uri.startswith(("http://", "https://")) else None


def ensure_tracking_reachable(timeout: float | None = None) -> None:
    """Raise :class:`~mlflow_ccfv.errors.TrackingError` if the tracking URI is an HTTP(S) server that
    does not answer ``GET /health`` within ``timeout`` seconds (default ``$MLFLOW_CCFV_TRACKING_TIMEOUT``
    or 5). Local stores (``sqlite:///``, a folder) and any HTTP answer, even an error status, pass."""
    uri = _http_uri()
    if uri is None:
        return
    if timeout is None:
        try:
            timeout = float(os.environ.get(TRACKING_TIMEOUT_ENV, "5"))
        except ValueError:
            timeout = 5.0
    reason = _probe(uri, timeout)
    if reason is not None:
        raise TrackingError(
            f"The MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer ({reason}; waited {timeout:g} s). "
            "Start it (`mlflow server ...`), or set MLFLOW_TRACKING_URI to a reachable server or a local "
            "store such as sqlite:///mlflow.db."
        )


def lost_tracking_server(exc: BaseException) -> TrackingError | None:
    """The one-line :class:`~mlflow_ccfv.errors.TrackingError` for ``exc`` if it was raised because the
    tracking server stopped answering (the tracking URI is an HTTP(S) server and ``GET /health`` now
    fails), else None: an error the server did answer (or a local store's) is not a lost server. In a
    command's process (:func:`bound_http_retries`) the first loss is kept and MLflow's retries are
    turned off, so the requests that close the command's run fail at once."""
    if isinstance(exc, TrackingError):
        return exc
    uri = _http_uri()
    if uri is None or not isinstance(exc, Exception):
        return None
    if _CommandState.lost is not None:
        return _CommandState.lost
    reason = _probe(uri, _PROBE_TIMEOUT)
    if reason is None:
        return None
    retries = int(_env_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    lost = TrackingError(
        f"The MLflow tracking server {uri} stopped answering during the command ({reason}); gave up after "
        f"{retries} retries of about {retry_budget_seconds():.0f} s in all (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR). Start the server again and rerun the command; the next command "
        "closes the run this one left RUNNING as KILLED."
    )
    if _CommandState.bounded:  # the command ends with this error: no second budget to close its run
        _CommandState.lost = lost
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    return lost


def open_store() -> None:
    """What every command does before it reads or writes the store: refuse an unreachable server
    (:func:`ensure_tracking_reachable`), bound MLflow's HTTP retries (:func:`bound_http_retries`), and
    close the runs and LoggedModels killed processes of this host left behind
    (:func:`~mlflow_ccfv.tracking.runs.recover_crashed`)."""
    ensure_tracking_reachable()
    bound_http_retries()
    recover_crashed()
