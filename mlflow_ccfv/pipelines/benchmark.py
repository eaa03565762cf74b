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

import json
import logging
import os
from pathlib import Path

import torch
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset, short_name
from mlflow_ccfv.data.partition import partition_task
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.networks import NetworkSpec
from mlflow_ccfv.pipelines.register import BankEntry, BundleSource, register_imported
from mlflow_ccfv.pipelines.study_config import Source, StudyBudget, StudyConfig, SyntheticSettings, ensure_synthetic
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.search import find_version
from mlflow_ccfv.training import TrainConfig, pretrain

_logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_MODEL",
    "BUNDLE_SPEC",
    "HIPPOCAMPUS_PARTS",
    "REAL_PRESET",
    "SHARED_ENV",
    "imported_bundle_model",
    "real_benchmark_config",
    "shared_data_root",
    "write_bundle",
]

#: The environment variable naming the shared folder (default ``../shared`` beside the checkout).
SHARED_ENV = "MLFLOW_CCFV_SHARED"
#: ``study --preset`` value of this benchmark.
REAL_PRESET = "real-hippocampus"
#: The subject split of MSD Task04: (task folder, subjects).
HIPPOCAMPUS_PARTS = (("Task41_HippoSource", 60), ("Task42_HippoTarget", 200))


#: The imported-format model: a UNet of another configuration than the bank's (wider, two residual units
#: per level: its own network identity, so its own twin), trained on the hippocampus source, exported as a
#: MONAI bundle and registered through ``register --bundle``.
BUNDLE_SPEC = NetworkSpec(
    "UNet",
    {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 2,
    },
)
#: Its registered name.
BUNDLE_MODEL = "unet-wide-bundle-Task41"


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
    (task03,) = ensure_synthetic(Path(data_root) / "synthetic", ["Task03"], SyntheticSettings(), progress=progress)
    sources = [Source(source), Source(real / "brats2013-6", channels=(0,)), Source(task03)]
    budget = StudyBudget(pretrain_steps, finetune_steps, seeds=seeds)
    return StudyConfig(
        targets=[target],
        sources=sources,
        architectures=("UNet", "DynUNet"),
        bank=bank,
        pretrain=budget.pretrain(),
        finetune=budget.finetune(),
        seeds=budget.seeds,
        source_holdout=True,
        curve_every=250,
        early_step=250,
        early_sources=tuple(short_name(MSDDataset.load(s.path)) for s in sources),
        device=device,
        in_domain={short_name(MSDDataset.load(target)): (short_name(MSDDataset.load(source)),)},
    )


def write_bundle(module: torch.nn.Module, spec: NetworkSpec, folder: str | os.PathLike, roi: tuple[int, ...]) -> Path:
    """Write ``module`` as a MONAI bundle folder laid out like the model zoo's: ``configs/inference.json``
    (``network_def`` = ``spec``, a sliding-window inferer with ``roi``), ``configs/metadata.json`` and
    ``models/model.pt`` (the state_dict); the metadata file is written last."""
    root = Path(folder)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    config = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": spec.architecture, **spec.kwargs},
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 4, "overlap": 0.5},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    torch.save(module.state_dict(), root / "models" / "model.pt")
    meta = {"name": root.name, "version": "0.1.0", "description": "mlflow-ccfv real benchmark: imported model"}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    return root


def imported_bundle_model(
    config: StudyConfig, data_root: str | os.PathLike, *, steps: int = 1000, progress: bool = True
) -> ModelVersion:
    """The benchmark's imported-format model (:data:`BUNDLE_SPEC` trained ``steps`` steps on the first
    source's 80% split, written as a bundle under ``<data_root>/bundles`` and registered with
    ``register --bundle``'s code), or the version registered before."""
    source = MSDDataset.load(config.sources[0].path)
    tags = {T.BANK: config.bank, T.SOURCE_DATASET: short_name(source)}
    if (existing := find_version(BUNDLE_MODEL, tags)) is not None:
        return existing
    split = source.split(seed=0)
    cases = list(source.iter_cases(split.train, progress=progress))
    train = TrainConfig(steps=steps, patch_size=config.pretrain.patch_size, learning_rate=3e-3, seed=1)
    result = pretrain(BUNDLE_SPEC, cases, train, progress=progress, desc=f"pretrain {BUNDLE_MODEL}")
    folder = write_bundle(result.model, BUNDLE_SPEC, Path(data_root) / "bundles" / BUNDLE_MODEL, train.patch_size)
    _logger.info("wrote the bundle %s (%.0f s of training)", folder, result.seconds)
    entry = BankEntry(
        BUNDLE_MODEL,
        short_name(source),
        bank=config.bank,
        description=f"{BUNDLE_SPEC.architecture} trained {steps} steps on {source.root.name}, imported as a MONAI bundle",
    )
    return register_imported(BundleSource(str(folder)), entry)
