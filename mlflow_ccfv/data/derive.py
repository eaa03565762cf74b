"""Derive an MSD-layout task from images and multi-structure label maps (e.g. TotalSegmentator).

A TotalSegmentator label map names ~100 structures; a task keeps a few of them, renumbered
``1..K`` in the order given, and sets every other voxel to background. The images are copied
byte for byte: a derived task never alters the intensities.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mlflow_ccfv.data.cases import new_task_folder
from mlflow_ccfv.data.nifti import load_nifti, save_nifti, strip_nifti_suffix
from mlflow_ccfv.errors import DatasetError

__all__ = ["derive_task", "TOTALSEG_ORGANS"]

log = logging.getLogger(__name__)

#: Some TotalSegmentator v2 ``total`` label ids (see ../shared/data/real/totalseg-ct/README.md).
TOTALSEG_ORGANS = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    20: "colon",
}

PathLike = str | os.PathLike


def derive_task(
    image: PathLike | Sequence[PathLike],
    label: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    label_map: Mapping[int, str],
    name: str,
    modality: str = "CT",
    case_ids: Sequence[str] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write the MSD folder ``<out_dir>/<name>`` holding the chosen structures of each label map.

    Args:
        image: one image file or a list (one per case); copied unchanged to ``imagesTr/``.
        label: the matching label map file(s), on each image's grid.
        out_dir: parent folder of the new task.
        label_map: source label id -> class name, e.g. ``{1: "spleen"}``; the i-th entry becomes
            class ``i`` (1-based), every other source value becomes 0 (background).
        name: task folder name, e.g. ``"Task09_Spleen"``.
        modality: ``dataset.json`` modality of the single channel (``"CT"`` selects CT normalisation).
        case_ids: ids for the cases; default ``<name>_<i:03d>``.
        overwrite: replace an existing folder of that name.

    Returns:
        The task folder.

    Raises:
        DatasetError: unreadable files, grids that differ, or a chosen label absent from every map.
    """
    images = [Path(image)] if isinstance(image, (str, os.PathLike)) else [Path(p) for p in image]
    labels = [Path(label)] if isinstance(label, (str, os.PathLike)) else [Path(p) for p in label]
    if len(images) != len(labels) or not images:
        raise DatasetError(f"derive_task needs one label per image; got {len(images)} images and {len(labels)} labels.")
    if not label_map:
        raise DatasetError("derive_task needs a non-empty label_map {source_id: class_name}.")
    if 0 in label_map:
        raise DatasetError("label_map must not contain 0: background is implicit.")
    short = name.split("_", 1)[-1].lower() if "_" in name else name.lower()
    case_ids = list(case_ids) if case_ids is not None else [f"{short}_{i:03d}" for i in range(len(images))]
    if len(case_ids) != len(images) or len(set(case_ids)) != len(case_ids):
        raise DatasetError(f"case_ids must be {len(images)} distinct ids, got {case_ids}.")

    root = new_task_folder(Path(out_dir) / name, overwrite, "pass overwrite=True or choose another name.")

    lut_size = max(int(k) for k in label_map) + 1
    training = []
    found = np.zeros(len(label_map) + 1, dtype=bool)
    for case_id, img_path, lab_path in zip(case_ids, images, labels):
        source, lab_affine = load_nifti(lab_path, "label", case_id)
        img_header: Any = nib.load(str(img_path)).header if img_path.is_file() else None
        if img_header is None:
            raise DatasetError(f"case {case_id!r}: image file {img_path} does not exist.")
        if tuple(img_header.get_data_shape()[:3]) != tuple(source.shape[:3]):
            raise DatasetError(
                f"case {case_id!r}: label {lab_path} shape {source.shape} differs from image {img_path} "
                f"shape {img_header.get_data_shape()}; they must share a grid."
            )
        source = np.asarray(source).astype(np.int64)
        lut = np.zeros(max(lut_size, int(source.max()) + 1), dtype=np.uint8)
        for new_id, old_id in enumerate(label_map, start=1):
            lut[int(old_id)] = new_id
        derived = lut[source]
        found[np.unique(derived)] = True
        suffix = ".nii.gz" if img_path.name.endswith(".nii.gz") else ".nii"
        img_dest = root / "imagesTr" / f"{case_id}{suffix}"
        shutil.copyfile(img_path, img_dest)
        lab_dest = root / "labelsTr" / f"{case_id}.nii.gz"
        save_nifti(lab_dest, derived, lab_affine)
        training.append({"image": f"./imagesTr/{img_dest.name}", "label": f"./labelsTr/{lab_dest.name}"})
    missing = [label_map[k] for i, k in enumerate(label_map, start=1) if not found[i]]
    if missing:
        shutil.rmtree(root)
        raise DatasetError(
            f"derive_task {name!r}: structures {missing} occur in none of the label maps; check the source ids."
        )
    meta = {
        "name": name,
        "description": description
        or f"derived from {', '.join(strip_nifti_suffix(p.name) for p in labels)} keeping "
        + ", ".join(f"{k}->{v}" for k, v in label_map.items()),
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": {"0": "background", **{str(i): str(v) for i, v in enumerate(label_map.values(), start=1)}},
        "source_label_ids": {str(i): int(k) for i, k in enumerate(label_map, start=1)},
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    log.info("derived task %s with %d cases at %s", name, len(training), root)
    return root
