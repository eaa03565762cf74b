"""Is the tracking server there? One short request before any work, instead of MLflow's long retries.

With ``MLFLOW_TRACKING_URI=http://host:port`` pointing at nothing, MLflow's client retries every
request with back-off (minutes in all) and then prints its tracebacks. Commands call
:func:`ensure_tracking_reachable` first: one ``GET /health`` with a short timeout, one clear line.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import mlflow

from mlflow_ccfv.errors import TrackingError

__all__ = ["TRACKING_TIMEOUT_ENV", "ensure_tracking_reachable"]

#: Seconds the up-front check waits for the server (default 5).
TRACKING_TIMEOUT_ENV = "MLFLOW_CCFV_TRACKING_TIMEOUT"


def ensure_tracking_reachable(timeout: float | None = None) -> None:
    """Raise :class:`~mlflow_ccfv.errors.TrackingError` if the tracking URI is an HTTP(S) server that
    does not answer ``GET /health`` within ``timeout`` seconds (default ``$MLFLOW_CCFV_TRACKING_TIMEOUT``
    or 5). Local stores (``sqlite:///``, a folder) and any HTTP answer, even an error status, pass."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    if timeout is None:
        try:
            timeout = float(os.environ.get(TRACKING_TIMEOUT_ENV, "5"))
        except ValueError:
            timeout = 5.0
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # the server answered (authentication, a proxy's status page ...): MLflow reports the rest
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"The MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer ({reason}; waited {timeout:g} s). "
            "Start it (`mlflow server ...`), or set MLFLOW_TRACKING_URI to a reachable server or a local "
            "store such as sqlite:///mlflow.db."
        ) from None
