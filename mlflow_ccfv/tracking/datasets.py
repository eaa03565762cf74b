"""Target datasets as MLflow datasets: the manifest of a :class:`~mlflow_ccfv.data.target.Target`.

The MLflow dataset of a target is its pandas manifest (one row per case: ``case_id, image, label,
image_sha256, label_sha256, split``), ``source`` the task folder (``file:///.../Task07_...``),
``name`` the task's short name (``Task07``) and ``digest`` the target's content digest. Metrics linked
to it show in the Models tab under ``<name> (#<digest>)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
from mlflow.data.pandas_dataset import PandasDataset, from_pandas

from mlflow_ccfv.data.msd import MSDDataset
from mlflow_ccfv.data.target import Target, make_target

__all__ = ["log_target_dataset", "mlflow_dataset", "target_dataset"]


def mlflow_dataset(target: Target, name: str | None = None, digest: str | None = None) -> PandasDataset:
    """The target's manifest as an MLflow ``PandasDataset`` (name ``target.name``, digest ``target.digest``
    unless given)."""
    with warnings.catch_warnings():  # a file:// source "can be interpreted in multiple ways"
        warnings.simplefilter("ignore", UserWarning)
        return from_pandas(
            target.manifest,
            source=target.dataset.root.as_uri(),
            name=name or target.name,
            digest=digest or target.digest,
        )


def log_target_dataset(dataset: MSDDataset, split: str = "train", context: str = "target") -> PandasDataset:
    """Log the target's manifest as an input of the active run (``mlflow.log_input``); returns the MLflow dataset."""
    ds = mlflow_dataset(make_target(dataset, split))
    mlflow.log_input(ds, context=context)
    return ds


def target_dataset(
    dataset: str | Path | MSDDataset, split: str = "train", data_root: str | Path | None = None
) -> PandasDataset:
    """The MLflow dataset (manifest) of a target, ready for ``mlflow.models.evaluate(data=...)``."""
    if not isinstance(dataset, MSDDataset):
        dataset = MSDDataset.load(dataset, data_root=data_root)
    return mlflow_dataset(make_target(dataset, split))
