"""A family of synthetic CT segmentation tasks in MSD layout (CT-like phantoms, no download needed).

Every case is a phantom rendered on a grid in *normalised physical units*: one unit is half the
field of view along x, so the body fills the width whatever the shape and spacing, and organs keep
their physical proportions along z. Rendering, per case (all draws from one seeded
``numpy.random.Generator``):

1. a smooth random deformation of the coordinates (coarse Gaussian noise, cubic upsampling);
2. the anatomy of the task's body region as implicit shapes in the deformed coordinates:
   abdomen (body outline, subcutaneous fat, muscle wall, spine, aorta, IVC, liver, spleen,
   kidneys, stomach, pancreas, colon, bowel loops) or thorax (ribs, lungs with vessels, heart,
   spine, aorta, liver dome); each organ's surface is perturbed by its own smooth field;
3. lesions placed inside their host organ (or on the colon wall) with a distance transform;
4. HU intensities from the task's acquisition *protocol* (contrast phase), a smooth organ texture,
   the scanner kernel (Gaussian blur) and white noise; stored as int16 HU.

The five tasks mirror the character of the paper's five MSD tasks and are deliberately related and
unrelated (see ``SYNTHETIC_TASKS`` and docs/data.md): liver and spleen share the region, the
protocol and the scanner (only the labelled organ differs); pancreas and colon share the abdominal
anatomy but not the contrast phase or the noise; lung differs in region, protocol, kernel and
target size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from mlflow_ccfv.data.nifti import save_nifti
from mlflow_ccfv.errors import DatasetError, OptionError

__all__ = [
    "SYNTHETIC_TASKS",
    "Protocol",
    "SyntheticTask",
    "check_synthetic_settings",
    "generate_family",
    "generate_task",
    "get_task",
    "plot_family",
    "synthesize_case",
]

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (64, 64, 48)
DEFAULT_SPACING = (5.0, 5.0, 5.0)


# --------------------------------------------------------------------------- task definitions
@dataclass(frozen=True)
class Protocol:
    """An acquisition: contrast phase (tissue HU), reconstruction kernel and dose.

    Attributes:
        name: e.g. ``"portal-venous, smooth kernel"``.
        hu: tissue name -> mean HU.
        noise_sd: white-noise standard deviation in HU (dose).
        kernel_sigma: Gaussian blur in voxels before the noise (reconstruction kernel sharpness).
        texture_sd: amplitude in HU of the smooth parenchymal texture.
        texture_sigma: correlation length of that texture in voxels.
    """

    name: str
    hu: dict[str, float]
    noise_sd: float
    kernel_sigma: float
    texture_sd: float
    texture_sigma: float


_COMMON_HU = {
    "air": -1000.0,
    "fat": -100.0,
    "visceral_fat": -90.0,
    "muscle": 55.0,
    "bone_cortex": 700.0,
    "bone_marrow": 220.0,
    "csf": 15.0,
    "stomach": 15.0,
    "stomach_air": -900.0,
    "colon_wall": 60.0,
    "colon_lumen": -350.0,
    "bowel": 40.0,
    "lung": -860.0,
    "lung_vessel": 30.0,
    "heart": 45.0,
}

PORTAL_VENOUS = Protocol(
    name="portal-venous phase, smooth kernel, standard dose",
    hu={
        **_COMMON_HU,
        "liver": 105.0,
        "spleen": 112.0,
        "kidney": 170.0,
        "pancreas": 95.0,
        "aorta": 160.0,
        "ivc": 150.0,
        "bowel": 70.0,
        "heart": 150.0,
    },
    noise_sd=12.0,
    kernel_sigma=0.8,
    texture_sd=8.0,
    texture_sigma=1.5,
)
ARTERIAL = Protocol(
    name="late-arterial (pancreatic) phase, medium kernel, low dose",
    hu={
        **_COMMON_HU,
        "liver": 70.0,
        "spleen": 135.0,
        "kidney": 230.0,
        "pancreas": 130.0,
        "aorta": 320.0,
        "ivc": 75.0,
        "bowel": 90.0,
        "heart": 250.0,
    },
    noise_sd=25.0,
    kernel_sigma=0.5,
    texture_sd=14.0,
    texture_sigma=1.0,
)
COLONOGRAPHY = Protocol(
    name="portal-venous phase, air-distended colon, medium kernel",
    hu={
        **_COMMON_HU,
        "liver": 100.0,
        "spleen": 108.0,
        "kidney": 165.0,
        "pancreas": 90.0,
        "aorta": 150.0,
        "ivc": 140.0,
        "colon_lumen": -950.0,
        "colon_wall": 75.0,
        "heart": 140.0,
    },
    noise_sd=20.0,
    kernel_sigma=0.6,
    texture_sd=10.0,
    texture_sigma=1.2,
)
CHEST_NONCONTRAST = Protocol(
    name="non-contrast chest, sharp (lung) kernel, low dose",
    hu={**_COMMON_HU, "liver": 58.0, "spleen": 48.0, "kidney": 35.0, "pancreas": 40.0, "aorta": 42.0, "ivc": 40.0},
    noise_sd=35.0,
    kernel_sigma=0.3,
    texture_sd=15.0,
    texture_sigma=0.8,
)


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic task: what is rendered and what is labelled.

    Attributes:
        name: MSD-style folder name (``Task03_SynthLiver`` ...); ``Task03`` resolves to it.
        alias: short name (``liver`` ...), accepted by :func:`generate_task`.
        number: the MSD task number it mirrors (also part of every case's seed).
        region: ``"abdomen"`` or ``"thorax"``.
        protocol: the acquisition.
        labels: label value -> class name (background 0 included).
        description: one line for ``dataset.json``.
    """

    name: str
    alias: str
    number: int
    region: str
    protocol: Protocol
    labels: dict[int, str]
    description: str
    mirrors: str = ""
    related: tuple[str, ...] = field(default_factory=tuple)


