"""Data layer: MSD-layout datasets, integrity check, pre-processing, split, synthetic tasks.

>>> ds = MSDDataset.load("Task09", data_root="data")      # doctest: +SKIP
>>> ds.verify(); split = ds.split(seed=0)                   # doctest: +SKIP
>>> case = ds.load_case(split.train[0])                     # image [C,X,Y,Z], label [X,Y,Z]  # doctest: +SKIP
"""

from mlflow_ccfv.data.errors import DatasetError
from mlflow_ccfv.data.integrity import VerifyReport, verify_dataset
from mlflow_ccfv.data.msd import CaseFiles, MSDDataset, Split, resolve_dataset
from mlflow_ccfv.data.derive import derive_task
from mlflow_ccfv.data.preprocess import PreprocessConfig, PreprocessedCase
from mlflow_ccfv.data.synthetic import SYNTHETIC_TASKS, generate_family, generate_task, plot_family

__all__ = [
    "CaseFiles",
    "DatasetError",
    "MSDDataset",
    "PreprocessConfig",
    "PreprocessedCase",
    "SYNTHETIC_TASKS",
    "Split",
    "VerifyReport",
    "derive_task",
    "generate_family",
    "generate_task",
    "plot_family",
    "resolve_dataset",
    "verify_dataset",
]
