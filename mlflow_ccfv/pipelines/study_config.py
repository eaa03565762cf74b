"""What a study runs: its configuration (:class:`StudyConfig`, built by :func:`study_config` for the
synthetic family and real MSD folders, :func:`demo_config` for the demo), the synthetic tasks it needs, and
what it returns (:class:`StudyResult`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mlflow_ccfv.data import MSDDataset, short_name
from mlflow_ccfv.data.synthetic import SYNTHETIC_TASKS, SyntheticSettings, generate_task, get_task
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.networks import DEFAULT_PATCH_SIZE
from mlflow_ccfv.options import parse_source
from mlflow_ccfv.pipelines.finetune import FinetuneOutcome
from mlflow_ccfv.pipelines.shipped_bank import SHIPPED_BANK
from mlflow_ccfv.study.report import Report
from mlflow_ccfv.tracking.datasets import is_dataset_reference, resolve_dataset_reference
from mlflow_ccfv.tracking.search import DEFAULT_BANK
from mlflow_ccfv.training import TrainConfig

__all__ = [
    "ARCHITECTURES",
    "DEMO_BUDGET",
    "DEMO_EXTRA_TASKS",
    "DEMO_SOURCES",
    "STUDY_BUDGET",
    "DemoSettings",
    "Source",
    "StudyBudget",
    "StudyConfig",
    "StudyResult",
    "StudySettings",
    "STUDY_SYNTHETIC",
    "demo_config",
    "ensure_synthetic",
    "study_config",
]

_logger = logging.getLogger(__name__)


ARCHITECTURES = ("UNet", "UNETR")


#: The demo's tasks beside its target: generated with the shipped bank (Task07: the README's next
#: command scores it), pre-trained on with ``from_scratch``.
DEMO_EXTRA_TASKS = ("Task07",)


DEMO_SOURCES = ("Task03", "Task07", "Task06")


#: The synthetic family a study generates unless told otherwise: 50 cases a task, 64x64x48, seed 0.
STUDY_SYNTHETIC = SyntheticSettings(n_cases=50)


@dataclass(frozen=True)
class StudyBudget:
    """What every model of a study is trained with: ``pretrain_steps`` and ``finetune_steps`` at
    ``learning_rate`` on patches of ``patch_size``, each model fine-tuned with every one of ``seeds``."""

    pretrain_steps: int
    finetune_steps: int
    patch_size: tuple[int, ...] = DEFAULT_PATCH_SIZE
    seeds: tuple[int, ...] = (0, 1, 2)
    learning_rate: float = 3e-3

    #: the seed of every pre-training, and the fine-tuning config's own seed
    PRETRAIN_SEED = 1
    FINETUNE_SEED = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    def pretrain(self) -> TrainConfig:
        return self._config(self.pretrain_steps, self.PRETRAIN_SEED)

    def finetune(self) -> TrainConfig:
        return self._config(self.finetune_steps, self.FINETUNE_SEED)

    def _config(self, steps: int, seed: int) -> TrainConfig:
        return TrainConfig(steps=steps, patch_size=self.patch_size, learning_rate=self.learning_rate, seed=seed)


#: The demo's and the synthetic study's budgets (the CLI's defaults).
DEMO_BUDGET = StudyBudget(pretrain_steps=150, finetune_steps=150)
STUDY_BUDGET = StudyBudget(pretrain_steps=2000, finetune_steps=200)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's choices (see :func:`demo_config`): its ``target``, the tasks generated beside it or
    pre-trained on (``sources``), the ``bank`` tag, the ``architectures``, the estimators (``methods``),
    the ``device``, where the bank comes from (``from_scratch``, ``bank_folder``), how the synthetic
    tasks are made (``synthetic``) and the training ``budget``."""

    target: str = "Task10"
    sources: tuple[str, ...] | None = None
    bank: str = DEFAULT_BANK
    architectures: tuple[str, ...] | None = None
    methods: str = "all"
    device: str | None = None
    from_scratch: bool = False
    bank_folder: Path | None = None
    synthetic: SyntheticSettings = STUDY_SYNTHETIC
    budget: StudyBudget = DEMO_BUDGET


