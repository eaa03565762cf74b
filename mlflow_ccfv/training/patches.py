"""Training patches with class-balanced foreground oversampling (nnU-Net style, MONAI's crop centres).

A fraction ``foreground_fraction`` of the patches is centred on a voxel of a foreground class chosen
uniformly among those present in the case (nnU-Net forces 1/3 of each batch to foreground; with
budgets of tens to hundreds of steps a higher fraction is used), the rest on a background voxel
(MONAI's ``RandCropByLabelClasses`` sampling, via ``generate_label_classes_crop_centers``).

Cases are any objects with ``.case_id: str``, ``.image`` ``[C, X, Y, Z]`` float and ``.label``
``[X, Y, Z]`` int (tensor or ndarray), e.g. :class:`mlflow_ccfv.data.PreprocessedCase`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["PatchSampler", "checked_case"]


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to(dtype=dtype, device="cpu")


def checked_case(case: Any) -> tuple[str, torch.Tensor, torch.Tensor]:
    case_id = str(getattr(case, "case_id", "?"))
    try:
        image = _as_tensor(case.image, torch.float32)
        label = _as_tensor(case.label, torch.int64)
    except AttributeError as exc:
        raise TypeError(
            f"Case {case_id!r} has no .image/.label; pass objects like mlflow_ccfv.data.PreprocessedCase."
        ) from exc
    if image.ndim != 4:
        raise ValueError(f"Case {case_id!r}: image must be [C, X, Y, Z], got shape {tuple(image.shape)}.")
    if label.ndim == 4 and label.shape[0] == 1:
        label = label[0]
    if label.shape != image.shape[1:]:
        raise ValueError(
            f"Case {case_id!r}: label shape {tuple(label.shape)} does not match image {tuple(image.shape[1:])}."
        )
    return case_id, image, label


def _pad_to(image: torch.Tensor, label: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad symmetrically so every side is at least ``size`` (image with its minimum, label with 0)."""
    pads: list[int] = []
    for dim, s in zip(reversed(image.shape[1:]), reversed(size)):
        extra = max(0, int(s) - int(dim))
        pads += [extra // 2, extra - extra // 2]
    if not any(pads):
        return image, label
    fill = float(image.min()) if image.numel() else 0.0
    image = torch.nn.functional.pad(image, pads, mode="constant", value=fill)
    label = torch.nn.functional.pad(label, pads, mode="constant", value=0)
    return image, label


class PatchSampler:
    """Draws training patches with class-balanced foreground oversampling.

    ``cases``: see the module docstring; ``num_classes``: including background. Each patch is
    centred on a foreground voxel with probability ``foreground_fraction`` (class chosen uniformly
    among those present in the case), otherwise on a background voxel. Returns
    ``images [B, C, *patch]`` float32 and ``labels [B, 1, *patch]`` int64.
    """

    def __init__(
        self,
        cases: Sequence[Any],
        num_classes: int,
        patch_size: Sequence[int],
        foreground_fraction: float = 0.5,
        mirror: bool = False,
        seed: int = 0,
    ) -> None:
        from monai.transforms.utils import map_classes_to_indices

        if not cases:
            raise ValueError("No training cases: the training split is empty.")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.num_classes = int(num_classes)
        self.foreground_fraction = float(foreground_fraction)
        self.mirror = mirror
        self._rng = np.random.default_rng(seed)
        # MONAI's crop-centre helper draws from a legacy RandomState; seed it from our generator.
        self._rand_state = np.random.RandomState(int(self._rng.integers(2**31)))
        self.cases: list[tuple[str, torch.Tensor, torch.Tensor, list, list[float]]] = []
        channels = None
        for case in cases:
            case_id, image, label = checked_case(case)
            if channels is not None and image.shape[0] != channels:
                raise ValueError(f"Case {case_id!r} has {image.shape[0]} channels, others have {channels}.")
            channels = image.shape[0]
            if int(label.max()) >= self.num_classes or int(label.min()) < 0:
                raise ValueError(
                    f"Case {case_id!r} has label values {sorted(torch.unique(label).tolist())}, "
                    f"outside 0..{self.num_classes - 1}."
                )
            image, label = _pad_to(image, label, self.patch_size)
            indices = map_classes_to_indices(label[None], self.num_classes)
            present = [k for k in range(1, self.num_classes) if len(indices[k]) > 0]
            ratios = [0.0] * self.num_classes
            ratios[0] = (1.0 - self.foreground_fraction) if len(indices[0]) else 0.0
            for k in present:
                ratios[k] = self.foreground_fraction / len(present)
            if not present:  # no foreground in this case: background patches only
                ratios[0] = 1.0
            self.cases.append((case_id, image, label, indices, ratios))
        if channels is None:
            raise ValueError("PatchSampler needs at least one case.")
        self.in_channels = int(channels)

    def get_state(self) -> str:
        """The generators' state as JSON text (for a training checkpoint)."""
        name, keys, pos, has_gauss, gauss = self._rand_state.get_state()
        legacy = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]
        return json.dumps({"rng": self._rng.bit_generator.state, "legacy": legacy})

    def set_state(self, text: str) -> None:
        """Restore :meth:`get_state`."""
        state = json.loads(text)
        self._rng.bit_generator.state = state["rng"]
        name, keys, pos, has_gauss, gauss = state["legacy"]
        self._rand_state.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.transforms import SpatialCrop
        from monai.transforms.utils import generate_label_classes_crop_centers

        images, labels = [], []
        for _ in range(batch_size):
            _, image, label, indices, ratios = self.cases[int(self._rng.integers(len(self.cases)))]
            centre = generate_label_classes_crop_centers(
                self.patch_size, 1, label.shape, indices, ratios, self._rand_state, warn=False
            )[0]
            crop = SpatialCrop(roi_center=[int(c) for c in centre], roi_size=self.patch_size)
            img, lab = crop(image), crop(label[None])
            img = torch.as_tensor(img).as_subclass(torch.Tensor)
            lab = torch.as_tensor(lab).as_subclass(torch.Tensor)
            if self.mirror:
                axes = [1 + a for a in range(3) if self._rng.random() < 0.5]
                if axes:
                    img, lab = torch.flip(img, axes), torch.flip(lab, axes)
            images.append(img)
            labels.append(lab)
        return torch.stack(images).float(), torch.stack(labels).long()
