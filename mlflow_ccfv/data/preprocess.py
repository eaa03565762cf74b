"""Pre-processing shared by scoring and fine-tuning, close to nnU-Net's defaults.

Per case, in this order (as nnU-Net: normalise on the original grid, then resample):

1. load with MONAI (``LoadImaged`` + ``EnsureChannelFirstd``): image ``[C, X, Y, Z]``, label ``[1, X, Y, Z]``;
2. reorient to RAS (``Orientationd``);
3. normalise intensities, per channel:

   * CT (``dataset.json`` modality ``CT``): clip to the 0.5 / 99.5 percentiles of the foreground
     (label > 0) intensities, then subtract the foreground mean and divide by its std. The
     statistics are dataset-level by default, as in nnU-Net (up to ``ct_samples_per_case``
     foreground voxels drawn from every case with a seeded generator; cached on the dataset
     object), or per case with ``ct_statistics="case"``. Unlike nnU-Net, mean and std are those of
     the *clipped* foreground, so with per-case statistics the clipped foreground has exactly zero
     mean and unit variance.
   * any other modality: z-score over the non-zero voxels (the nnU-Net nonzero mask, shared by all
     channels); voxels outside the mask are set to 0. A volume with no zero voxel is z-scored
     over all voxels.

4. resample to the target spacing (``Spacingd``; image ``bilinear``, label ``nearest``); the target
   is the dataset's median spacing (RAS axis order) unless configured.

A model imported with its own recorded pre-processing (an nnU-Net plans' ``CTNormalization`` or
``ZScoreNormalization``, a MONAI bundle's ``ScaleIntensityRanged`` or ``NormalizeIntensityd``) is fed
what it was trained on instead: step 3 applies its
:class:`~mlflow_ccfv.data.normalization.IntensityNormalization` (the target's own statistics are not
used). Steps 1, 2 and 4 are unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlflow_ccfv.data.cases import CaseFiles, TaskFolder
from mlflow_ccfv.data.nifti import load_nifti
from mlflow_ccfv.data.normalization import STD_FLOOR, IntensityNormalization
from mlflow_ccfv.errors import DatasetError

__all__ = ["PreprocessConfig", "PreprocessedCase", "ct_intensity_properties", "preprocess_case"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case is pre-processed. Defaults follow nnU-Net's (see the module docstring).

    Attributes:
        target_spacing: voxel spacing in mm, RAS axis order; ``None`` = the dataset's median spacing.
        orientation: axis codes to reorient to.
        image_interpolation: MONAI ``Spacingd`` mode for the image (the label always uses ``nearest``).
        ct_clip_percentiles: lower/upper foreground percentiles CT is clipped to.
        ct_statistics: ``"dataset"`` (nnU-Net) or ``"case"``: where the CT foreground statistics come from.
        ct_samples_per_case: foreground voxels drawn per case for dataset-level CT statistics.
        seed: seed of the generator drawing those voxels.
    """

    target_spacing: tuple[float, ...] | None = None
    orientation: str = "RAS"
    image_interpolation: str = "bilinear"
    ct_clip_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_statistics: str = "dataset"
    ct_samples_per_case: int = 10000
    seed: int = 0

    def __post_init__(self):
        if self.ct_statistics not in ("dataset", "case"):
            raise ValueError(f"ct_statistics must be 'dataset' or 'case', got {self.ct_statistics!r}.")
        lo, hi = self.ct_clip_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"ct_clip_percentiles must satisfy 0 <= low < high <= 100, got {self.ct_clip_percentiles}."
            )
        if self.target_spacing is not None:
            if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
                raise ValueError(f"target_spacing must be three positive mm values, got {self.target_spacing}.")
            object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
        object.__setattr__(self, "ct_clip_percentiles", (float(lo), float(hi)))

    def to_dict(self) -> dict:
        """Plain JSON-able values (lists for tuples), e.g. for MLflow params and cache keys."""
        d = asdict(self)
        d["target_spacing"] = None if self.target_spacing is None else list(self.target_spacing)
        d["ct_clip_percentiles"] = list(self.ct_clip_percentiles)
        return d


@dataclass
class PreprocessedCase:
    """One pre-processed case.

    Attributes:
        case_id: the case's id in its dataset.
        image: float32 tensor ``[C, X, Y, Z]`` (RAS index order).
        label: int64 tensor ``[X, Y, Z]`` on the same grid.
        spacing: voxel spacing in mm, ``(x, y, z)``.
        affine: ``[4, 4]`` float64 voxel-to-world (RAS mm) matrix of the pre-processed grid.
    """

    case_id: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, ...]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.label.shape)


def _clipped_stats(values: np.ndarray, percentiles: tuple[float, float]) -> dict[str, float]:
    lo, hi = np.percentile(values, percentiles)
    clipped = np.clip(values, lo, hi)
    return {"lower": float(lo), "upper": float(hi), "mean": float(clipped.mean()), "std": float(clipped.std())}


