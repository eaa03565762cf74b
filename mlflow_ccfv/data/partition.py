"""Partition one MSD task by case (subject) into disjoint tasks: a source part and a target part.

A real benchmark needs a model pre-trained on the target's own task without ever seeing a target
case: MSD Task04 (hippocampus, one image per subject) is cut into a source task and a target task.
The cases are drawn with ``numpy.random.default_rng(seed)`` from the sorted case ids, so a partition
depends only on the case ids, the sizes and the seed. Files are copied byte for byte (a symbolic link
leading out of a task folder is refused by :class:`~mlflow_ccfv.data.msd.MSDDataset`); a part that
already exists with the same cases is kept as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlflow_ccfv.data.msd import MSDDataset
from mlflow_ccfv.errors import DatasetError

__all__ = ["partition_task"]


def partition_task(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    parts: Sequence[tuple[str, int]],
    seed: int = 0,
) -> list[Path]:
    """Write one MSD folder ``<out_dir>/<name>`` per ``(name, n_cases)`` of ``parts``, disjoint by case.

    Args:
        source: an MSD task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        out_dir: parent folder of the parts.
        parts: ``(task folder name, number of cases)``, e.g. ``[("Task41_HippoSource", 60), ...]``;
            the sizes add up to at most the source's number of cases.
        seed: the draw of the cases.

    Returns:
        The part folders, in the order of ``parts``.

    Raises:
        DatasetError: the sizes exceed the source, a size is below 2, or a part folder exists with
        other cases (delete it, or choose another ``out_dir``).
    """
    ds = MSDDataset.load(source)
    ids = sorted(ds.case_ids)
    sizes = [int(n) for _, n in parts]
    if any(n < 2 for n in sizes) or sum(sizes) > len(ids):
        raise DatasetError(
            f"Cannot cut {sum(sizes)} cases ({', '.join(f'{name}: {n}' for name, n in parts)}) out of the "
            f"{len(ids)} cases of {ds.root}; each part needs at least 2 and the parts at most {len(ids)}."
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    meta = json.loads((ds.root / "dataset.json").read_text())
    by_id = {c.case_id: c for c in ds.cases}
    folders, start = [], 0
    for name, n in parts:
        chosen = sorted(ids[i] for i in order[start : start + n])
        start += n
        folders.append(_write_part(ds, meta, [by_id[i] for i in chosen], Path(out_dir) / name, name))
    return folders


def _write_part(ds: MSDDataset, meta: dict, cases: list, folder: Path, name: str) -> Path:
    training = [
        {"image": f"./imagesTr/{c.image.name}", "label": f"./labelsTr/{c.label.name}"}
        for c in sorted(cases, key=lambda c: c.case_id)
    ]
    wanted = {**meta, "name": name, "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    wanted["description"] = f"{len(training)} cases of {meta.get('name', ds.root.name)} ({ds.root.name}), by case"
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        if json.loads(meta_path.read_text()).get("training") == training:
            return folder
        raise DatasetError(
            f"{folder} exists with other cases than this partition; delete it or choose another output folder."
        )
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for c in cases:
        shutil.copyfile(Path(c.image).resolve(), folder / "imagesTr" / c.image.name)
        shutil.copyfile(Path(c.label).resolve(), folder / "labelsTr" / c.label.name)
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(wanted, indent=1))
    tmp.replace(meta_path)  # the marker of a complete part, written last
    return folder
