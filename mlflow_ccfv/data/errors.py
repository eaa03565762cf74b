"""The one exception type of the data layer."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder, file or case is unusable; the message names what and how to fix it."""
