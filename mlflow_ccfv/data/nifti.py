"""NIfTI files: complete reads with clear errors, writes with qform = sform, spacing in RAS order, checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import io_orientation

from mlflow_ccfv.errors import DatasetError

__all__ = ["affine_ras_spacing", "load_nifti", "ras_spacing", "save_nifti", "sha256_file", "strip_nifti_suffix"]


def load_nifti(path: Path, what: str, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file completely: ``(data, affine [4, 4])``; a clear DatasetError otherwise."""
    if not Path(path).is_file():
        raise DatasetError(
            f"case {case_id!r}: {what} file {path} does not exist. Restore it, or remove the case from "
            "dataset.json's 'training' list."
        )
    try:
        img: Any = nib.load(str(path))  # a Nifti1Image; nibabel's stub says FileBasedImage
        data = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel, gzip, zlib and OS errors all mean "unreadable"
        raise DatasetError(
            f"case {case_id!r}: {what} file {path} cannot be read as NIfTI ({type(exc).__name__}: {exc}). "
            "The file is corrupt or truncated; re-download or re-export it."
        ) from exc
    return data, affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` as NIfTI with ``affine`` as both qform and sform (code 1, scanner)."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def affine_ras_spacing(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel spacing in mm of a voxel-to-world ``affine``, permuted to RAS axis order."""
    zooms = voxel_sizes(affine)
    spacing = [0.0, 0.0, 0.0]
    for axis, ras_axis in enumerate(io_orientation(affine)[:, 0]):
        spacing[int(ras_axis)] = float(zooms[axis])
    return spacing[0], spacing[1], spacing[2]


def ras_spacing(path: str | Path) -> tuple[float, ...]:
    """Voxel spacing in mm of a NIfTI file, permuted to RAS axis order (header only)."""
    img: Any = nib.load(str(path))
    return affine_ras_spacing(img.affine)


def strip_nifti_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
