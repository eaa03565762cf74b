"""A model's own intensity normalisation, as recorded when it was imported, applied to a target's images.

An nnU-Net plans' ``CTNormalization``/``ZScoreNormalization``/... or a MONAI bundle's
``ScaleIntensityRanged``/``NormalizeIntensityd`` is recorded per input channel
(:class:`ChannelNormalization`, the record format of ``import.normalization``) and applied instead of
the target's own normalisation by :func:`mlflow_ccfv.data.preprocess.preprocess_case`, so the model
is fed what it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from mlflow_ccfv.errors import DatasetError

__all__ = [
    "STD_FLOOR",
    "TARGET_NORMALIZATION",
    "ChannelNormalization",
    "IntensityNormalization",
    "NormalizationScheme",
    "describe_normalization",
]


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
#: nnU-Net's floor of a standard deviation it divides by (``max(std, 1e-8)``).
STD_FLOOR = 1e-8


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
            return (np.clip(image, self.lower, self.upper) - self.mean) / max(self.std, STD_FLOOR)
        if self.scheme in (s.ZSCORE, s.NORMALIZE):
            return _zscore(image, mask if self.nonzero else None, floor=self.scheme is s.ZSCORE)
        if self.scheme is s.SCALE_RANGE:
            return _scale_range(image, self)
        if self.scheme is s.RESCALE_01:
            shifted = image - image.min()
            return shifted / max(float(shifted.max()), STD_FLOOR)
        if self.scheme is s.RGB_01:
            return image / 255.0
        return image


def _zscore(image: np.ndarray, mask: np.ndarray | None, *, floor: bool) -> np.ndarray:
    """nnU-Net's ZScoreNormalization (``floor``: std at least 1e-8) or MONAI's NormalizeIntensity (a zero
    std divides by 1); with ``mask`` only the masked voxels are normalised, the others are set to 0."""
    if mask is None:
        mean, std = image.mean(), image.std()
        return (image - mean) / (max(std, STD_FLOOR) if floor else (std or 1.0))
    out = np.zeros_like(image) if floor else image.copy()
    if mask.any():
        values = image[mask]
        std = values.std()
        out[mask] = (values - values.mean()) / (max(std, STD_FLOOR) if floor else (std or 1.0))
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
