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
what it was trained on instead: step 3 applies its :class:`IntensityNormalization` (the target's own
statistics are not used). Steps 1, 2 and 4 are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlflow_ccfv.data.cases import CaseFiles, TaskFolder
from mlflow_ccfv.data.nifti import load_nifti
from mlflow_ccfv.errors import DatasetError

__all__ = [
    "TARGET_NORMALIZATION",
    "ChannelNormalization",
    "IntensityNormalization",
    "NormalizationScheme",
    "PreprocessConfig",
    "PreprocessedCase",
    "ct_intensity_properties",
    "describe_normalization",
    "preprocess_case",
]

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


class NormalizationScheme(StrEnum):
    """Intensity normalisations a model can record, named as its source names them."""

    #: nnU-Net: clip to the training foreground's [0.5, 99.5] percentiles, then ``(x - mean) / std``.
    CT = "CTNormalization"
    #: nnU-Net: ``(x - mean) / std`` of this image (of its non-zero region with ``use_mask_for_norm``).
    ZSCORE = "ZScoreNormalization"
    #: nnU-Net: the intensities as they are.
    NONE = "NoNormalization"
    #: nnU-Net: ``(x - min) / (max - min)`` of this image.
    RESCALE_01 = "RescaleTo01Normalization"
    #: nnU-Net: ``x / 255``.
    RGB_01 = "RGBTo01Normalization"
    #: MONAI ``ScaleIntensityRange(d)``: ``[a_min, a_max]`` mapped linearly to ``[b_min, b_max]``, optionally clipped.
    SCALE_RANGE = "ScaleIntensityRange"
    #: MONAI ``NormalizeIntensity(d)``: ``(x - mean) / std`` of this image (non-zero voxels with ``nonzero``).
    NORMALIZE = "NormalizeIntensity"


#: What :func:`describe_normalization` says for a model without recorded normalisation.
TARGET_NORMALIZATION = "target"
_STD_FLOOR = 1e-8  # nnU-Net's max(std, 1e-8)


