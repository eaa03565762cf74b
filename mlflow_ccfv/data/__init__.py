"""Data layer: MSD-layout datasets, NIfTI I/O, integrity check, pre-processing, split, targets, synthetic tasks.

>>> ds = MSDDataset.load("Task09", data_root="data")      # doctest: +SKIP
>>> ds.verify(); split = ds.split(seed=0)                   # doctest: +SKIP
>>> case = ds.load_case(split.train[0])                     # image [C,X,Y,Z], label [X,Y,Z]  # doctest: +SKIP
"""

from typing import TYPE_CHECKING

from mlflow_ccfv.lazy import lazy_attributes

if TYPE_CHECKING:
    from mlflow_ccfv.data.cases import CaseFiles
    from mlflow_ccfv.data.derive import derive_task
    from mlflow_ccfv.data.integrity import VerifyReport, verify_dataset
    from mlflow_ccfv.data.msd import MSDDataset, Split, resolve_dataset
    from mlflow_ccfv.data.normalization import IntensityNormalization
    from mlflow_ccfv.data.preprocess import PreprocessConfig, PreprocessedCase
    from mlflow_ccfv.data.synthetic import (
        SYNTHETIC_TASKS,
        SyntheticSettings,
        generate_family,
        generate_task,
        plot_family,
    )
    from mlflow_ccfv.data.target import Target, make_target, short_name, target_from_manifest
from mlflow_ccfv.errors import DatasetError

__all__ = [
    "SYNTHETIC_TASKS",
    "CaseFiles",
    "DatasetError",
    "IntensityNormalization",
    "MSDDataset",
    "PreprocessConfig",
    "PreprocessedCase",
    "Split",
    "SyntheticSettings",
    "Target",
    "VerifyReport",
    "derive_task",
    "generate_family",
    "generate_task",
    "make_target",
    "plot_family",
    "resolve_dataset",
    "short_name",
    "target_from_manifest",
    "verify_dataset",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "CaseFiles": "cases",
        "derive_task": "derive",
        "VerifyReport": "integrity",
        "verify_dataset": "integrity",
        "MSDDataset": "msd",
        "Split": "msd",
        "resolve_dataset": "msd",
        "IntensityNormalization": "normalization",
        "PreprocessConfig": "preprocess",
        "PreprocessedCase": "preprocess",
        "SYNTHETIC_TASKS": "synthetic",
        "SyntheticSettings": "synthetic",
        "generate_family": "synthetic",
        "generate_task": "synthetic",
        "plot_family": "synthetic",
        "Target": "target",
        "make_target": "target",
        "short_name": "target",
        "target_from_manifest": "target",
    },
)
