"""The ``log-dataset`` pipeline: a target task folder uploaded as MLflow artifacts, once per content.

`log_dataset_folder` checks the folder (``MSDDataset.verify``) and uploads it with
:func:`mlflow_ccfv.tracking.datasets.log_dataset_artifacts`; the returned ``runs:/<run_id>/<folder>``
is what ``score``, ``finetune``, the ``ccfv`` evaluator and a Ray worker accept as their dataset.
"""

from __future__ import annotations

import logging

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.options import DATASET_EXPERIMENT
from mlflow_ccfv.tracking.datasets import DatasetArtifact, log_dataset_artifacts

__all__ = ["log_dataset_folder"]

_logger = logging.getLogger(__name__)


def log_dataset_folder(
    dataset: str, *, data_root: str | None = None, verify: bool = True, experiment: str = DATASET_EXPERIMENT
) -> DatasetArtifact:
    """One ``log-dataset`` invocation: load the task folder (a name under ``data_root`` or a path), verify
    every case unless ``verify`` is false, upload it unless the same content is already logged."""
    ds = MSDDataset.load(dataset, data_root=data_root)
    if verify:
        ds.verify()
    return log_dataset_artifacts(ds, experiment)
