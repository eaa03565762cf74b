"""Integrity check of an MSD task before any work (in the spirit of nnU-Net's dataset verification).

For every case listed in ``dataset.json``: both files exist and load completely; the image is 3D
(one channel) or 4D ``[X, Y, Z, C]`` with one channel per declared modality; the label is 3D on the
same grid (same shape, affines equal within ``affine_tol``); label values are integers declared in
``labels``; neither file holds NaN or inf; the label map holds foreground (a value other than 0).
Every failure is collected, then reported at once in a :class:`DatasetError` whose lines each name
the case, the file, the problem and the fix.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mlflow_ccfv.data.cases import CaseFiles, TaskFolder
from mlflow_ccfv.data.nifti import affine_ras_spacing, load_nifti
from mlflow_ccfv.errors import DatasetError

__all__ = ["CaseReport", "VerifyReport", "verify_case", "verify_dataset"]

log = logging.getLogger(__name__)


@dataclass
class CaseReport:
    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    label_counts: dict[int, int]
    intensity_range: tuple[float, float]


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found in a valid dataset."""

    name: str
    root: Path
    modalities: dict[int, str]
    labels: dict[int, str]
    cases: list[CaseReport] = field(default_factory=list)

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def label_voxels(self) -> dict[int, int]:
        """Total voxels per label value over all cases."""
        total: Counter[int] = Counter()
        for c in self.cases:
            total.update(c.label_counts)
        return {k: int(total.get(k, 0)) for k in self.labels}

    def summary(self) -> str:
        """A human-readable multi-line summary (for the ``verify`` command)."""
        voxels = self.label_voxels()
        n_all = max(sum(voxels.values()), 1)
        shapes = np.array([c.shape for c in self.cases])
        spacings = np.array([c.spacing for c in self.cases])
        lines = [
            f"dataset {self.name!r} at {self.root}: OK",
            f"  cases: {self.n_cases}; modalities: " + ", ".join(f"{k}={v}" for k, v in self.modalities.items()),
            f"  shape min {tuple(int(v) for v in shapes.min(0))}, max {tuple(int(v) for v in shapes.max(0))}",
            f"  spacing (mm) median {tuple(round(float(v), 3) for v in np.median(spacings, 0))}",
            "  labels (share of voxels): "
            + ", ".join(f"{k} {self.labels[k]} {100.0 * voxels[k] / n_all:.3f}%" for k in self.labels),
        ]
        missing = [self.labels[k] for k in self.labels if k != 0 and voxels[k] == 0]
        if missing:
            lines.append(f"  warning: declared classes absent from every case: {', '.join(missing)}")
        return "\n".join(lines)


def _non_finite(array: np.ndarray) -> np.ndarray | None:
    """The NaN/inf mask of a floating-point ``array`` (same shape, bool); None when it has none or is integer."""
    if not np.issubdtype(array.dtype, np.floating):
        return None
    bad = ~np.isfinite(array)
    return bad if bad.any() else None


