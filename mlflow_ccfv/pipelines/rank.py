"""Read-only views of the registry: the stored ranking of a dataset and the versions of a bank.

``mlflow-ccfv rank --dataset D`` prints what ``score`` stored (the ``transferability.*`` tags, parsed in
:mod:`mlflow_ccfv.tracking.tags`) without loading a model; ``mlflow-ccfv bank`` lists a bank's versions
(the command a "no such model" error points to). Nothing here writes to MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import mlflow
import pandas as pd

from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.search import bank_versions
from mlflow_ccfv.tracking.tag_values import stored_ranking

__all__ = ["bank_table", "frame_json", "frame_markdown", "frames_json", "ranking_of"]


def ranking_of(dataset: str, bank: str | None = None) -> pd.DataFrame:
    """The stored ranking of ``dataset`` over every version (or the versions of ``bank``) that holds a
    ``transferability.rank.<dataset>`` tag, best first; a :class:`RegistryError` when none does."""
    versions = bank_versions(bank) if bank else mlflow.search_model_versions()
    frame = stored_ranking(versions, dataset)
    if frame.empty:
        where = f"in the bank {bank!r}" if bank else "in the registry"
        raise RegistryError(
            f"No version {where} holds a stored ranking of {dataset!r} (tag {T.rank_tag(dataset)}). "
            f"Score it first: mlflow-ccfv score --dataset {dataset}" + (f" --bank {bank}" if bank else "") + "."
        )
    return frame


def bank_table(bank: str) -> pd.DataFrame:
    """Every version of ``bank``: ``model`` (``models:/name/version``), architecture, source, patch size."""
    rows = [
        {
            "model": f"models:/{v.name}/{v.version}",
            "architecture": (v.tags or {}).get(T.ARCHITECTURE, ""),
            "source_dataset": (v.tags or {}).get(T.SOURCE_DATASET, ""),
            "patch_size": (v.tags or {}).get(T.PATCH_SIZE, ""),
        }
        for v in bank_versions(bank)
    ]
    if not rows:
        raise RegistryError(
            f"The bank {bank!r} is empty: no model version is tagged {T.BANK}={bank}. Register one with "
            f"`mlflow-ccfv register ... --bank {bank}` or `mlflow-ccfv pretrain ... --bank {bank}`."
        )
    return pd.DataFrame(rows)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def frame_markdown(frame: pd.DataFrame) -> str:
    """A table as Markdown (numbers to 4 decimals, missing values blank)."""
    cols = list(frame.columns)
    header = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return header + "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        for rec in frame.to_dict(orient="records")
    ]


def frame_json(frame: pd.DataFrame) -> str:
    """A table as a JSON list of records (missing values ``null``)."""
    return json.dumps(_records(frame), indent=2, default=str)


def frames_json(frames: Mapping[str, pd.DataFrame]) -> str:
    """Named tables as one JSON object: name -> list of records (missing values ``null``)."""
    return json.dumps({name: _records(frame) for name, frame in frames.items()}, indent=2, default=str)