@dataclass(frozen=True)
class StudySettings:
    """The study's choices (see :func:`study_config`): ``targets`` and ``sources`` (synthetic task
    names, MSD folders, logged datasets; None: the defaults), ``brats`` (an extra FLAIR source), the
    ``architectures``, the ``bank`` tag, the pre-training curve (``curve_every``) and early checkpoint
    (``early_step`` of ``early_sources``), the ``device``, how the synthetic tasks are made
    (``synthetic``) and the training ``budget``."""

    targets: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    brats: str | Path | None = None
    architectures: tuple[str, ...] = ARCHITECTURES
    bank: str = "study"
    curve_every: int = 250
    early_step: int | None = 250
    early_sources: tuple[str, ...] = ("Task03", "Task09")
    device: str | None = None
    synthetic: SyntheticSettings = STUDY_SYNTHETIC
    budget: StudyBudget = STUDY_BUDGET


@dataclass(frozen=True)
class Source:
    """A pre-training source: a dataset folder and the input channels used (None = all)."""

    path: Path
    channels: tuple[int, ...] | None = None


#: The budget of a :class:`StudyConfig` built by hand (the CPU study's).
_CPU_BUDGET = StudyBudget(pretrain_steps=300, finetune_steps=200)


@dataclass
class StudyConfig:
    """Everything a study run depends on (logged as params); defaults are the CPU study's.

    ``targets``: dataset folders fine-tuned on; ``sources``: pre-training sources (targets are also
    sources of each other, leave-one-out); ``pretrain``/``finetune``: the budgets, identical for every
    model; ``methods``: estimators scored (``"all"`` includes the Table 2 ablations); ``device``: where
    the networks train and run (``None``: CUDA when available, else CPU); ``amp``: mixed-precision
    inference when scoring (an opt-in, see :mod:`mlflow_ccfv.networks.devices`).
    """

    targets: list[Path]
    sources: list[Source]
    architectures: tuple[str, ...] = ARCHITECTURES
    pretrain: TrainConfig = field(default_factory=lambda: _CPU_BUDGET.pretrain())
    finetune: TrainConfig = field(default_factory=lambda: _CPU_BUDGET.finetune())
    bank: str = "study"
    methods: str = "all"
    control_seed: int = 0
    split_seed: int = 0
    overlap: float = 0.5
    cache_dir: str | None = None
    device: str | None = None
    amp: bool = False
    #: fine-tuning seeds per (model, target); None: the ``finetune`` config's one seed
    seeds: tuple[int, ...] | None = None
    #: pre-train on each source's 80% split and tag the Dice on its 20% (``pretrain.source_dice``)
    source_holdout: bool = False
    #: the pre-training curve: source Dice every N steps (0: only at the end)
    curve_every: int = 0
    #: with ``early_sources``: also register this step's checkpoint of those sources' runs
    early_step: int | None = None
    early_sources: tuple[str, ...] = ()
    #: bootstrap resamples of the report's intervals
    n_resamples: int = 1000
    #: datasets given as logged references: local folder (resolved path) -> ``runs:/<run_id>/<folder>``;
    #: Ray tasks read these targets from the reference (downloaded once per worker machine)
    references: dict[str, str] = field(default_factory=dict)
    #: register the pre-trained models of this bank folder (safetensors + manifest, e.g. the shipped
    #: bank) instead of pre-training on ``sources``
    bank_folder: Path | None = None
    #: target -> the sources of its own task (e.g. two parts of one dataset): the report checks that a
    #: ranking puts one of their models in its top 2
    in_domain: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: registered models (``models:/<name>/<version>``) added to the bank beside the pre-trained ones
    #: (e.g. an imported bundle); each gets the twin of its network
    extra_models: tuple[str, ...] = ()

    def location(self, folder: str | Path) -> str:
        """Where a worker finds the dataset in ``folder``: its logged reference, else the folder's path."""
        return self.references.get(str(Path(folder).resolve()), str(folder))


@dataclass
class StudyResult:
    report: Report
    frame: pd.DataFrame
    seconds: dict[str, float]
    outcomes: list[FinetuneOutcome]

    @property
    def cost_ratio(self) -> float:
        """Wall time of scoring the banks over wall time of fine-tuning them (measured, not reused)."""
        ft = self.seconds.get("finetune", 0.0)
        return self.seconds.get("score", float("nan")) / ft if ft > 0 else float("nan")