_TASK_LIST = (
    SyntheticTask(
        "Task03_SynthLiver",
        "liver",
        3,
        "abdomen",
        PORTAL_VENOUS,
        {0: "background", 1: "liver", 2: "cancer"},
        "large organ with 1-4 hypodense tumours (radius 11-22 mm), portal-venous abdomen",
        mirrors="MSD Task03 Liver",
        related=("spleen",),
    ),
    SyntheticTask(
        "Task06_SynthLung",
        "lung",
        6,
        "thorax",
        CHEST_NONCONTRAST,
        {0: "background", 1: "cancer"},
        "one or two small solid nodules (radius 11-19 mm) in low-intensity lung, non-contrast chest",
        mirrors="MSD Task06 Lung",
        related=(),
    ),
    SyntheticTask(
        "Task07_SynthPancreas",
        "pancreas",
        7,
        "abdomen",
        ARTERIAL,
        {0: "background", 1: "pancreas", 2: "cancer"},
        "small elongated organ with a hypodense tumour, arterial-phase abdomen",
        mirrors="MSD Task07 Pancreas",
        related=("colon",),
    ),
    SyntheticTask(
        "Task09_SynthSpleen",
        "spleen",
        9,
        "abdomen",
        PORTAL_VENOUS,
        {0: "background", 1: "spleen"},
        "medium compact organ, portal-venous abdomen (same scanner as the liver task)",
        mirrors="MSD Task09 Spleen",
        related=("liver",),
    ),
    SyntheticTask(
        "Task10_SynthColon",
        "colon",
        10,
        "abdomen",
        COLONOGRAPHY,
        {0: "background", 1: "colon cancer primaries"},
        "a large enhancing lesion on the wall of an air-distended colon, portal-venous abdomen",
        mirrors="MSD Task10 Colon",
        related=("pancreas",),
    ),
)

#: Task folder name -> :class:`SyntheticTask`; iterate it for the five names.
SYNTHETIC_TASKS: dict[str, SyntheticTask] = {t.name: t for t in _TASK_LIST}


