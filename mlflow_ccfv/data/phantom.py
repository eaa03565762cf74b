"""One synthetic CT phantom: anatomy, lesions and intensities rendered from one seeded generator.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mlflow_ccfv.data.synthetic_tasks import SyntheticTask, get_task
from mlflow_ccfv.options import SYNTHETIC_SHAPE_RANGE

__all__ = ["MIN_SIDE", "DEFAULT_SHAPE", "DEFAULT_SPACING", "synthesize_case"]

#: The smallest side (voxels) a phantom can be drawn in: the anatomy's margins need 16.
MIN_SIDE = SYNTHETIC_SHAPE_RANGE[0]

DEFAULT_SHAPE = (64, 64, 48)
DEFAULT_SPACING = (5.0, 5.0, 5.0)


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
def _body_section(rng: np.random.Generator, q, fields, width: float, depth: float) -> tuple[np.ndarray, float, float]:
    """The body's elliptic cross-section of half-width ``width`` and half-depth ``depth`` (units), scaled by a
    drawn size factor ``s`` and wobbled by ``fields[0:2]``: ``(r, s, ay)``, ``r`` the elliptic radius of
    every voxel (1 on the skin), ``ay`` the drawn half-depth."""
    x, y, _ = q
    s = rng.uniform(0.92, 1.0)
    ax = width * s * (1 + 0.03 * fields[0])
    ay = depth * s * rng.uniform(0.92, 1.05) * (1 + 0.03 * fields[1])
    return np.sqrt((x / ax) ** 2 + ((y + 0.05) / ay) ** 2), s, ay


def _abdomen(grid: _Grid, rng: np.random.Generator, q, fields, air_colon: bool) -> dict[str, np.ndarray]:
    x, y, z = q
    zh = grid.z_half
    r, s, ay = _body_section(rng, q, fields, 0.9, 0.68)
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
    r, _, ay = _body_section(rng, q, fields, 0.92, 0.62)
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
    if len(shape) != 3 or min(shape) < MIN_SIDE:
        raise ValueError(f"shape must be three sizes of at least {MIN_SIDE} voxels, got {tuple(shape)}.")
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