def ensure_synthetic(
    data_root: str | Path, tasks: Sequence[str], synthetic: SyntheticSettings, progress: bool = True
) -> list[Path]:
    """The synthetic task folders under ``data_root``, generated only when missing or made differently."""
    root = Path(data_root)
    n_cases, shape, seed = synthetic.n_cases, synthetic.shape, synthetic.seed
    out = []
    for task in tasks:
        t = get_task(task)
        folder = root / t.name
        meta_file = folder / "dataset.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            synth = meta.get("synthetic", {})
            if (
                meta.get("numTraining") == n_cases
                and synth.get("seed") == seed
                and list(synth.get("shape", [])) == list(shape)
            ):
                out.append(folder)
                continue
            _logger.info("%s exists with other settings; regenerating", folder)
        out.append(generate_task(t, root, n_cases=n_cases, shape=shape, seed=seed, overwrite=True, progress=progress))
    return out


def demo_config(data_root: str | Path, demo: DemoSettings | None = None, progress: bool = True) -> StudyConfig:
    """The demo: one synthetic target (``demo.synthetic``: 50 cases by default, the 80/20 split holds out
    10), a bank, one random-init control per architecture; every model fine-tuned with each of
    ``demo.budget.seeds`` for ``demo.budget.finetune_steps`` (the study's budget).

    The bank: by default the pre-trained models of ``demo.bank_folder`` (the shipped bank: UNets the
    development study pre-trained for 1000 steps on the same synthetic family, see
    :data:`~mlflow_ccfv.pipelines.shipped_bank.SHIPPED_BANK`), verified and registered in seconds;
    ``demo.sources`` are then only generated beside the target (default ``Task07``). With
    ``demo.from_scratch``, ``len(sources) x len(architectures)`` models are pre-trained here for
    ``demo.budget.pretrain_steps`` (default sources Task03, Task07, Task06; architectures UNet, UNETR).

    The demo's models go to the bank ``score`` uses by default (``default``) and its tasks are generated
    where ``score`` looks by default (``data``), so the headline ``mlflow run . -e score -P
    dataset=Task07`` works right after it."""
    demo = demo or DemoSettings()
    folder = None if demo.from_scratch else Path(demo.bank_folder) if demo.bank_folder else SHIPPED_BANK
    arch, extra = _demo_bank(demo, folder)
    target = demo.target
    names = [target] + [s for s in extra if get_task(s).name != get_task(target).name]
    folders = ensure_synthetic(data_root, names, demo.synthetic, progress=progress)
    return StudyConfig(
        targets=[folders[0]],
        sources=[] if folder is not None else [Source(f) for f in folders[1:]],
        bank=demo.bank,
        methods=demo.methods,
        architectures=arch,
        pretrain=demo.budget.pretrain(),
        finetune=demo.budget.finetune(),
        seeds=demo.budget.seeds,
        device=demo.device,
        bank_folder=folder,
    )