def get_task(task: str | SyntheticTask) -> SyntheticTask:
    """A task by folder name (``Task03_SynthLiver``), number prefix (``Task03``) or alias (``liver``)."""
    if isinstance(task, SyntheticTask):
        return task
    key = str(task).strip()
    for t in _TASK_LIST:
        if key in (t.name, t.alias, f"Task{t.number:02d}") or key.lower() == t.alias:
            return t
    raise DatasetError(
        f"Unknown synthetic task {task!r}. Choose one of: "
        + ", ".join(f"{t.name} ({t.alias})" for t in _TASK_LIST)
        + "."
    )


# --------------------------------------------------------------------------- geometry helpers
class _Grid:
    """Voxel-centre coordinates in normalised units (1 = half the x field of view), RAS axes."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        half_width_mm = self.shape[0] * self.spacing[0] / 2.0
        self.voxel_units = self.spacing / half_width_mm  # size of one voxel in units, per axis
        self.axes = [
            ((np.arange(n) - (n - 1) / 2.0) * self.voxel_units[i]).astype(np.float32) for i, n in enumerate(self.shape)
        ]
        self.x, self.y, self.z = np.meshgrid(*self.axes, indexing="ij")
        self.z_half = float(self.axes[2][-1])

    def smooth_field(self, rng: np.random.Generator, coarse: Sequence[int] = (5, 5, 4)) -> np.ndarray:
        """A smooth random field with unit standard deviation: coarse Gaussian noise on ``coarse`` knots,
        interpolated with separable Gaussian weights (a cheap, smooth upsampling)."""
        noise = rng.standard_normal(tuple(coarse)).astype(np.float32)
        weights = []
        for n, c in zip(self.shape, coarse):
            knots = np.linspace(0.0, 1.0, c)
            pos = np.linspace(0.0, 1.0, n)
            w = np.exp(-0.5 * ((pos[:, None] - knots[None, :]) * (c - 1) / 0.8) ** 2)
            weights.append((w / w.sum(axis=1, keepdims=True)).astype(np.float32))
        out = np.einsum("ia,jb,kc,abc->ijk", *weights, noise, optimize=True)
        return out / max(float(out.std()), 1e-6)

    def texture(self, rng: np.random.Generator, sigma_vox: float) -> np.ndarray:
        """Gaussian-filtered white noise with unit standard deviation (correlation ``sigma_vox`` voxels)."""
        t = ndimage.gaussian_filter(rng.standard_normal(self.shape).astype(np.float32), sigma_vox)
        return t / max(float(t.std()), 1e-6)


def _ellipsoid(q, centre, radii, perturb=None, amount=0.0) -> np.ndarray:
    """Boolean mask of an ellipsoid in coordinates ``q = (x, y, z)`` with a smooth surface perturbation."""
    f = sum(((q[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    limit = 1.0 if perturb is None else 1.0 + amount * perturb
    return f <= limit


def _bezier(points: np.ndarray, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    pts = np.broadcast_to(points[None], (n,) + points.shape).copy()
    while pts.shape[1] > 1:
        pts = (1 - t) * pts[:, :-1] + t * pts[:, 1:]
    return pts[:, 0]


def _tube_distance(q, path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every voxel to a polyline ``path [n, 3]`` and the arclength fraction of its nearest point."""
    best = np.full(q[0].shape, np.inf, dtype=np.float32)
    frac = np.zeros(q[0].shape, dtype=np.float32)
    seg_len = np.linalg.norm(np.diff(path, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)]) / max(seg_len.sum(), 1e-9)
    for k in range(len(path) - 1):
        a, b = path[k], path[k + 1]
        ab = b - a
        denom = float(ab @ ab) or 1e-9
        t = ((q[0] - a[0]) * ab[0] + (q[1] - a[1]) * ab[1] + (q[2] - a[2]) * ab[2]) / denom
        np.clip(t, 0.0, 1.0, out=t)
        d = np.sqrt((q[0] - a[0] - t * ab[0]) ** 2 + (q[1] - a[1] - t * ab[1]) ** 2 + (q[2] - a[2] - t * ab[2]) ** 2)
        closer = d < best
        best = np.where(closer, d, best)
        frac = np.where(closer, cum[k] + t * (cum[k + 1] - cum[k]), frac)
    return best, frac