def _number(record: Mapping[str, Any], key: str, what: str, required: bool = True) -> float | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} needs a finite number {key!r}; got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class ChannelNormalization:
    """The intensity normalisation of one input channel (``channel``: its name at the source; ``None``:
    every channel). Which fields matter depends on ``scheme``:

    - ``CT``: ``lower``, ``upper``, ``mean``, ``std`` (the training foreground's statistics, e.g. HU);
    - ``ZSCORE``: ``nonzero`` (nnU-Net's ``use_mask_for_norm``: statistics over the non-zero region,
      holes filled, of all channels; 0 outside it);
    - ``SCALE_RANGE``: ``a_min``, ``a_max``, ``b_min``, ``b_max`` (optional), ``clip``;
    - ``NORMALIZE``: ``nonzero``, ``channel_wise`` (statistics per channel, else over all channels).
    """

    scheme: NormalizationScheme
    channel: str | None = None
    lower: float | None = None
    upper: float | None = None
    mean: float | None = None
    std: float | None = None
    nonzero: bool = False
    a_min: float | None = None
    a_max: float | None = None
    b_min: float | None = None
    b_max: float | None = None
    clip: bool = False
    channel_wise: bool = False

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ChannelNormalization:
        """From an importer's record: ``{"scheme": ..., "channel": ...}`` plus the scheme's parameters
        (nnU-Net: ``mean``, ``std``, ``lower``, ``upper``, ``use_mask_for_norm``; MONAI: ``a_min``,
        ``a_max``, ``b_min``, ``b_max``, ``clip``, ``nonzero``, ``channel_wise``)."""
        if not isinstance(record, Mapping):
            raise ValueError(f"a normalisation record must be an object; got {record!r}.")
        name = record.get("scheme")
        try:
            scheme = NormalizationScheme(str(name))
        except ValueError:
            raise ValueError(
                f"intensity normalisation {name!r} is not supported; supported: "
                f"{', '.join(s.value for s in NormalizationScheme)}."
            ) from None
        channel = None if record.get("channel") is None else str(record["channel"])
        what = f"{scheme.value} of channel {channel}" if channel else scheme.value
        if scheme is NormalizationScheme.CT:
            lower, upper = _number(record, "lower", what), _number(record, "upper", what)
            mean, std = _number(record, "mean", what), _number(record, "std", what)
            if lower is None or upper is None or lower > upper:
                raise ValueError(f"{what}: lower {lower} is above upper {upper}.")
            return cls(scheme, channel, lower=lower, upper=upper, mean=mean, std=std)
        if scheme is NormalizationScheme.ZSCORE:
            return cls(scheme, channel, nonzero=bool(record.get("use_mask_for_norm", False)))
        if scheme is NormalizationScheme.SCALE_RANGE:
            b_min, b_max = _number(record, "b_min", what, False), _number(record, "b_max", what, False)
            clip = bool(record.get("clip", False))
            if clip and (b_min is None or b_max is None):
                raise ValueError(f"{what}: clip needs b_min and b_max.")
            return cls(
                scheme,
                channel,
                a_min=_number(record, "a_min", what),
                a_max=_number(record, "a_max", what),
                b_min=b_min,
                b_max=b_max,
                clip=clip,
            )
        if scheme is NormalizationScheme.NORMALIZE:
            return cls(
                scheme,
                channel,
                nonzero=bool(record.get("nonzero", False)),
                channel_wise=bool(record.get("channel_wise", False)),
            )
        return cls(scheme, channel)

    def to_record(self) -> dict[str, Any]:
        """The importer's record (the inverse of :meth:`from_record`)."""
        record: dict[str, Any] = {"scheme": self.scheme.value}
        if self.channel is not None:
            record["channel"] = self.channel
        if self.scheme is NormalizationScheme.CT:
            record.update(mean=self.mean, std=self.std, lower=self.lower, upper=self.upper)
        elif self.scheme is NormalizationScheme.ZSCORE:
            record["use_mask_for_norm"] = self.nonzero
        elif self.scheme is NormalizationScheme.SCALE_RANGE:
            record.update(a_min=self.a_min, a_max=self.a_max, b_min=self.b_min, b_max=self.b_max, clip=self.clip)
        elif self.scheme is NormalizationScheme.NORMALIZE:
            record.update(nonzero=self.nonzero, channel_wise=self.channel_wise)
        return record

    def describe(self) -> str:
        """One line: the scheme and its parameters."""
        s = NormalizationScheme
        if self.scheme is s.CT:
            text = f"clip [{self.lower:g}, {self.upper:g}], (x - {self.mean:g}) / {self.std:g}"
        elif self.scheme is s.ZSCORE:
            text = "non-zero region" if self.nonzero else "whole image"
        elif self.scheme is s.SCALE_RANGE:
            text = f"[{self.a_min:g}, {self.a_max:g}] -> [{self.b_min}, {self.b_max}]" + (", clip" if self.clip else "")
        elif self.scheme is s.NORMALIZE:
            text = ("non-zero" if self.nonzero else "all") + (", per channel" if self.channel_wise else "")
        else:
            text = ""
        return f"{self.scheme.value}({text})"

    def apply(self, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """``image`` (any shape; float64) normalised; ``mask`` (same shape, bool): the non-zero region
        for ``nonzero``, else unused."""
        s = NormalizationScheme
        if self.scheme is s.CT:
            assert self.lower is not None and self.upper is not None and self.mean is not None and self.std is not None
            return (np.clip(image, self.lower, self.upper) - self.mean) / max(self.std, _STD_FLOOR)
        if self.scheme in (s.ZSCORE, s.NORMALIZE):
            return _zscore(image, mask if self.nonzero else None, floor=self.scheme is s.ZSCORE)
        if self.scheme is s.SCALE_RANGE:
            return _scale_range(image, self)
        if self.scheme is s.RESCALE_01:
            shifted = image - image.min()
            return shifted / max(float(shifted.max()), _STD_FLOOR)
        if self.scheme is s.RGB_01:
            return image / 255.0
        return image


def _zscore(image: np.ndarray, mask: np.ndarray | None, *, floor: bool) -> np.ndarray:
    """nnU-Net's ZScoreNormalization (``floor``: std at least 1e-8) or MONAI's NormalizeIntensity (a zero
    std divides by 1); with ``mask`` only the masked voxels are normalised, the others are set to 0."""
    if mask is None:
        mean, std = image.mean(), image.std()
        return (image - mean) / (max(std, _STD_FLOOR) if floor else (std or 1.0))
    out = np.zeros_like(image) if floor else image.copy()
    if mask.any():
        values = image[mask]
        std = values.std()
        out[mask] = (values - values.mean()) / (max(std, _STD_FLOOR) if floor else (std or 1.0))
    return out


def _scale_range(image: np.ndarray, n: ChannelNormalization) -> np.ndarray:
    """MONAI's ``ScaleIntensityRange`` itself, in the image's precision."""
    from monai.transforms import ScaleIntensityRange

    assert n.a_min is not None and n.a_max is not None
    scale = ScaleIntensityRange(n.a_min, n.a_max, n.b_min, n.b_max, clip=bool(n.clip), dtype=image.dtype)
    return np.asarray(scale(image))


def _nonzero_region(image: np.ndarray) -> np.ndarray:
    """nnU-Net's mask for ``use_mask_for_norm``: voxels non-zero in any channel, holes filled; ``[X, Y, Z]``."""
    from scipy.ndimage import binary_fill_holes

    return np.asarray(binary_fill_holes(np.any(image != 0, axis=0)), dtype=bool)


@dataclass(frozen=True)
class IntensityNormalization:
    """A model's own intensity normalisation, per input channel (one entry with ``channel=None``: the
    same for every channel), as recorded when it was imported (``import.normalization``)."""

    channels: tuple[ChannelNormalization, ...]

    def __post_init__(self):
        if not self.channels:
            raise ValueError("an intensity normalisation needs at least one channel entry.")

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> IntensityNormalization:
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
            raise ValueError(f"a normalisation is a list of per-channel records; got {records!r}.")
        return cls(tuple(ChannelNormalization.from_record(r) for r in records))

    @classmethod
    def from_json(cls, text: str | None) -> IntensityNormalization | None:
        """From the JSON list an importer records; ``None`` for no text or an empty list."""
        if not text:
            return None
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from exc
        return cls.from_records(records) if records else None

    def to_records(self) -> list[dict[str, Any]]:
        return [c.to_record() for c in self.channels]

    def to_json(self) -> str:
        return json.dumps(self.to_records())

    def digest(self) -> str:
        """The first 16 hex digits of the SHA-256 of :meth:`to_json` (keys runs and caches by it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        """``CT: CTNormalization(clip [-17, 201], (x - 99.4) / 39.4)``, channels joined by ``; ``."""
        return "; ".join(f"{c.channel}: {c.describe()}" if c.channel else c.describe() for c in self.channels)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image [C, X, Y, Z]`` normalised channel by channel; float32, same shape."""
        n_channels = image.shape[0]
        entries = self.channels
        if len(entries) == 1 and entries[0].channel is None:
            entry = entries[0]
            if entry.scheme is NormalizationScheme.NORMALIZE and not entry.channel_wise:  # one set of statistics
                values = image.astype(np.float64)
                return entry.apply(values, values != 0).astype(np.float32)
            entries = entries * n_channels
        if len(entries) != n_channels:
            names = ", ".join(str(c.channel) for c in entries)
            raise DatasetError(
                f"the model normalises {len(entries)} input channel(s) ({names}) but the target images have "
                f"{n_channels}; score it on a target with the channels it was trained on."
            )
        region = _nonzero_region(image) if any(c.nonzero for c in entries) else None
        out = np.empty(image.shape, dtype=np.float32)
        for c, entry in enumerate(entries):
            channel = image[c].astype(np.float64)
            mask = None
            if entry.nonzero:
                mask = region if entry.scheme is NormalizationScheme.ZSCORE else channel != 0
            out[c] = entry.apply(channel, mask)
        return out


def describe_normalization(normalization: IntensityNormalization | None) -> str:
    """The value of the ``ccfv.normalization`` run tag: the model's own normalisation, or ``target``."""
    return TARGET_NORMALIZATION if normalization is None else normalization.describe()


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
        out[c] = (clipped - stats["mean"]) / max(stats["std"], 1e-8)
    return out


def _normalise_nonzero(image: np.ndarray) -> np.ndarray:
    out = np.zeros(image.shape, dtype=np.float32)
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        out[c][mask] = (values - values.mean()) / max(values.std(), 1e-8)
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