def _demo_bank(demo: DemoSettings, folder: Path | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The demo's architectures and the tasks generated beside its target: those of the bank ``folder``
    and :data:`DEMO_EXTRA_TASKS`, or (no folder: pre-trained here) :data:`ARCHITECTURES` and
    :data:`DEMO_SOURCES`; the settings' own when given."""
    if folder is None:
        arch = tuple(demo.architectures) if demo.architectures else ARCHITECTURES
        return arch, tuple(demo.sources) if demo.sources is not None else DEMO_SOURCES
    from mlflow_ccfv.networks.bank_files import read_manifest

    manifest = read_manifest(folder)
    arch = tuple(demo.architectures) if demo.architectures else tuple(manifest.architectures)
    if get_task(demo.target).name.split("_")[0] in {m.source_dataset for m in manifest.models}:
        _logger.warning(
            "the demo's target %s is a source of the bank in %s; those models are left out of its bank",
            demo.target,
            folder,
        )
    return arch, tuple(demo.sources) if demo.sources is not None else DEMO_EXTRA_TASKS


def _resolve_entries(
    entries: Sequence[str], references: dict[str, str] | None = None
) -> tuple[list[str], list[tuple[Path, tuple[int, ...] | None]]]:
    """Split study entries into synthetic task names and real MSD folders (``PATH[:CHANNELS]``); a logged
    dataset (``runs:/<run_id>/<folder>[:CHANNELS]``) is downloaded once into the digest-keyed cache,
    verified, and recorded in ``references`` (its local folder -> the reference)."""
    synthetic, real = [], []
    for entry in entries:
        where, channels = parse_source(entry)
        if is_dataset_reference(where):
            local = resolve_dataset_reference(where).resolve()
            if references is not None:
                references[str(local)] = where
            real.append((local, channels))
            continue
        path = Path(where).expanduser()
        if path.is_dir():
            if not (path / "dataset.json").is_file():
                raise ValueError(f"{path} is not an MSD task folder (no dataset.json); give a Decathlon-layout folder.")
            real.append((path.resolve(), channels))
        elif "/" in where or "\\" in where:
            raise ValueError(
                f"Dataset folder {where} does not exist; give an MSD task folder or a synthetic task name."
            )
        else:
            synthetic.append(get_task(where).name)  # raises with the known names
    return synthetic, real


def _short_source_name(entry: str) -> str:
    """``Task03``, ``liver``, ``Task03_SynthLiver`` or an MSD folder path -> the short name in the tags."""
    path = Path(parse_source(entry)[0]).expanduser()
    if path.is_dir():
        return short_name(MSDDataset.load(path))
    try:
        return get_task(entry).name.split("_")[0]
    except DatasetError:
        return entry  # a real source's short name (``Task90``)


def study_config(data_root: str | Path, study: StudySettings | None = None, progress: bool = True) -> StudyConfig:
    """Leave-one-task-out over the synthetic family (generated under ``data_root`` as ``study.synthetic``
    says) and/or real MSD folders.

    ``study.targets``/``study.sources``: synthetic task names (``Task03``), MSD folder paths or logged
    datasets (``runs:/<run_id>/<folder>``, downloaded once into ``$MLFLOW_CCFV_CACHE``/``.ccfv-cache``
    and verified; the config's ``references`` keeps them for Ray workers); a source may keep some
    channels (``/data/Task01_BrainTumour:0``). Default targets: the five synthetic tasks; default
    sources: the synthetic family when a target is synthetic, plus every real target. ``study.brats``:
    the BRATS folder, an extra source used with its FLAIR channel only (the targets are 1-channel CT;
    see docs/study.md). ``study.budget.seeds``: fine-tuning seeds per (model, target). Pre-training: each
    source's 80% split, its held-out Dice every ``study.curve_every`` steps, and for
    ``study.early_sources`` the checkpoint at ``study.early_step`` registered as a second version.
    """
    study = study or StudySettings()
    references: dict[str, str] = {}
    target_synth, target_real = _resolve_entries(list(study.targets or SYNTHETIC_TASKS), references)
    if study.sources:
        source_synth, source_real = _resolve_entries(list(study.sources), references)
    else:
        source_synth = list(SYNTHETIC_TASKS) if target_synth else []
        source_real = [(path, None) for path, _ in target_real]
    names = list(dict.fromkeys(target_synth + source_synth))
    made = ensure_synthetic(data_root, names, study.synthetic, progress=progress)
    folders = dict(zip(names, made))
    source_list = [Source(folders[n]) for n in source_synth] + [Source(p, c) for p, c in source_real]
    if study.brats:
        source_list.append(Source(Path(study.brats), channels=(0,)))
    return StudyConfig(
        targets=[folders[n] for n in target_synth] + [p for p, _ in target_real],
        sources=source_list,
        architectures=tuple(study.architectures),
        bank=study.bank,
        pretrain=study.budget.pretrain(),
        finetune=study.budget.finetune(),
        seeds=study.budget.seeds,
        source_holdout=True,
        curve_every=study.curve_every,
        early_step=study.early_step if study.early_sources else None,
        early_sources=tuple(_short_source_name(t) for t in study.early_sources),
        device=study.device,
        references=references,
    )