def _place_lesion(
    grid: _Grid, rng, q, host: np.ndarray, radius: float, perturb: np.ndarray, margin: float = 0.6
) -> np.ndarray | None:
    """A lobulated ball of ``radius`` units centred at a host voxel at least ``margin*radius`` deep."""
    depth = ndimage.distance_transform_edt(host, sampling=grid.voxel_units)
    candidates = np.flatnonzero((host & (depth >= margin * radius)).reshape(-1))
    if candidates.size == 0:
        candidates = np.flatnonzero(host.reshape(-1))
        if candidates.size == 0:
            return None
    centre_idx = np.unravel_index(int(rng.choice(candidates)), grid.shape)
    centre = [grid.axes[i][centre_idx[i]] for i in range(3)]
    r = np.sqrt(sum((q[i] - centre[i]) ** 2 for i in range(3)))
    lesion = r <= radius * (1.0 + 0.2 * np.clip(perturb, -1.5, 1.5))
    lesion[centre_idx] = True
    return lesion


# --------------------------------------------------------------------------- anatomy
def _abdomen(grid: _Grid, rng: np.random.Generator, q, fields, air_colon: bool) -> dict[str, np.ndarray]:
    x, y, z = q
    zh = grid.z_half
    s = rng.uniform(0.92, 1.0)
    ax = 0.9 * s * (1 + 0.03 * fields[0])
    ay = 0.68 * s * rng.uniform(0.92, 1.05) * (1 + 0.03 * fields[1])
    r = np.sqrt((x / ax) ** 2 + ((y + 0.05) / ay) ** 2)
    m = {}
    m["body"] = r <= 1.0
    m["fat"] = m["body"] & (r > 0.86 - 0.04 * rng.random())
    m["muscle"] = (r > 0.79) & (r <= 0.86) & m["body"]
    inner = r <= 0.79
    j = lambda sd=0.03: rng.normal(0.0, sd)  # noqa: E731 - per-organ position jitter
    # spine and vessels run along z
    vb = np.sqrt((x - j(0.01)) ** 2 + (y + 0.5 * ay / 0.68 - 0.05) ** 2)
    m["bone_marrow"] = vb <= 0.1
    m["bone_cortex"] = (vb > 0.1) & (vb <= 0.125)
    m["csf"] = np.sqrt(x**2 + (y + 0.5 * ay / 0.68 + 0.12) ** 2) <= 0.04
    m["paraspinal"] = (np.sqrt((np.abs(x) - 0.15) ** 2 + (y + 0.5 * ay / 0.68 + 0.15) ** 2) <= 0.09) & m["body"]
    m["aorta"] = np.sqrt((x + 0.06 + j(0.01)) ** 2 + (y + 0.28) ** 2) <= 0.05 + j(0.005)
    m["ivc"] = np.sqrt((x - 0.12 + j(0.01)) ** 2 + (y + 0.26) ** 2) <= 0.05 + j(0.005)
    # solid organs; z positions relative to the top of the field of view (the diaphragm)
    top = zh
    liver = _ellipsoid(q, (0.36 + j(), 0.0 + j(), top - 0.38 + j()), (0.42 * s, 0.46 * s, 0.42), fields[2], 0.25)
    liver |= _ellipsoid(q, (0.0 + j(), 0.22 + j(), top - 0.25 + j()), (0.3, 0.2, 0.22), fields[2], 0.25)
    m["liver"] = liver & inner
    m["spleen"] = (
        _ellipsoid(
            q,
            (-0.56 + j(), -0.2 + j(), top - 0.35 + j()),
            (0.15, 0.27, 0.27) * rng.uniform(0.85, 1.15, 3),
            fields[3],
            0.3,
        )
        & inner
        & ~m["liver"]
    )
    for side, name in ((1, "kidney_right"), (-1, "kidney_left")):
        m[name] = _ellipsoid(q, (side * 0.36 + j(), -0.36 + j(), top - 0.72 + j()), (0.13, 0.15, 0.3), fields[4], 0.2)
    m["stomach"] = _ellipsoid(q, (-0.28 + j(), 0.25 + j(), top - 0.3 + j()), (0.2, 0.15, 0.2), fields[3], 0.3) & inner
    m["stomach"] &= ~m["liver"] & ~m["spleen"]
    m["stomach_air"] = m["stomach"] & (y > 0.25 + 0.07)
    # pancreas: a Bezier tube from the head (right, near the duodenum) to the tail (splenic hilum)
    ctrl = np.array(
        [[0.14, -0.06, top - 0.66], [0.0, 0.02, top - 0.56], [-0.25, -0.12, top - 0.5], [-0.45, -0.2, top - 0.42]]
    ) + rng.normal(0.0, 0.025, (4, 3))
    dist, frac = _tube_distance(q, _bezier(ctrl, 20))
    radius = (0.1 - 0.05 * frac) * (1 + 0.15 * fields[4])
    m["pancreas"] = (dist <= radius) & inner & ~m["liver"] & ~m["spleen"] & ~m["stomach"]
    # colon: ascending (right) -> transverse (anterior) -> descending (left)
    lo = -zh + 0.08
    ctrl = np.array(
        [
            [0.56, -0.05, lo],
            [0.58, 0.0, top - 0.8],
            [0.45, 0.3, top - 0.72],
            [0.0, 0.42, top - 0.78],
            [-0.45, 0.3, top - 0.62],
            [-0.6, 0.0, top - 0.7],
            [-0.58, -0.05, lo],
            [-0.3, 0.2, lo - 0.05],
        ]
    )
    ctrl = ctrl + rng.normal(0.0, 0.03, ctrl.shape)
    path = np.concatenate([_bezier(ctrl[i : i + 3], 10)[:-1] for i in range(0, len(ctrl) - 2, 2)] + [ctrl[-1:]])
    cdist, _ = _tube_distance(q, path)
    r_out = (0.115 if air_colon else 0.095) * (1 + 0.15 * fields[5])
    wall = 0.04
    colon = (cdist <= r_out) & inner
    m["colon_centreline_distance"] = cdist
    m["colon_outer_radius"] = r_out
    m["colon_wall"] = colon & (cdist > r_out - wall)
    m["colon_lumen"] = colon & ~m["colon_wall"]
    # bowel loops: blobs of a thresholded smooth field in the remaining anterior abdomen
    loops = grid.texture(rng, 2.0) > 0.6
    taken = np.zeros(grid.shape, bool)
    for k in (
        "liver",
        "spleen",
        "kidney_right",
        "kidney_left",
        "stomach",
        "pancreas",
        "aorta",
        "ivc",
        "bone_marrow",
        "bone_cortex",
        "paraspinal",
    ):
        taken |= m[k]
    taken |= colon
    m["bowel"] = loops & inner & ~taken & (y > -0.25) & (z < top - 0.45)
    m["inner"] = inner
    return m


