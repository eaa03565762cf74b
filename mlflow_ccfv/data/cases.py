"""What the integrity check and pre-processing need to know of a task folder, and a new task folder.

:class:`CaseFiles` is one training case; :class:`TaskFolder` is the part of
:class:`~mlflow_ccfv.data.msd.MSDDataset` that :mod:`~mlflow_ccfv.data.integrity` and
:mod:`~mlflow_ccfv.data.preprocess` read, so those modules do not import ``msd`` (which calls them).
:func:`new_task_folder` creates the empty ``imagesTr/`` and ``labelsTr/`` of a task folder being written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlflow_ccfv.errors import DatasetError

__all__ = ["CaseFiles", "TaskFolder", "new_task_folder"]


@dataclass(frozen=True)
class CaseFiles:
    """One training case: its id (the image file name without ``.nii.gz``) and its two files."""

    case_id: str
    image: Path
    label: Path


class TaskFolder(Protocol):
    """A task folder as the integrity check and pre-processing see it (implemented by ``MSDDataset``)."""

    name: str
    root: Path
    modalities: dict[int, str]
    labels: dict[int, str]
    cases: list[CaseFiles]
    _intensity_cache: dict[Any, Any]

    @property
    def n_channels(self) -> int: ...

    @property
    def is_ct(self) -> bool: ...

    def median_spacing(self) -> tuple[float, ...]: ...


def new_task_folder(root: Path, overwrite: bool, remedy: str) -> Path:
    """Create ``root`` with empty ``imagesTr/`` and ``labelsTr/``; an existing ``root`` is removed first
    with ``overwrite``, else refused (:class:`DatasetError` ending in ``remedy``)."""
    if root.exists():
        if not overwrite:
            raise DatasetError(f"{root} already exists; {remedy}")
        shutil.rmtree(root)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    return root
