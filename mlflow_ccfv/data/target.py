"""A target task resolved for scoring or fine-tuning: the dataset, the chosen cases, their manifest, a digest.

The manifest has one row per case with the columns ``case_id, image, label, image_sha256,
label_sha256, split`` (``image``/``label`` absolute paths); the digest covers the dataset and the
selected cases' checksums, so two targets with equal digests hold the same bytes. Its MLflow form
(a dataset logged with ``log_input``) is built in :mod:`mlflow_ccfv.tracking.datasets`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlflow_ccfv.data.msd import MSDDataset
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.options import TargetSplit

__all__ = ["MANIFEST_COLUMNS", "SPLITS", "Target", "make_target", "short_name", "target_from_manifest"]

SPLITS: tuple[str, ...] = tuple(TargetSplit)
MANIFEST_COLUMNS = ("case_id", "image", "label", "image_sha256", "label_sha256", "split")
_TASK = re.compile(r"^(Task\d+)(_|$)")


def short_name(dataset: MSDDataset) -> str:
    """``Task07_Pancreas`` -> ``Task07`` (the name used in tags and metric columns); other folders as is."""
    match = _TASK.match(dataset.root.name)
    return match.group(1) if match else dataset.root.name


@dataclass
class Target:
    """A target task resolved for scoring: the dataset, the chosen cases, their manifest and digest."""

    dataset: MSDDataset
    name: str
    split: str
    case_ids: list[str]
    manifest: pd.DataFrame
    digest: str


def _manifest_digest(dataset_digest: str, manifest: pd.DataFrame) -> str:
    h = hashlib.sha256(dataset_digest.encode())
    for row in manifest.sort_values("case_id").itertuples():
        h.update(f"{row.case_id}:{row.image_sha256}:{row.label_sha256};".encode())
    return h.hexdigest()[:12]


def make_target(dataset: MSDDataset, split: str = "train", seed: int = 0) -> Target:
    """Select ``split`` (``train`` = the 80% a model would be fine-tuned on, ``test``, ``all``) and build the manifest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    manifest = dataset.manifest(dataset.split(seed=seed)).copy()
    manifest["image"] = [str((dataset.root / p).resolve()) for p in manifest["image"]]
    manifest["label"] = [str((dataset.root / p).resolve()) for p in manifest["label"]]
    if split != "all":
        manifest = manifest[manifest["split"] == split].reset_index(drop=True)
    if manifest.empty:
        raise DatasetError(f"{dataset.root}: the {split!r} split has no cases; use split=all or add cases.")
    return Target(
        dataset=dataset,
        name=short_name(dataset),
        split=split,
        case_ids=list(manifest["case_id"]),
        manifest=manifest,
        digest=_manifest_digest(dataset.digest(), manifest),
    )


def target_from_manifest(manifest: pd.DataFrame, name: str | None = None, root: str | Path | None = None) -> Target:
    """Rebuild a :class:`Target` from a manifest (the evaluator's input), checking every checksum.

    ``root`` (the task folder) defaults to the folder above the images' ``imagesTr``.
    """
    missing = [c for c in ("case_id", "image", "label") if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"The dataset lacks the manifest column(s) {', '.join(missing)}; build it with "
            "mlflow_ccfv.tracking.target_dataset(...) (columns: " + ", ".join(MANIFEST_COLUMNS) + ")."
        )
    if root is None:
        parents = {Path(p).resolve().parent.parent for p in manifest["image"]}
        if len(parents) != 1:
            raise ValueError(
                f"The manifest's images lie in {len(parents)} task folders; pass evaluator_config={{'data_root': <task folder>}}."
            )
        root = parents.pop()
    dataset = MSDDataset.load(Path(root))
    known = set(dataset.case_ids)
    unknown = [c for c in manifest["case_id"] if c not in known]
    if unknown:
        raise DatasetError(f"Case(s) {', '.join(unknown)} of the manifest are not in {dataset.root}/dataset.json.")
    full = dataset.manifest().set_index("case_id")  # the checksums on disk now, hashed once
    if "image_sha256" in manifest.columns:
        changed = [
            row.case_id
            for row in manifest.itertuples()
            if full.loc[row.case_id, "image_sha256"] != row.image_sha256
            or full.loc[row.case_id, "label_sha256"] != row.label_sha256
        ]
        if changed:
            raise DatasetError(
                f"Case(s) {', '.join(changed)} changed on disk since the manifest was made (checksum differs); "
                "rebuild the manifest with target_dataset(...)."
            )
    rows = manifest.copy()
    for col in ("image_sha256", "label_sha256"):
        if col not in rows.columns:
            rows[col] = [full.loc[c, col] for c in rows["case_id"]]
    split = str(rows["split"].iloc[0]) if "split" in rows.columns and rows["split"].nunique() == 1 else "all"
    return Target(
        dataset=dataset,
        name=name or short_name(dataset),
        split=split,
        case_ids=list(rows["case_id"]),
        manifest=rows.reset_index(drop=True),
        digest=_manifest_digest(dataset.digest(), rows),
    )