def _thorax(grid: _Grid, rng: np.random.Generator, q, fields) -> dict[str, np.ndarray]:
    x, y, z = q
    zh = grid.z_half
    s = rng.uniform(0.92, 1.0)
    ax = 0.92 * s * (1 + 0.03 * fields[0])
    ay = 0.62 * s * rng.uniform(0.92, 1.05) * (1 + 0.03 * fields[1])
    r = np.sqrt((x / ax) ** 2 + ((y + 0.05) / ay) ** 2)
    m = {}
    m["body"] = r <= 1.0
    m["fat"] = m["body"] & (r > 0.9)
    m["muscle"] = (r > 0.8) & (r <= 0.9)
    inner = r <= 0.8
    j = lambda sd=0.03: rng.normal(0.0, sd)  # noqa: E731
    # ribs: bony arcs in the chest wall, periodic along z
    period = rng.uniform(0.17, 0.21)
    phase = rng.uniform(0, 2 * np.pi)
    rib_band = (r > 0.8) & (r <= 0.87) & (y > -0.55)
    m["bone_cortex"] = rib_band & (np.sin(2 * np.pi * (z + 0.15 * y) / period + phase) > 0.55)
    vb = np.sqrt(x**2 + (y + 0.47 * ay / 0.62 - 0.03) ** 2)
    m["bone_marrow"] = vb <= 0.1
    m["bone_cortex"] |= (vb > 0.1) & (vb <= 0.125)
    m["paraspinal"] = (np.sqrt((np.abs(x) - 0.15) ** 2 + (y + 0.47 * ay / 0.62 + 0.1) ** 2) <= 0.09) & m["body"]
    m["aorta"] = np.sqrt((x + 0.08 + j(0.01)) ** 2 + (y + 0.26) ** 2) <= 0.055
    m["heart"] = _ellipsoid(q, (-0.08 + j(), 0.15 + j(), -0.15 + j()), (0.3, 0.26, 0.34), fields[2], 0.2) & inner
    lungs = np.zeros(grid.shape, bool)
    for side in (1, -1):
        lungs |= _ellipsoid(
            q, (side * 0.42 + j(), 0.0 + j(), 0.1 + j()), (0.34, 0.52, 0.95), fields[3 if side > 0 else 4], 0.2
        )
    mediastinum = np.abs(x + 0.03) < 0.1
    m["lung"] = lungs & inner & ~m["heart"] & ~mediastinum & ~m["aorta"] & ~m["paraspinal"] & ~m["bone_marrow"]
    # liver dome in the lowest slices (shares the abdominal anatomy)
    m["liver"] = _ellipsoid(q, (0.3, 0.0, -zh - 0.25 + j()), (0.45, 0.45, 0.42), fields[2], 0.2) & inner & ~m["heart"]
    m["lung"] &= ~m["liver"]
    vessels = grid.texture(rng, 0.9)
    depth = ndimage.distance_transform_edt(m["lung"], sampling=grid.voxel_units)
    m["lung_vessel"] = m["lung"] & (vessels > 2.1 - 4.0 * np.minimum(depth, 0.15))
    m["lung_parenchyma"] = m["lung"] & ~m["lung_vessel"]
    m["inner"] = inner
    return m


