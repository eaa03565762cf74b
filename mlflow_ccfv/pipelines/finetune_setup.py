"""What one fine-tune is: its request (:class:`FinetuneRequest`), its budget's digest, and what its
steps share (:class:`FinetuneSetup`: the target, the version's network, the digests), with the target's
cases that it trains and evaluates on."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import IntensityNormalization, MSDDataset, PreprocessConfig, PreprocessedCase, make_target
from mlflow_ccfv.data.target import Target
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.pretrain import check_training_resources, load_dataset
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.load import LoadedModel, load_version
from mlflow_ccfv.tracking.search import registered_version
from mlflow_ccfv.training import TrainConfig

__all__ = [
    "Cases",
    "FinetuneRequest",
    "FinetuneSetup",
    "budget_digest",
    "input_digest",
    "load_cases",
    "load_setup",
]

_logger = logging.getLogger(__name__)

#: The pre-loaded ``(train, test)`` cases of a target.
Cases = tuple[list[PreprocessedCase], list[PreprocessedCase]]


@dataclass(frozen=True)
class FinetuneRequest:
    """One fine-tune: registered version ``model`` on ``dataset``'s training split with ``config``, the
    Dice measured on its test split, once per seed in ``seeds`` (default: ``config.seed`` only).

    ``cases``: pre-loaded ``(train, test)`` cases. Unless ``force``, a version already tagged with this
    dataset's Dice for the same budget (seeds included) is not fine-tuned again, and a seed already
    measured by a finished run with the same per-seed budget is read back from that run. ``device``:
    where to fine-tune and evaluate (default CUDA when available, else CPU; checked before any work,
    with the memory the patch size needs). Every ``checkpoint_every`` steps (0: never) a seed's
    training state is saved under ``checkpoint_dir`` (default ``<cache>/finetune``) and a rerun after
    a kill resumes from it. ``allow_pickle``: see :func:`~mlflow_ccfv.tracking.pickle_allowed`
    (fine-tuning needs a network spec anyway). ``parent_run_id``: the run to nest under when there is
    no active run (a Ray task of a study)."""

    model: str | ModelVersion
    dataset: str | Path | MSDDataset
    config: TrainConfig
    data_root: str | Path | None = None
    split_seed: int = 0
    overlap: float = 0.5
    preprocess: PreprocessConfig | None = None
    cases: Cases | None = None
    force: bool = False
    log_finetuned_model: bool = True
    progress: bool = True
    device: str | None = None
    seeds: tuple[int, ...] = ()
    checkpoint_every: int = 50
    checkpoint_dir: str | Path | None = None
    allow_pickle: bool | None = None
    parent_run_id: str | None = None

    def __post_init__(self) -> None:
        seeds = tuple(int(s) for s in self.seeds) or (self.config.seed,)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct integers, at least one; got {list(seeds)}.")
        object.__setattr__(self, "seeds", seeds)


@dataclass(frozen=True)
class FinetuneSetup:
    """What every step of one fine-tune shares: the request, the target, the loaded version and the
    digests of what it is fine-tuned on (``data_digest``) and of the whole budget (``budget``)."""

    request: FinetuneRequest
    dataset: MSDDataset
    target: Target
    loaded: LoadedModel
    data_digest: str
    budget: str
    device: torch.device

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.request.seeds

    def seed_config(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.request.config, seed=seed)

    def seed_digest(self, seed: int) -> str:
        """The digest of one seed's budget (``params.budget`` of its run)."""
        r = self.request
        return self.seed_config(seed).digest(split_seed=r.split_seed, overlap=r.overlap, dataset=self.data_digest)


def budget_digest(config: TrainConfig, seeds: Sequence[int], split_seed: int, overlap: float, dataset: str) -> str:
    """The digest of a fine-tuning budget (tag ``finetune.budget.<dataset>``): one seed, the digest of
    that seed's run; several, the config's digest with the seeds included (so other seeds never reuse)."""
    if len(seeds) == 1:
        return dataclasses.replace(config, seed=int(seeds[0])).digest(
            split_seed=split_seed, overlap=overlap, dataset=dataset
        )
    return dataclasses.replace(config, seed=0).digest(
        split_seed=split_seed, overlap=overlap, dataset=dataset, seeds=T.format_seeds(seeds)
    )


def input_digest(dataset_digest: str, normalization: IntensityNormalization | None) -> str:
    """The digest of what a model is fine-tuned on: the target's, plus its own normalisation when it
    has one (so a version imported with its own normalisation never reuses Dice measured without it)."""
    if normalization is None:
        return dataset_digest
    return f"{dataset_digest}+{normalization.digest()}"


def load_setup(request: FinetuneRequest) -> FinetuneSetup:
    """The target and the version's network (a network spec is required: fine-tuning re-creates the last
    convolution from it), after checking the device has what the budget needs."""
    check_training_resources(request.config, request.device)
    ds = load_dataset(request.dataset, request.data_root)
    target = make_target(ds, "train", seed=request.split_seed)
    device = resolve_device(request.device)
    mv = registered_version(request.model)
    loaded = load_version(mv if mv is not None else request.model, allow_pickle=request.allow_pickle)
    if loaded.spec is None:
        raise RegistryError(
            f"{loaded.label} is an mlflow.pytorch model without a network specification; fine-tuning re-creates "
            "the last convolution from the spec, so register it with register_network (a MONAI spec + weights)."
        )
    data_digest = input_digest(target.digest, loaded.normalization)  # also for a models:/m-... URI (no tags)
    r = request
    digest = budget_digest(r.config, r.seeds, r.split_seed, r.overlap, data_digest)
    return FinetuneSetup(request, ds, target, loaded, data_digest, digest, device)


def load_cases(setup: FinetuneSetup, preloaded: Cases | None = None) -> Cases:
    """The pre-loaded ``(train, test)`` cases (``preloaded``, else the request's), unless the version has
    its own normalisation: then (and without pre-loaded cases) the target's split loaded with it."""
    r, normalization = setup.request, setup.loaded.normalization
    cases = preloaded if preloaded is not None else r.cases
    if cases is not None and normalization is None:
        return cases
    if cases is not None:
        _logger.info("%s: loading %s with its own normalisation (%s)", setup.loaded.label, setup.name, normalization)
    split = setup.dataset.split(seed=r.split_seed)
    train, test = (
        list(setup.dataset.iter_cases(ids, config=r.preprocess, progress=r.progress, normalization=normalization))
        for ids in (split.train, split.test)
    )
    return train, test
