"""A family of synthetic CT segmentation tasks in MSD layout (CT-like phantoms, no download needed).

The entry point of the synthetic data: :func:`generate_task` and :func:`generate_family` write task
folders (``dataset.json``, ``imagesTr/``, ``labelsTr/``), :func:`plot_family` draws one slice of
each task. The tasks and their protocols are catalogued in :mod:`mlflow_ccfv.data.synthetic_tasks`
(re-exported here), one case is rendered by :func:`mlflow_ccfv.data.phantom.synthesize_case`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mlflow_ccfv.data.cases import new_task_folder
from mlflow_ccfv.data.nifti import save_nifti
from mlflow_ccfv.data.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, synthesize_case
from mlflow_ccfv.data.synthetic_tasks import SYNTHETIC_TASKS, Protocol, SyntheticTask, get_task
from mlflow_ccfv.errors import DatasetError, OptionError
from mlflow_ccfv.options import SYNTHETIC_MAX_CASES, SYNTHETIC_SHAPE_RANGE, SYNTHETIC_SPACING_RANGE

__all__ = [
    "SYNTHETIC_TASKS",
    "Protocol",
    "SyntheticSettings",
    "SyntheticTask",
    "check_synthetic_settings",
    "generate_family",
    "generate_task",
    "get_task",
    "plot_family",
    "synthesize_case",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- writing tasks
def _affine(shape: Sequence[int], spacing: Sequence[float], orientation: str) -> tuple[np.ndarray, int]:
    """Voxel-to-RAS-mm affine centred on the volume; ``LPS`` storage flips the first two axes."""
    sx, sy, sz = (float(s) for s in spacing)
    centre = (np.asarray(shape) - 1) / 2.0
    if orientation == "RAS":
        diag = np.array([sx, sy, sz])
    elif orientation == "LPS":
        diag = np.array([-sx, -sy, sz])
    else:
        raise ValueError(f"orientation must be 'RAS' or 'LPS', got {orientation!r}.")
    affine = np.eye(4)
    affine[:3, :3] = np.diag(diag)
    affine[:3, 3] = -diag * centre
    return affine, (1 if orientation == "LPS" else 0)


def _case_rng(seed: int, task: SyntheticTask, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), task.number, int(index)]))


def check_synthetic_settings(
    n_cases: int, shape: Sequence[int], spacing: Sequence[float], orientation: str = "LPS"
) -> None:
    """Refuse (:class:`~mlflow_ccfv.errors.OptionError` naming the setting) before any folder is made:
    ``n_cases`` in [1, 10000], three ``shape`` sides in [16, 1024] voxels, three finite ``spacing``
    values in [0.01, 100] mm, ``orientation`` LPS or RAS."""
    (lo, hi), (near, far) = SYNTHETIC_SHAPE_RANGE, SYNTHETIC_SPACING_RANGE
    if isinstance(n_cases, bool) or not isinstance(n_cases, int) or not 1 <= n_cases <= SYNTHETIC_MAX_CASES:
        raise OptionError(f"n_cases must be an integer in [1, {SYNTHETIC_MAX_CASES}]; got {n_cases!r}.")
    sides = list(shape)
    if len(sides) != 3 or any(isinstance(v, bool) or not float(v).is_integer() or not lo <= v <= hi for v in sides):
        raise OptionError(
            f"shape must be three integer sides in [{lo}, {hi}] voxels (e.g. 64,64,48); got {tuple(sides)}."
        )
    sizes = list(spacing)
    if len(sizes) != 3 or any(not math.isfinite(v) or not near <= v <= far for v in sizes):
        raise OptionError(f"spacing must be three voxel sizes in [{near}, {far}] mm (e.g. 5,5,5); got {tuple(sizes)}.")
    if orientation not in ("LPS", "RAS"):
        raise OptionError(f"orientation must be LPS or RAS; got {orientation!r}.")


@dataclass(frozen=True)
class SyntheticSettings:
    """What :func:`generate_family` writes for every task (the parameters of :func:`generate_task`).

    Attributes:
        n_cases: cases per task, in [1, :data:`SYNTHETIC_MAX_CASES`].
        shape: ``(X, Y, Z)`` voxels, each side in :data:`SYNTHETIC_SHAPE_RANGE`.
        spacing: voxel size in mm, each in :data:`SYNTHETIC_SPACING_RANGE`.
        seed: case ``i`` of a task is drawn from ``SeedSequence([seed, task number, i])``.
        orientation: storage axis codes, ``"LPS"`` or ``"RAS"``.
        overwrite: replace existing task folders.
        progress: show a progress bar per task.
    """

    n_cases: int = 10
    shape: Sequence[int] = DEFAULT_SHAPE
    spacing: Sequence[float] = DEFAULT_SPACING
    seed: int = 0
    orientation: str = "LPS"
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.check()
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    def check(self) -> None:
        """:func:`check_synthetic_settings` on these settings (also when they are built)."""
        check_synthetic_settings(self.n_cases, self.shape, self.spacing, self.orientation)


def generate_task(
    task: str | SyntheticTask,
    out_dir: str | os.PathLike,
    n_cases: int = 10,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
    orientation: str = "LPS",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the MSD folder ``<out_dir>/<task name>`` with ``n_cases`` phantoms.

    Args:
        task: name, ``TaskNN`` prefix or alias (``liver``, ``lung``, ``pancreas``, ``spleen``, ``colon``).
        out_dir: parent folder (created if needed).
        n_cases: number of cases.
        shape: ``(X, Y, Z)`` voxels; spacing: voxel size in mm.
        seed: case ``i`` is drawn from ``SeedSequence([seed, task number, i])``: the same seed gives
            the same files, and adding cases leaves the first ones unchanged.
        orientation: storage axis codes, ``"LPS"`` (as DICOM-converted MSD files) or ``"RAS"``.
        overwrite: replace an existing task folder.

    Returns:
        The task folder (``dataset.json`` with modality CT, ``imagesTr/``, ``labelsTr/``).
    """
    settings = SyntheticSettings(n_cases, shape, spacing, seed, orientation, overwrite, progress)
    return _generate(get_task(task), Path(out_dir), settings)


