"""The synthetic task catalogue: acquisition protocols (contrast phase, kernel, dose) and the five tasks.

The five tasks mirror the character of the paper's five MSD tasks and are deliberately related and
unrelated (see ``SYNTHETIC_TASKS`` and docs/data.md): liver and spleen share the region, the
protocol and the scanner (only the labelled organ differs); pancreas and colon share the abdominal
anatomy but not the contrast phase or the noise; lung differs in region, protocol, kernel and
target size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_ccfv.errors import DatasetError

__all__ = [
    "ARTERIAL",
    "CHEST_NONCONTRAST",
    "COLONOGRAPHY",
    "PORTAL_VENOUS",
    "SYNTHETIC_TASKS",
    "Protocol",
    "SyntheticTask",
    "get_task",
]


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