def verify_case(case: CaseFiles, n_channels: int, labels: dict[int, str], affine_tol: float = 1e-3) -> CaseReport:
    """Check one case (see the module docstring); raises :class:`DatasetError` on the first problem."""
    cid = case.case_id
    image, img_aff = load_nifti(case.image, "image", cid)
    label, lab_aff = load_nifti(case.label, "label", cid)

    if image.ndim == 4 and image.shape[3] == 1 and n_channels == 1:
        image = image[..., 0]
    if image.ndim == 3:
        if n_channels != 1:
            raise DatasetError(
                f"case {cid!r}: image file {case.image} is 3D but dataset.json declares {n_channels} "
                "modalities; store the channels as a 4D [X, Y, Z, C] image or fix 'modality'."
            )
    elif image.ndim == 4:
        if image.shape[3] != n_channels:
            raise DatasetError(
                f"case {cid!r}: image file {case.image} has {image.shape[3]} channels (shape {image.shape}) "
                f"but dataset.json declares {n_channels} modalities; fix the image or 'modality'."
            )
    else:
        raise DatasetError(
            f"case {cid!r}: image file {case.image} has shape {image.shape}; expected 3D [X, Y, Z] or 4D [X, Y, Z, C]."
        )
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.ndim != 3:
        raise DatasetError(f"case {cid!r}: label file {case.label} has shape {label.shape}; expected a 3D label map.")
    if tuple(image.shape[:3]) != tuple(label.shape):
        raise DatasetError(
            f"case {cid!r}: label file {case.label} has shape {tuple(label.shape)} but image file "
            f"{case.image} has spatial shape {tuple(image.shape[:3])}; resample the label onto the image grid."
        )
    scale = max(1.0, float(np.abs(img_aff[:3, :]).max()))
    diff = float(np.abs(img_aff - lab_aff).max())
    if not diff <= affine_tol * scale:
        raise DatasetError(
            f"case {cid!r}: label file {case.label} has a different affine from image file {case.image} "
            f"(max difference {diff:.4g} > tolerance {affine_tol * scale:.3g}):\nimage\n{img_aff}\nlabel\n"
            f"{lab_aff}\nThe two must share the voxel grid; re-export the label with the image's header."
        )
    bad = _non_finite(image)
    if bad is not None:
        raise DatasetError(
            f"case {cid!r}: image file {case.image} holds {int(bad.sum())} NaN/inf voxels "
            f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])}); fix or replace the image."
        )
    bad = _non_finite(label)
    if bad is not None:
        raise DatasetError(
            f"case {cid!r}: label file {case.label} holds {int(bad.sum())} NaN/inf voxels; fix the label."
        )
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        raise DatasetError(
            f"case {cid!r}: label file {case.label} holds non-integer values; labels must be integer "
            "class ids (resample labels with nearest-neighbour interpolation)."
        )
    values, counts = np.unique(label, return_counts=True)
    values = values.astype(np.int64)
    undeclared = sorted(set(values.tolist()) - set(labels))
    if undeclared:
        raise DatasetError(
            f"case {cid!r}: label file {case.label} contains values {undeclared} not declared in "
            f"dataset.json 'labels' ({sorted(labels)}); declare them or remap the label map."
        )
    if not (values != 0).any():
        raise DatasetError(
            f"case {cid!r}: label file {case.label} is all background (0), with no foreground voxel; CC-FV "
            "samples every case's foreground, so scoring would fail. Restore its segmentation or remove the case "
            "from dataset.json."
        )
    return CaseReport(
        case_id=cid,
        shape=tuple(int(s) for s in label.shape),
        spacing=affine_ras_spacing(img_aff),
        label_counts={int(v): int(n) for v, n in zip(values, counts)},
        intensity_range=(float(np.min(image)), float(np.max(image))),
    )


#: At most this many failing cases are listed in one error (the count says how many failed in all).
MAX_LISTED_PROBLEMS = 20
#: The check stops after this many failing cases (a broken million-case list fails in seconds, not minutes).
MAX_FAILING_CASES = 1000


def verify_dataset(dataset: TaskFolder, affine_tol: float = 1e-3, progress: bool = True) -> VerifyReport:
    """Check every case of ``dataset``; raise one :class:`DatasetError` listing every failure.

    Args:
        dataset: the loaded task.
        affine_tol: allowed absolute difference between image and label affine entries, scaled by
            the largest affine entry when that exceeds 1 (so about 1e-3 mm per mm of offset).
        progress: show a tqdm bar.
    """
    report = VerifyReport(name=dataset.name, root=dataset.root, modalities=dataset.modalities, labels=dataset.labels)
    problems: list[str] = []
    for case in tqdm(dataset.cases, desc=f"verifying {dataset.name}", unit="case", disable=None if progress else True):
        try:
            report.cases.append(verify_case(case, dataset.n_channels, dataset.labels, affine_tol))
        except DatasetError as exc:
            problems.append(str(exc))
            if len(problems) >= MAX_FAILING_CASES:
                break
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        count = (
            f"stopped after {len(problems)} failing cases of {len(dataset.cases)}"
            if len(problems) >= MAX_FAILING_CASES and len(problems) < len(dataset.cases)
            else f"{len(problems)} of {len(dataset.cases)} cases"
        )
        raise DatasetError(
            f"dataset {dataset.name!r} at {dataset.root} failed its integrity check ({count}):\n- "
            + "\n- ".join(p if len(p) <= 1000 else p[:1000] + " ..." for p in shown)
            + (f"\n- ... and {more} more case(s) (fix the ones above first)" if more else "")
        )
    log.info("dataset %s verified: %d cases", dataset.name, report.n_cases)
    return report
