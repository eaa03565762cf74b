"""The project's errors: one base class, and the exit status each kind maps to on the command line.

Every error a user can fix (bad input, a missing registry entry, an estimator that cannot run on the
data given) derives from :class:`CCFVError`; its message is a sentence that names the thing and the
fix. The command line prints ``<command> failed: <message>`` and exits with the class's
:attr:`~CCFVError.exit_code` (the table in docs/cli.md). Anything else is a bug and keeps its
traceback (exit status 1).

The subclasses also derive from the built-in exception a caller would catch without knowing this
module (``ValueError``, ``LookupError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "MESSAGE_LIMIT",
    "CCFVError",
    "DatasetError",
    "EstimatorError",
    "OptionError",
    "RegistryError",
    "TrackingError",
    "cap_message",
]

#: The longest message a command prints (characters); longer ones keep their head and tail.
MESSAGE_LIMIT = 2000


class CCFVError(Exception):
    """An error the user can act on; ``exit_code`` is the command line's exit status for it."""

    exit_code: int = 2


class OptionError(CCFVError, ValueError):
    """A command option, evaluator setting or specification field is invalid (names it and the valid values)."""

    exit_code = 2


class DatasetError(CCFVError, ValueError):
    """A dataset folder, file or case is unusable; the message names what and how to fix it."""

    exit_code = 3


class RegistryError(CCFVError, LookupError):
    """A model, version, bank or LoggedModel is missing from the MLflow registry, or unusable."""

    exit_code = 4


class EstimatorError(CCFVError, RuntimeError):
    """An estimator failed on the sampled features; the message starts with the method's name."""

    exit_code = 5

    def __init__(self, method: str, message: str):
        super().__init__(f"{method}: {message}")
        self.method = method


class TrackingError(CCFVError, ConnectionError):
    """The MLflow tracking server (``MLFLOW_TRACKING_URI``) cannot be reached, answers with an error, or
    stopped answering while a command ran (after MLflow's bounded retries)."""

    exit_code = 6


def cap_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` if at most ``limit`` characters, else its head and tail around ``[... N characters left out ...]``.

    A dataset.json with a million bad entries must give a message a terminal can show, not 160 MB.
    """
    if len(text) <= limit:
        return text
    head = text[: limit * 3 // 4]
    tail = text[-(limit // 4) :]
    return f"{head} [... {len(text) - len(head) - len(tail)} characters left out ...] {tail}"


#: Exit status of every command: 0 success, 1 a bug (traceback) or some versions failed to score,
#: then one status per error kind above. Click's own usage errors (unknown option) also exit 2.
EXIT_CODES: dict[str, int] = {
    "success": 0,
    "bug, or some model versions failed (see the FAILED lines)": 1,
    "bad option or specification (OptionError, click usage error)": OptionError.exit_code,
    "unusable dataset (DatasetError)": DatasetError.exit_code,
    "missing or unusable registry entry (RegistryError)": RegistryError.exit_code,
    "estimator failed on the data (EstimatorError)": EstimatorError.exit_code,
    "tracking server unreachable, before or during the command (TrackingError)": TrackingError.exit_code,
}