def ct_intensity_properties(dataset: TaskFolder, config: PreprocessConfig) -> list[dict[str, float]]:
    """Dataset-level CT foreground statistics per channel: ``lower``, ``upper``, ``mean``, ``std`` (HU).

    Up to ``config.ct_samples_per_case`` foreground voxels (label > 0) are drawn from every case
    with ``numpy.random.default_rng(config.seed)``; cached on ``dataset``.
    """
    key = ("ct", config.ct_clip_percentiles, config.ct_samples_per_case, config.seed)
    if key in dataset._intensity_cache:
        return dataset._intensity_cache[key]
    rng = np.random.default_rng(config.seed)
    samples: list[list[np.ndarray]] = [[] for _ in range(dataset.n_channels)]
    for case in dataset.cases:
        image, _ = load_nifti(case.image, "image", case.case_id)
        label, _ = load_nifti(case.label, "label", case.case_id)
        if image.ndim == 3:
            image = image[..., None]
        fg = np.flatnonzero(label.reshape(-1) > 0)
        if fg.size == 0:
            continue
        pick = (
            fg if fg.size <= config.ct_samples_per_case else rng.choice(fg, config.ct_samples_per_case, replace=False)
        )
        for c in range(image.shape[3]):
            samples[c].append(image[..., c].reshape(-1)[pick].astype(np.float64))
    if not samples[0]:
        raise DatasetError(
            f"dataset {dataset.name!r}: no case has foreground voxels, so CT normalisation has no "
            "statistics; check the label maps or use PreprocessConfig(ct_statistics='case')."
        )
    props = [_clipped_stats(np.concatenate(s), config.ct_clip_percentiles) for s in samples]
    log.info("dataset %s CT foreground statistics: %s", dataset.name, props)
    dataset._intensity_cache[key] = props
    return props


def _normalise_ct(
    image: np.ndarray, label: np.ndarray, props: list[dict[str, float]] | None, config: PreprocessConfig, case_id: str
) -> np.ndarray:
    out = np.empty(image.shape, dtype=np.float32)
    fg = label > 0
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float64)
        if props is None:
            values = channel[fg]
            if values.size == 0:
                log.warning("case %s has no foreground; CT statistics taken over the whole volume", case_id)
                values = channel.reshape(-1)
            stats = _clipped_stats(values, config.ct_clip_percentiles)
        else:
            stats = props[c]
        clipped = np.clip(channel, stats["lower"], stats["upper"])
        out[c] = (clipped - stats["mean"]) / max(stats["std"], STD_FLOOR)
    return out


def _normalise_nonzero(image: np.ndarray) -> np.ndarray:
    out = np.zeros(image.shape, dtype=np.float32)
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        out[c][mask] = (values - values.mean()) / max(values.std(), STD_FLOOR)
    return out


def preprocess_case(
    dataset: TaskFolder,
    case: CaseFiles,
    config: PreprocessConfig,
    normalization: IntensityNormalization | None = None,
) -> PreprocessedCase:
    """Load one case and apply the pre-processing of the module docstring.

    ``normalization``: a model's own intensity normalisation, applied instead of the target's (CT
    foreground statistics or non-zero z-score); ``None`` keeps the target's.
    Returns a :class:`PreprocessedCase` (image float32 ``[C, X, Y, Z]``, label int64 ``[X, Y, Z]``).
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    for what, path in (("image", case.image), ("label", case.label)):
        if not Path(path).is_file():
            raise DatasetError(
                f"case {case.case_id!r}: {what} file {path} does not exist. Restore it, or remove the case "
                "from dataset.json's 'training' list."
            )
    load = Compose(
        [
            LoadImaged(keys=["image", "label"], reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes=config.orientation, labels=None),
        ]
    )
    try:
        data = load({"image": str(case.image), "label": str(case.label)})
    except Exception as exc:
        raise DatasetError(
            f"case {case.case_id!r}: loading {case.image} / {case.label} failed ({type(exc).__name__}: {exc}). "
            "Run MSDDataset.verify() (or `mlflow-ccfv verify`) to find the faulty file."
        ) from exc
    image = data["image"].numpy()
    label = data["label"].numpy()
    if image.shape[1:] != label.shape[1:]:
        raise DatasetError(
            f"case {case.case_id!r}: image {case.image} {image.shape[1:]} and label {case.label} "
            f"{label.shape[1:]} grids differ; run MSDDataset.verify()."
        )
    if normalization is not None:
        normalised = normalization.apply(image)
    elif dataset.is_ct:
        props = ct_intensity_properties(dataset, config) if config.ct_statistics == "dataset" else None
        normalised = _normalise_ct(image, label[0], props, config, case.case_id)
    else:
        normalised = _normalise_nonzero(image)
    data["image"].set_array(torch.from_numpy(normalised))

    target = config.target_spacing or dataset.median_spacing()
    resampled: Any = Spacingd(keys=["image", "label"], pixdim=target, mode=(config.image_interpolation, "nearest"))(
        data
    )
    image_t = resampled["image"].as_tensor().to(torch.float32).contiguous()
    label_t = torch.round(resampled["label"].as_tensor()[0]).to(torch.int64).contiguous()
    affine = np.asarray(resampled["image"].affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return PreprocessedCase(case_id=case.case_id, image=image_t, label=label_t, spacing=spacing, affine=affine)