def _generate(t: SyntheticTask, out_dir: Path, settings: SyntheticSettings) -> Path:
    """:func:`generate_task` for a resolved task: check, make the folder, write it (or remove it)."""
    settings.check()
    root = new_task_folder(out_dir / t.name, settings.overwrite, "pass overwrite=True (--overwrite) or another folder.")
    try:
        return _write_task(t, root, settings)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # no half-written task folder blocks the rerun
        raise


def _write_task(t: SyntheticTask, root: Path, settings: SyntheticSettings) -> Path:
    n_cases, shape, spacing, seed = settings.n_cases, settings.shape, settings.spacing, settings.seed
    affine, flip = _affine(shape, spacing, settings.orientation)
    training = []
    start = time.perf_counter()
    for i in tqdm(
        range(n_cases), desc=f"synthesising {t.name}", unit="case", disable=None if settings.progress else True
    ):
        image, label = synthesize_case(t, _case_rng(seed, t, i), shape, spacing)
        if flip:
            image, label = image[::-1, ::-1].copy(), label[::-1, ::-1].copy()
        case_id = f"{t.alias}_{i:03d}"
        save_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    elapsed = time.perf_counter() - start
    log.info("%s: %d cases in %.1f s (%.2f s per case)", t.name, n_cases, elapsed, elapsed / n_cases)
    meta = {
        "name": t.name,
        "description": f"synthetic CT phantoms: {t.description}; mirrors {t.mirrors}",
        "reference": "mlflow_ccfv.data.synthetic",
        "licence": "CC0 (generated)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in t.labels.items()},
        "numTraining": n_cases,
        "numTest": 0,
        "training": training,
        "test": [],
        "synthetic": {
            "seed": int(seed),
            "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in spacing],
            "region": t.region,
            "protocol": t.protocol.name,
            "orientation": settings.orientation,
        },
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def generate_family(
    out_dir: str | os.PathLike, tasks: Iterable[str] | None = None, settings: SyntheticSettings | None = None
) -> dict[str, Path]:
    """Write several tasks (all five by default) under ``out_dir`` with ``settings`` (default
    :class:`SyntheticSettings`); returns task name -> folder. Every setting and every existing folder
    is checked before the first folder is written."""
    chosen = [get_task(t) for t in (tasks if tasks is not None else SYNTHETIC_TASKS)]
    settings = settings or SyntheticSettings()
    settings.check()
    existing = [str(Path(out_dir) / t.name) for t in chosen if (Path(out_dir) / t.name).exists()]
    if existing and not settings.overwrite:
        raise DatasetError(f"{' and '.join(existing)} already exists; pass --overwrite or another --out folder.")
    return {t.name: _generate(t, Path(out_dir), settings) for t in chosen}


# --------------------------------------------------------------------------- picture
def plot_family(
    out_png: str | os.PathLike,
    tasks: Iterable[str] | None = None,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
) -> Path:
    """Render one axial slice of the first case of each task (through its smallest class) to a PNG.

    Abdominal tasks are shown in a soft-tissue window (W 400, L 40), the chest in a lung window
    (W 1500, L -600); label outlines are drawn in colour, one colour per class.
    """
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    chosen = [get_task(t) for t in (tasks if tasks is not None else SYNTHETIC_TASKS)]
    fig = Figure(figsize=(3.0 * len(chosen), 3.8))
    axes = fig.subplots(1, len(chosen), squeeze=False)
    colours = ["#ffcc00", "#ff3030", "#30a0ff"]
    for ax, t in zip(axes[0], chosen):
        image, label = synthesize_case(t, _case_rng(seed, t, 0), shape, spacing)
        classes = [k for k in t.labels if k and (label == k).any()]
        smallest = min(classes, key=lambda k: int((label == k).sum())) if classes else None
        zs = np.nonzero((label == smallest).any(axis=(0, 1)))[0] if smallest else [image.shape[2] // 2]
        zi = int(zs[len(zs) // 2])
        level, width = (-600, 1500) if t.region == "thorax" else (40, 400)
        # rows = anterior at the top, columns = patient right on the left (radiological view)
        ax.imshow(
            image[::-1, :, zi].T[::-1],
            cmap="gray",
            vmin=level - width / 2,
            vmax=level + width / 2,
            aspect=spacing[1] / spacing[0],
        )
        for k, colour in zip(classes, colours):
            ax.contour((label[::-1, :, zi] == k).T[::-1].astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
        ax.set_title(f"{t.name}\n" + ", ".join(t.labels[k] for k in classes), fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
