"""The real-data benchmark (``mlflow-ccfv study --preset real-hippocampus``): a study whose target is real.

MSD Task04 hippocampus (260 subjects) is cut by subject into a source task of 60 subjects and a target
task of 200 (:func:`~mlflow_ccfv.data.partition.partition_task`, seed 0), so the target's 80/20 split
holds out 40 subjects. The bank: UNet and DynUNet pre-trained on the hippocampus source (the in-domain
model, the known good answer), on BRATS 2013 FLAIR (real MRI, another anatomy) and on the synthetic CT
phantom Task03, each with an early checkpoint, plus the random-init twin of every network (the known
bad answer). The settings are the ones pre-registered in docs/preregistration.md ("Pre-registration 2");
the study resumes where it stopped, like any study.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow_ccfv.data import MSDDataset, short_name
from mlflow_ccfv.data.partition import partition_task
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.pipelines.study import Source, StudyConfig, ensure_synthetic
from mlflow_ccfv.training import TrainConfig

__all__ = [
    "HIPPOCAMPUS_PARTS",
    "REAL_PRESET",
    "SHARED_ENV",
    "real_benchmark_config",
    "shared_data_root",
]

#: The environment variable naming the shared folder (default ``../shared`` beside the checkout).
SHARED_ENV = "MLFLOW_CCFV_SHARED"
#: ``study --preset`` value of this benchmark.
REAL_PRESET = "real-hippocampus"
#: The subject split of MSD Task04: (task folder, subjects).
HIPPOCAMPUS_PARTS = (("Task41_HippoSource", 60), ("Task42_HippoTarget", 200))


def shared_data_root(shared: str | os.PathLike | None = None) -> Path:
    """``<shared>/data/real``: ``shared``, else ``$MLFLOW_CCFV_SHARED``, else ``../shared`` of the working
    folder."""
    base = Path(shared or os.environ.get(SHARED_ENV) or Path.cwd().parent / "shared")
    root = base / "data" / "real"
    if not (root / "msd-hippocampus" / "dataset.json").is_file():
        raise DatasetError(
            f"The real benchmark needs {root / 'msd-hippocampus'} (MSD Task04) and {root / 'brats2013-6'}; "
            f"set {SHARED_ENV} to the folder that holds data/real."
        )
    return root


def real_benchmark_config(
    data_root: str | os.PathLike,
    *,
    shared: str | os.PathLike | None = None,
    bank: str = REAL_PRESET,
    pretrain_steps: int = 3000,
    finetune_steps: int = 100,
    seeds: tuple[int, ...] = (0, 1, 2),
    device: str | None = None,
    progress: bool = True,
) -> StudyConfig:
    """The benchmark's :class:`StudyConfig`: the hippocampus parts written under ``<data_root>/real``
    (copied once), the synthetic Task03 under ``<data_root>/synthetic`` (family seed 0, 50 cases)."""
    real = shared_data_root(shared)
    source, target = partition_task(real / "msd-hippocampus", Path(data_root) / "real", HIPPOCAMPUS_PARTS, seed=0)
    (task03,) = ensure_synthetic(Path(data_root) / "synthetic", ["Task03"], 50, (64, 64, 48), progress=progress)
    sources = [Source(source), Source(real / "brats2013-6", channels=(0,)), Source(task03)]
    patch = (32, 32, 32)
    return StudyConfig(
        targets=[target],
        sources=sources,
        architectures=("UNet", "DynUNet"),
        bank=bank,
        pretrain=TrainConfig(steps=pretrain_steps, patch_size=patch, learning_rate=3e-3, seed=1),
        finetune=TrainConfig(steps=finetune_steps, patch_size=patch, learning_rate=3e-3, seed=0),
        seeds=tuple(seeds),
        source_holdout=True,
        curve_every=250,
        early_step=250,
        early_sources=tuple(short_name(MSDDataset.load(s.path)) for s in sources),
        device=device,
        in_domain={short_name(MSDDataset.load(target)): (short_name(MSDDataset.load(source)),)},
    )