# Draw order: later tissues overwrite earlier ones.
_ABDOMEN_ORDER = (
    "visceral_fat",
    "fat",
    "muscle",
    "paraspinal",
    "bowel",
    "colon_wall",
    "colon_lumen",
    "kidney_right",
    "kidney_left",
    "pancreas",
    "stomach",
    "stomach_air",
    "spleen",
    "liver",
    "aorta",
    "ivc",
    "bone_marrow",
    "bone_cortex",
    "csf",
)
_THORAX_ORDER = (
    "visceral_fat",
    "fat",
    "muscle",
    "paraspinal",
    "liver",
    "heart",
    "aorta",
    "lung_parenchyma",
    "lung_vessel",
    "bone_marrow",
    "bone_cortex",
)
_TISSUE_HU_KEY = {"kidney_right": "kidney", "kidney_left": "kidney", "paraspinal": "muscle", "lung_parenchyma": "lung"}
_TEXTURED = {
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "pancreas",
    "muscle",
    "paraspinal",
    "bowel",
    "heart",
    "lesion",
    "lung_parenchyma",
}


def synthesize_case(
    task: str | SyntheticTask,
    rng: np.random.Generator,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom of ``task``.

    Args:
        task: a task name or alias (see :data:`SYNTHETIC_TASKS`).
        rng: the case's generator (all randomness comes from it).
        shape: ``(X, Y, Z)`` voxels, RAS index order.
        spacing: voxel size in mm.

    Returns:
        ``image`` int16 HU ``[X, Y, Z]`` and ``label`` uint8 ``[X, Y, Z]`` with the task's label values.
    """
    t = get_task(task)
    if len(shape) != 3 or min(shape) < SHAPE_RANGE[0]:
        raise ValueError(f"shape must be three sizes of at least {SHAPE_RANGE[0]} voxels, got {tuple(shape)}.")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {tuple(spacing)}.")
    grid = _Grid(shape, spacing)
    amp = 0.035
    q = (
        grid.x + amp * grid.smooth_field(rng),
        grid.y + amp * grid.smooth_field(rng),
        grid.z + amp * grid.smooth_field(rng),
    )
    fields = [grid.smooth_field(rng) for _ in range(6)]
    hu = t.protocol.hu
    if t.region == "abdomen":
        m = _abdomen(grid, rng, q, fields, air_colon=t.alias == "colon")
        order: tuple[str, ...] = _ABDOMEN_ORDER
    else:
        m = _thorax(grid, rng, q, fields)
        order = _THORAX_ORDER
    m["visceral_fat"] = m["inner"]

    label = np.zeros(grid.shape, np.uint8)
    lesion = np.zeros(grid.shape, bool)
    lesion_hu = 0.0
    perturb = fields[5]
    if t.alias == "liver":
        n_tumours = 1 + min(int(rng.poisson(0.8)), 3)
        for _ in range(n_tumours):
            ball = _place_lesion(grid, rng, q, m["liver"], rng.uniform(0.07, 0.14), perturb)
            if ball is not None:
                lesion |= ball & m["liver"]
        label[m["liver"]] = 1
        label[lesion] = 2
        lesion_hu = hu["liver"] - rng.uniform(60, 90)
    elif t.alias == "spleen":
        label[m["spleen"]] = 1
    elif t.alias == "pancreas":
        # a tumour may bulge out of the thin gland, but not into its neighbours
        others = m["liver"] | m["spleen"] | m["stomach"] | m["aorta"] | m["ivc"] | m["kidney_right"] | m["kidney_left"]
        host = m["inner"] & ~others
        if rng.random() < 0.9:
            ball = _place_lesion(grid, rng, q, m["pancreas"], rng.uniform(0.07, 0.11), perturb, margin=0.3)
            if ball is not None:
                lesion = ball & host
        m["pancreas"] |= lesion
        label[m["pancreas"]] = 1
        label[lesion] = 2
        lesion_hu = hu["pancreas"] - rng.uniform(45, 70)
    elif t.alias == "colon":
        ball = _place_lesion(grid, rng, q, m["colon_wall"], rng.uniform(0.1, 0.15), perturb, margin=0.0)
        if ball is not None:
            near_colon = m["colon_centreline_distance"] <= m["colon_outer_radius"] + 0.03
            lesion = ball & near_colon & m["inner"]
        label[lesion] = 1
        lesion_hu = hu["colon_wall"] + rng.uniform(40, 70)  # an enhancing mass, brighter than the wall
    elif t.alias == "lung":
        for _ in range(1 + int(rng.random() < 0.3)):
            ball = _place_lesion(grid, rng, q, m["lung"], rng.uniform(0.07, 0.12), perturb, margin=1.0)
            if ball is not None:
                lesion |= ball & m["lung"]
        label[lesion] = 1
        lesion_hu = hu["lung_vessel"] + rng.uniform(-10, 20)

    # intensities
    image = np.full(grid.shape, hu["air"], np.float32)
    texture = grid.texture(rng, t.protocol.texture_sigma) * t.protocol.texture_sd
    for tissue in order:
        mask = m.get(tissue)
        if mask is None or not mask.any():
            continue
        base = hu[_TISSUE_HU_KEY.get(tissue, tissue)] + rng.normal(0.0, 5.0)
        image[mask] = base + (texture[mask] if tissue in _TEXTURED else 0.0)
    if lesion.any():
        image[lesion] = lesion_hu + 1.3 * texture[lesion]
    image = ndimage.gaussian_filter(image, t.protocol.kernel_sigma) if t.protocol.kernel_sigma > 0 else image
    image += rng.standard_normal(grid.shape, dtype=np.float32) * t.protocol.noise_sd
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label


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
    t = get_task(task)
    check_synthetic_settings(n_cases, shape, spacing, orientation)
    root = Path(out_dir) / t.name
    if root.exists():
        if not overwrite:
            raise DatasetError(f"{root} already exists; pass overwrite=True (--overwrite) or another folder.")
        shutil.rmtree(root)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    try:
        return _write_task(t, root, n_cases, shape, spacing, seed, orientation, progress)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # no half-written task folder blocks the rerun
        raise


#: Bounds of the synthetic generator's settings (sides in voxels: a phantom needs 16 a side; spacing in mm).
SHAPE_RANGE = (16, 1024)
SPACING_RANGE = (0.01, 100.0)
MAX_CASES = 10_000


def check_synthetic_settings(
    n_cases: int, shape: Sequence[int], spacing: Sequence[float], orientation: str = "LPS"
) -> None:
    """Refuse (:class:`~mlflow_ccfv.errors.OptionError` naming the setting) before any folder is made:
    ``n_cases`` in [1, 10000], three ``shape`` sides in [16, 1024] voxels, three finite ``spacing``
    values in [0.01, 100] mm, ``orientation`` LPS or RAS."""
    if isinstance(n_cases, bool) or not isinstance(n_cases, int) or not 1 <= n_cases <= MAX_CASES:
        raise OptionError(f"n_cases must be an integer in [1, {MAX_CASES}]; got {n_cases!r}.")
    sides = list(shape)
    if len(sides) != 3 or any(
        isinstance(v, bool) or not float(v).is_integer() or not SHAPE_RANGE[0] <= v <= SHAPE_RANGE[1] for v in sides
    ):
        raise OptionError(
            f"shape must be three integer sides in [{SHAPE_RANGE[0]}, {SHAPE_RANGE[1]}] voxels (e.g. 64,64,48); "
            f"got {tuple(sides)}."
        )
    sizes = list(spacing)
    if len(sizes) != 3 or any(not math.isfinite(v) or not SPACING_RANGE[0] <= v <= SPACING_RANGE[1] for v in sizes):
        raise OptionError(
            f"spacing must be three voxel sizes in [{SPACING_RANGE[0]}, {SPACING_RANGE[1]}] mm (e.g. 5,5,5); "
            f"got {tuple(sizes)}."
        )
    if orientation not in ("LPS", "RAS"):
        raise OptionError(f"orientation must be LPS or RAS; got {orientation!r}.")


def _write_task(
    t: SyntheticTask,
    root: Path,
    n_cases: int,
    shape: Sequence[int],
    spacing: Sequence[float],
    seed: int,
    orientation: str,
    progress: bool,
) -> Path:
    affine, flip = _affine(shape, spacing, orientation)
    training = []
    start = time.perf_counter()
    for i in tqdm(range(n_cases), desc=f"synthesising {t.name}", unit="case", disable=None if progress else True):
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
            "orientation": orientation,
        },
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def generate_family(
    out_dir: str | os.PathLike,
    tasks: Iterable[str] | None = None,
    n_cases: int = 10,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
    orientation: str = "LPS",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write several tasks (all five by default) under ``out_dir``; returns task name -> folder."""
    chosen = [get_task(t) for t in (tasks if tasks is not None else SYNTHETIC_TASKS)]
    check_synthetic_settings(n_cases, shape, spacing, orientation)
    existing = [str(Path(out_dir) / t.name) for t in chosen if (Path(out_dir) / t.name).exists()]
    if existing and not overwrite:
        raise DatasetError(f"{' and '.join(existing)} already exists; pass --overwrite or another --out folder.")
    return {
        t.name: generate_task(
            t,
            out_dir,
            n_cases=n_cases,
            shape=shape,
            spacing=spacing,
            seed=seed,
            orientation=orientation,
            overwrite=overwrite,
            progress=progress,
        )
        for t in chosen
    }


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
