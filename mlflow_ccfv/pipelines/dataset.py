"""The ``log-dataset`` pipeline: a target task folder uploaded as MLflow artifacts, once per content.

:func:`log_dataset_from_options` checks the folder (``MSDDataset.verify``) and uploads it with
:func:`mlflow_ccfv.tracking.datasets.log_dataset_artifacts`; the returned ``runs:/<run_id>/<folder>``
is what ``score``, ``finetune``, the ``ccfv`` evaluator and a Ray worker accept as their dataset.
"""

from __future__ import annotations

import logging

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.options import parse_bool
from mlflow_ccfv.tracking.datasets import DATASET_EXPERIMENT, DatasetArtifact, log_dataset_artifacts

__all__ = ["log_dataset_from_options"]

_logger = logging.getLogger(__name__)


def log_dataset_from_options(
    *, dataset: str, data_root: str = "data", verify="true", experiment: str = DATASET_EXPERIMENT
) -> DatasetArtifact:
    """One ``log-dataset`` invocation: load the task folder (a name under ``data_root`` or a path), verify
    every case unless ``verify`` is false, upload it unless the same content is already logged."""
    ds = MSDDataset.load(dataset, data_root=data_root or None)
    if parse_bool(verify, "verify"):
        ds.verify()
    return log_dataset_artifacts(ds, experiment or DATASET_EXPERIMENT)
