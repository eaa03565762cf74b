"""The paper's experiment as one workflow: pre-train a bank, score it, fine-tune it, report.

:func:`run_transfer_study` is the whole loop, leave-one-task-out (Sec. 3.1): every source is
pre-trained once per architecture; for each target the bank is every model *not* trained on it plus
the random-initialisation controls; the bank is scored on the target's training split (``score``),
fine-tuned on it with one budget and seed for every model (``finetune``), and the correlations are
computed from the stored tags (``report``). It times scoring against fine-tuning (the cost ratio).

``study`` runs it over the five synthetic tasks (plus the real BRATS folder as an extra source), or
over real MSD folders given as paths (``--targets /data/Task02_Heart,/data/Task09_Spleen``) or as
datasets logged with ``log-dataset`` (``--targets runs:/<run_id>/<folder>``: downloaded once into the
digest-keyed cache and verified; Ray workers read such a target from the tracking server, not from a
shared file system);
``demo`` runs it on one target with a small bank and prints the ranked table. Both reuse what exists:
synthetic data already generated with the same settings, bank versions with the same budget
(``pretrain.budget`` tag), cached features, Dice already measured with the same budget, and each
fine-tuning seed already measured by a finished run, so a stopped study continues where it stopped,
at the granularity of one (model, target, seed). Every unit of work logs a progress line with an
estimate of the time left.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import pandas as pd

from mlflow_ccfv.data import MSDDataset, make_target, short_name
from mlflow_ccfv.data.synthetic import SYNTHETIC_TASKS, generate_task, get_task
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.options import parse_source
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor, TaskFailure
from mlflow_ccfv.pipelines.finetune import FinetuneOutcome, finetune_version
from mlflow_ccfv.pipelines.pretrain import CONTROL_SOURCE, pretrain_checkpoints, register_control, register_twins
from mlflow_ccfv.pipelines.report import report_bank
from mlflow_ccfv.pipelines.score import TargetSource, score_versions
from mlflow_ccfv.pipelines.shipped_bank import SHIPPED_BANK, register_bank_folder
from mlflow_ccfv.scoring import DEFAULT_METHODS
from mlflow_ccfv.scoring.ranking import choose_ranking
from mlflow_ccfv.study.report import Report, ranked_table
from mlflow_ccfv.study.tables import to_markdown
from mlflow_ccfv.study.variants import frame_members
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import is_dataset_reference, resolve_dataset_reference
from mlflow_ccfv.tracking.registry import DEFAULT_BANK, get_version, version_uri
from mlflow_ccfv.tracking.runs import command_run
from mlflow_ccfv.tracking.views import DEFAULT_UI, ranking_view_url
from mlflow_ccfv.training import TrainConfig

__all__ = [
    "ARCHITECTURES",
    "DEMO_EXTRA_TASKS",
    "DEMO_SOURCES",
    "CONTROL_SOURCE",
    "FinetuneTask",
    "Source",
    "StudyConfig",
    "StudyResult",
    "demo_config",
    "demo_table",
    "check_twins",
    "demo_evidence",
    "evidence_summary",
    "ensure_synthetic",
    "finetune_task_remote",
    "run_transfer_study",
    "study_config",
]

_logger = logging.getLogger(__name__)

ARCHITECTURES = ("UNet", "UNETR")
#: The demo's tasks beside its target: generated with the shipped bank (Task07: the README's next
#: command scores it), pre-trained on with ``from_scratch``.
DEMO_EXTRA_TASKS = ("Task07",)
DEMO_SOURCES = ("Task03", "Task07", "Task06")


@dataclass(frozen=True)
class Source:
    """A pre-training source: a dataset folder and the input channels used (None = all)."""

    path: Path
    channels: tuple[int, ...] | None = None


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
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, learning_rate=3e-3, seed=1))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, learning_rate=3e-3, seed=0))
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
    data_root: str | Path,
    tasks: Sequence[str],
    n_cases: int,
    shape: Sequence[int],
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """The synthetic task folders under ``data_root``, generated only when missing or made differently."""
    root = Path(data_root)
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


def _timed(seconds: dict[str, float], key: str, start: float) -> None:
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


def run_transfer_study(
    config: StudyConfig,
    progress: bool = True,
    force_finetune: bool = False,
    force_score: bool = False,
    out_dir: str | Path | None = None,
    device: str | None = None,
    executor: Executor | None = None,
) -> StudyResult:
    """Pre-train, score, fine-tune and report (see the module docstring). Logs a parent run ``study``;
    ``out_dir``: also keep the report's tables and plots there; ``device`` (when given) replaces
    ``config.device``. ``executor``: where the bank is scored and fine-tuned (default in this process;
    a :class:`~mlflow_ccfv.pipelines.executors.RayExecutor`: one task per version, and one per (model,
    target, seed), each logging its own runs and tags on ``device`` or its worker's default; the
    targets are read from their logged references (``config.references``), else from their folders,
    which every worker must then see)."""
    executor = executor or SerialExecutor()
    if device is not None:
        config = replace(config, device=device)
    if executor.in_process:  # checked before any work; a Ray worker resolves its own
        config = replace(config, device=str(resolve_device(config.device)))
    with command_run(f"study {config.bank}") as parent:
        return _run_study(config, parent, progress, force_finetune, force_score, out_dir, executor)


@dataclass(frozen=True)
class FinetuneTask:
    """One fine-tune of a study: version ``model`` on the task folder ``dataset`` with ``config``."""

    model: str
    dataset: str
    config: TrainConfig
    split_seed: int
    overlap: float
    force: bool
    parent_run_id: str
    device: str | None = None
    #: false for one seed of a multi-seed fine-tune: the driver tags the version with the seeds' mean and sd
    tag_version: bool = True


def finetune_task_remote(task: FinetuneTask) -> FinetuneOutcome:
    """:func:`~mlflow_ccfv.pipelines.finetune.finetune_version` as a Ray task: its run nested under the
    study's run, its Dice tags on the version. A retried task (its worker died) fine-tunes again; the
    version's tags are written only once a fine-tune has finished."""
    return finetune_version(
        task.model,
        task.dataset,
        task.config,
        split_seed=task.split_seed,
        overlap=task.overlap,
        force=task.force,
        progress=False,
        parent_run_id=task.parent_run_id,
        device=task.device,
        tag_version=task.tag_version,
    )


def _finetune_bank_remote(
    bank, ds, config: StudyConfig, seeds, force: bool, progress: bool, parent, executor: Executor, seconds
) -> list[FinetuneOutcome]:
    """One task per (model, seed) on ``ds``, then, per model, the seeds' Dice combined in this process
    (:func:`finetune_version` reads every seed back from its finished run; nothing is trained again) and
    written to the version's tags (mean, sd, seeds): with several seeds the tasks leave the version alone."""
    tasks = [
        FinetuneTask(
            version_uri(v),
            config.location(ds.root),
            dataclasses.replace(config.finetune, seed=seed),
            config.split_seed,
            config.overlap,
            force,
            parent.info.run_id,
            config.device,
            tag_version=len(seeds) == 1,
        )
        for v in bank
        for seed in seeds
    ]
    start = time.perf_counter()
    got = executor.map(finetune_task_remote, tasks)
    failed = [f"{t.model} (seed {t.config.seed}): {o.error}" for t, o in zip(tasks, got) if isinstance(o, TaskFailure)]
    if failed:
        raise RuntimeError(f"fine-tuning on {ds.root.name} failed: {'; '.join(failed)}")
    measured = [o for o in got if not o.reused]
    if measured:
        _timed(seconds, "finetune", start)
        seconds["finetune_measured_models"] = seconds.get("finetune_measured_models", 0) + len(measured)
    if len(seeds) == 1:
        return got
    combined = []
    for i, v in enumerate(bank):
        mine = got[i * len(seeds) : (i + 1) * len(seeds)]  # this model's seeds, as its tasks measured them
        trained = not all(o.reused for o in mine)
        outcome = finetune_version(
            version_uri(v),
            ds,
            config.finetune,
            split_seed=config.split_seed,
            overlap=config.overlap,
            progress=progress,
            seeds=seeds,
            device=config.device,
            recombine=trained,  # fresh seed runs: combine them even if the version holds this budget's tags
        )
        combined.append(replace(outcome, reused=not trained, seconds=sum(o.seconds for o in mine)))
    return combined


def _run_study(
    config: StudyConfig,
    parent,
    progress: bool,
    force_finetune: bool,
    force_score: bool,
    out_dir: str | Path | None,
    executor: Executor,
) -> StudyResult:
    seconds: dict[str, float] = {}
    outcomes: list[FinetuneOutcome] = []
    wall = time.perf_counter()
    targets = [MSDDataset.load(p) for p in config.targets]
    target_names = [short_name(t) for t in targets]
    mlflow.set_tags({T.RUN_STAGE: "study", T.RUN_BANK: config.bank})
    mlflow.log_params(
        {
            "bank": config.bank,
            "targets": ",".join(target_names),
            "architectures": ",".join(config.architectures),
            "sources": ",".join(
                f"{s.path.name}{'' if s.channels is None else list(s.channels)}" for s in config.sources
            ),
            "methods": config.methods,
            "split_seed": config.split_seed,
            "device": config.device,
            "amp": config.amp,
            "seeds": T.format_seeds(config.seeds or (config.finetune.seed,)),
            "source_holdout": config.source_holdout,
            "curve_every": config.curve_every,
            "early_step": config.early_step,
            "early_sources": ",".join(config.early_sources),
            "references": ",".join(sorted(config.references.values())),
            "bank_folder": str(config.bank_folder or ""),
            "extra_models": ",".join(config.extra_models),
            **T.prefixed_params("pretrain", config.pretrain.to_dict()),
            **T.prefixed_params("finetune", config.finetune.to_dict()),
        }
    )
    # 1. the bank: one pre-training per source per architecture, plus the controls
    start = time.perf_counter()
    by_source: dict[str, list] = {}
    in_channels = {t.n_channels for t in targets}
    if len(in_channels) != 1:
        raise ValueError(f"The targets have different numbers of channels ({sorted(in_channels)}).")
    n_in = in_channels.pop()
    if config.bank_folder is not None:
        shipped = register_bank_folder(config.bank_folder, bank=config.bank)
        for v in shipped:
            by_source.setdefault(v.tags[T.SOURCE_DATASET], []).append(v)
        _logger.info("bank folder %s: %d pre-trained models registered or reused", config.bank_folder, len(shipped))
    sources = config.sources if config.bank_folder is None else []
    units = _Progress("pre-training", len(sources) * len(config.architectures), unit="(source, architecture)")
    for source in sources:
        source_ds = MSDDataset.load(source.path)
        early = config.early_step if short_name(source_ds) in config.early_sources else None
        for arch in config.architectures:
            unit = time.perf_counter()
            versions = pretrain_checkpoints(
                source_ds,
                arch,
                config.pretrain,
                bank=config.bank,
                channels=source.channels,
                progress=progress,
                source_holdout=config.source_holdout,
                curve_every=config.curve_every,
                early_step=early,
                device=config.device,
            )
            units.tick(
                f"{arch} on {short_name(source_ds)} ({', '.join(version_uri(v) for v in versions)})",
                time.perf_counter() - unit,
                reused=time.perf_counter() - unit < 1.0,
            )
            by_source.setdefault(versions[-1].tags[T.SOURCE_DATASET], []).extend(versions)
    for uri in config.extra_models:
        extra = get_version(uri)
        by_source.setdefault(extra.tags[T.SOURCE_DATASET], []).append(extra)
    controls = [
        register_control(arch, n_in, 2, config.pretrain.patch_size, bank=config.bank, seed=config.control_seed)
        for arch in config.architectures
    ]
    pretrained = [v for vs in by_source.values() for v in vs]
    # a twin for every other network of the bank (e.g. an imported model): same identity, random weights
    known = {(c.name, str(c.version)) for c in controls}
    controls += [
        t
        for t in register_twins([*pretrained, *controls], seed=config.control_seed)
        if (t.name, str(t.version)) not in known
    ]
    check_twins(pretrained, controls)
    _timed(seconds, "pretrain", start)
    seeds = tuple(config.seeds) if config.seeds else (config.finetune.seed,)
    n_units = sum(
        len([v for src, vs in by_source.items() if src != name for v in vs]) + len(controls) for name in target_names
    )
    finetune_units = _Progress("fine-tuning", n_units * len(seeds), unit="(model, target, seed)")
    for ds, name in zip(targets, target_names):
        bank = [v for src, vs in sorted(by_source.items()) if src != name for v in vs] + controls
        _logger.info("target %s: bank of %d models (%s)", name, len(bank), ", ".join(version_uri(v) for v in bank))
        # 2. score the bank on the target's training split (features cached per version and target)
        start = time.perf_counter()
        # one nested run per target: score_versions logs the target's params on its parent run,
        # and a run's params cannot change from one target to the next
        with mlflow.start_run(run_name=f"score {name}", nested=True):
            score_versions(
                bank,
                make_target(ds, "train", seed=config.split_seed),
                methods=config.methods,
                force=force_score,
                cache_dir=config.cache_dir,
                device=config.device,
                amp=config.amp,
                executor=executor,
                source=TargetSource(config.location(ds.root), "train", config.split_seed, config.cache_dir),
            )
        _timed(seconds, "score", start)
        # 3. fine-tune every model of the bank the same way (the target's cases loaded once)
        if not executor.in_process:
            outcomes += _finetune_bank_remote(
                bank, ds, config, seeds, force_finetune, progress, parent, executor, seconds
            )
            continue
        split = ds.split(seed=config.split_seed)
        if len(split.test) < 10:
            _logger.warning(
                "target %s has %d held-out cases; the study's Dice needs at least 10 (80/20 split: 50 cases) "
                "for a usable noise floor",
                name,
                len(split.test),
            )
        train = list(ds.iter_cases(split.train, progress=progress))
        test = list(ds.iter_cases(split.test, progress=progress))
        for v in bank:
            start = time.perf_counter()
            outcome = finetune_version(
                version_uri(v),
                ds,
                config.finetune,
                split_seed=config.split_seed,
                overlap=config.overlap,
                cases=(train, test),
                force=force_finetune,
                progress=progress,
                seeds=seeds,
                device=config.device,
            )
            outcomes.append(outcome)
            elapsed = time.perf_counter() - start
            if not outcome.reused:
                _timed(seconds, "finetune", start)
                seconds["finetune_measured_models"] = seconds.get("finetune_measured_models", 0) + 1
            spread = f" ± {outcome.dice_sd:.3f}" if outcome.dice_sd == outcome.dice_sd else ""
            finetune_units.tick(
                f"{outcome.model} on {name}: Dice {outcome.dice.mean:.3f}{spread}",
                elapsed,
                reused=outcome.reused,
                count=len(seeds),
            )
    # 4. the report, from the stored tags of every model involved
    start = time.perf_counter()
    report = report_bank(
        config.bank,
        datasets=target_names,
        out_dir=out_dir,
        n_resamples=config.n_resamples,
        in_domain=config.in_domain,
    )
    _timed(seconds, "report", start)
    seconds["total"] = time.perf_counter() - wall
    result = StudyResult(report, report.scores, seconds, outcomes)
    mlflow.log_metrics({f"seconds.{k}": v for k, v in seconds.items()})
    if seconds.get("finetune"):
        mlflow.log_metric("cost_ratio.score_over_finetune", result.cost_ratio)
    mlflow.log_metrics({T.dice_spread_metric(d): float(s) for d, s in report.discrimination["dice_spread"].items()})
    _logger.info("study %s done in %.0f s (run %s)", config.bank, seconds["total"], parent.info.run_id)
    return result


class _Progress:
    """One log line per unit of work: ``[done/total]``, what it was, its time, and the time left
    estimated from the mean of the units measured so far (reused units take no time and do not count)."""

    def __init__(self, what: str, total: int, unit: str = "unit") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.measured_seconds = 0.0
        self.measured = 0

    def tick(self, label: str, seconds: float, reused: bool = False, count: int = 1) -> None:
        self.done += count
        if not reused:
            self.measured_seconds += seconds
            self.measured += count
        left = self.total - self.done
        eta = (
            f"about {_duration(self.measured_seconds / self.measured * left)} left"
            if self.measured and left
            else ("done" if not left else "time left unknown until a unit is measured")
        )
        _logger.info(
            "%s [%d/%d %s]: %s, %s; %s",
            self.what,
            self.done,
            self.total,
            self.unit,
            label,
            "reused" if reused else f"{seconds:.0f} s",
            eta,
        )


def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def check_twins(pretrained: Sequence, controls: Sequence) -> None:
    """Every network among the ``pretrained`` versions has a random-init control (its twin) in the bank:
    the same network identity (tag ``ccfv.network``: every constructor argument but the output channels,
    and the patch size; :func:`~mlflow_ccfv.scoring.ranking.network_identity`)."""
    twins = {c.tags.get(T.NETWORK) for c in controls}
    for v in pretrained:
        identity = v.tags.get(T.NETWORK)
        if identity is None or identity not in twins:
            raise ValueError(
                f"{version_uri(v)} ({v.tags.get(T.ARCHITECTURE)}, network {identity}) has no random-init twin in "
                "the bank with the same constructor arguments and patch size; every network of a study bank "
                "needs one (pipelines.pretrain.register_twins registers it)."
            )


def demo_config(
    data_root: str | Path,
    target: str = "Task10",
    n_cases: int = 50,
    shape: Sequence[int] = (64, 64, 48),
    sources: Sequence[str] | None = None,
    pretrain_steps: int = 150,
    finetune_steps: int = 150,
    bank: str = DEFAULT_BANK,
    architectures: Sequence[str] | None = None,
    methods: str = "all",
    patch_size: Sequence[int] = (32, 32, 32),
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    from_scratch: bool = False,
    bank_folder: str | Path | None = None,
) -> StudyConfig:
    """The demo: one synthetic target (``n_cases`` generated with ``seed``; the 80/20 split holds out
    10 of 50), a bank, one random-init control per architecture; every model fine-tuned with each of
    ``seeds`` for ``finetune_steps`` (the study's budget).

    The bank: by default the pre-trained models of ``bank_folder`` (the shipped bank: UNets the
    development study pre-trained for 1000 steps on the same synthetic family, see
    :data:`~mlflow_ccfv.pipelines.shipped_bank.SHIPPED_BANK`), verified and registered in seconds;
    ``sources`` are then only generated beside the target (default ``Task07``). With ``from_scratch``,
    ``len(sources) x len(architectures)`` models are pre-trained here for ``pretrain_steps`` (default
    sources Task03, Task07, Task06; architectures UNet, UNETR).

    The demo's models go to the bank ``score`` uses by default (``default``) and its tasks are generated
    where ``score`` looks by default (``data``), so the headline ``mlflow run . -e score -P
    dataset=Task07`` works right after it."""
    from mlflow_ccfv.networks.bank_files import read_manifest

    folder = None if from_scratch else Path(bank_folder) if bank_folder else SHIPPED_BANK
    if folder is not None:
        manifest = read_manifest(folder)
        arch = tuple(architectures) if architectures else tuple(manifest.architectures)
        extra = tuple(sources) if sources is not None else DEMO_EXTRA_TASKS
        shipped_sources = {m.source_dataset for m in manifest.models}
        if get_task(target).name.split("_")[0] in shipped_sources:
            _logger.warning(
                "the demo's target %s is a source of the bank in %s; those models are left out of its bank",
                target,
                folder,
            )
    else:
        arch = tuple(architectures) if architectures else ARCHITECTURES
        extra = tuple(sources) if sources is not None else DEMO_SOURCES
    names = [target] + [s for s in extra if get_task(s).name != get_task(target).name]
    folders = ensure_synthetic(data_root, names, n_cases, shape, seed=seed, progress=progress)
    patch = tuple(int(p) for p in patch_size)
    return StudyConfig(
        targets=[folders[0]],
        sources=[] if folder is not None else [Source(f) for f in folders[1:]],
        bank=bank,
        methods=methods,
        architectures=arch,
        pretrain=TrainConfig(steps=pretrain_steps, patch_size=patch, learning_rate=3e-3, seed=1),
        finetune=TrainConfig(steps=finetune_steps, patch_size=patch, learning_rate=3e-3, seed=0),
        seeds=tuple(int(s) for s in seeds),
        device=device,
        bank_folder=folder,
    )


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


def study_config(
    data_root: str | Path,
    n_cases: int = 50,
    shape: Sequence[int] = (64, 64, 48),
    brats: str | Path | None = None,
    pretrain_steps: int = 2000,
    finetune_steps: int = 200,
    architectures: Sequence[str] = ARCHITECTURES,
    bank: str = "study",
    targets: Sequence[str] | None = None,
    progress: bool = True,
    sources: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    synthetic_seed: int = 0,
    curve_every: int = 250,
    early_step: int | None = 250,
    early_sources: Sequence[str] = ("Task03", "Task09"),
    patch_size: Sequence[int] = (32, 32, 32),
    device: str | None = None,
) -> StudyConfig:
    """Leave-one-task-out over the synthetic family (generated under ``data_root`` with
    ``synthetic_seed``) and/or real MSD folders.

    ``targets``/``sources``: synthetic task names (``Task03``), MSD folder paths or logged datasets
    (``runs:/<run_id>/<folder>``, downloaded once into ``$MLFLOW_CCFV_CACHE``/``.ccfv-cache`` and
    verified; the config's ``references`` keeps them for Ray workers); a source may keep
    some channels (``/data/Task01_BrainTumour:0``). Default targets: the five synthetic tasks; default
    sources: the synthetic family when a target is synthetic, plus every real target. ``brats``: the
    BRATS folder, an extra source used with its FLAIR channel only (the targets are 1-channel CT; see
    docs/study.md). ``seeds``: fine-tuning seeds per (model, target). Pre-training: each source's 80%
    split, its held-out Dice every ``curve_every`` steps, and for ``early_sources`` the checkpoint at
    ``early_step`` registered as a second version.
    """
    references: dict[str, str] = {}
    target_synth, target_real = _resolve_entries(list(targets) if targets else list(SYNTHETIC_TASKS), references)
    if sources:
        source_synth, source_real = _resolve_entries(list(sources), references)
    else:
        source_synth = list(SYNTHETIC_TASKS) if target_synth else []
        source_real = [(path, None) for path, _ in target_real]
    names = list(dict.fromkeys(target_synth + source_synth))
    folders = dict(
        zip(names, ensure_synthetic(data_root, names, n_cases, shape, seed=synthetic_seed, progress=progress))
    )
    source_list = [Source(folders[n]) for n in source_synth] + [Source(p, c) for p, c in source_real]
    if brats:
        source_list.append(Source(Path(brats), channels=(0,)))
    patch = tuple(int(p) for p in patch_size)
    return StudyConfig(
        targets=[folders[n] for n in target_synth] + [p for p, _ in target_real],
        sources=source_list,
        architectures=tuple(architectures),
        bank=bank,
        pretrain=TrainConfig(steps=pretrain_steps, patch_size=patch, learning_rate=3e-3, seed=1),
        finetune=TrainConfig(steps=finetune_steps, patch_size=patch, learning_rate=3e-3, seed=0),
        seeds=tuple(int(s) for s in seeds),
        source_holdout=True,
        curve_every=curve_every,
        early_step=early_step if early_sources else None,
        early_sources=tuple(_short_source_name(t) for t in early_sources),
        device=device,
        references=references,
    )


def demo_ranking(result: StudyResult, dataset: str) -> str:
    """What the demo ranks ``dataset``'s bank by: the default of ``score`` (``auto``: ``ccfv_twin`` when
    every model has the random-init control of its network in the bank, else ``ccfv``)."""
    sub = result.frame[(result.frame["dataset"] == dataset) & (result.frame["method"] == "ccfv")]
    return choose_ranking(frame_members(sub))[0]


def demo_table(result: StudyResult, dataset: str) -> pd.DataFrame:
    """The ranked table the demo prints: models by the default ranking (:func:`demo_ranking`) with
    CC-FV's, the baselines' scores and the measured Dice."""
    by = demo_ranking(result, dataset)
    methods = ("ccfv_twin", "ccfv", "logme", "leep", "gbc", "transrate") if by == "ccfv_twin" else DEMO_METHODS[:5]
    return ranked_table(result.frame, dataset, by=by, methods=methods)


def run_cli_workflow(
    make_config, experiment: str, out_dir: str | Path | None = None, executor: Executor | None = None
) -> StudyResult:
    """Choose the experiment (unless ``mlflow run`` or ``MLFLOW_EXPERIMENT_*`` did), build the config, run."""

    if not any(os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")):
        mlflow.set_experiment(experiment)
    return run_transfer_study(make_config(), out_dir=out_dir, executor=executor)


def print_summary(result: StudyResult, ui_hint: bool = False) -> str:
    """The ranked table per target, the correlations, timings and (demo) how to sort models in the UI."""
    lines = []
    for dataset in sorted(result.frame["dataset"].unique()):
        by = (
            "ccfv_twin (CC-FV minus its random-init twin's: the default)"
            if demo_ranking(result, dataset) == "ccfv_twin"
            else "CC-FV"
        )
        lines.append(f"\n## {dataset}: the bank ranked by {by} (dice = measured after fine-tuning)\n")
        lines.append(to_markdown(demo_table(result, dataset).set_index("rank")))
    corr = result.report.correlations
    main = corr[corr["method"].isin(DEFAULT_METHODS)]
    lines.append("\n## Correlation with the measured Dice (weighted Kendall's tau, Pearson, top-1 regret)\n")
    lines.append(
        to_markdown(
            main[["dataset", "method", "weighted_tau", "pearson", "top1_regret", "n_models"]].set_index(
                ["dataset", "method"]
            )
        )
    )
    s = result.seconds
    lines.append(
        f"\nTime: {s.get('total', 0):.0f} s in all (pre-training {s.get('pretrain', 0):.0f} s, scoring "
        f"{s.get('score', 0):.0f} s, fine-tuning {s.get('finetune', 0):.0f} s, report {s.get('report', 0):.0f} s)."
    )
    if s.get("finetune"):
        lines.append(
            f"Scoring the bank took {result.cost_ratio:.3f} x the time of fine-tuning it "
            f"(1/{1 / result.cost_ratio:.1f}) at this fine-tuning budget."
        )
    if ui_hint:
        uri = mlflow.get_tracking_uri()
        last = mlflow.last_active_run()  # the study/demo run itself
        active = last.info.experiment_id if last is not None else "<experiment id>"
        lines.append(
            "\nOpen the MLflow UI to sort the models:\n"
            f"  mlflow ui --backend-store-uri {uri} --port 5000\n"
            "  then, per target, the experiment's Runs tab with the ranking on screen (one run per model\n"
            "  version, sorted by the ranking score, ccfv and finetune_dice shown):"
        )
        for dataset in sorted(result.frame["dataset"].unique()):
            lines.append(f"  {ranking_view_url(active, dataset, base=DEFAULT_UI)}")
        lines.append(
            "  Registry: each version's tags transferability.<method>.<dataset>, finetune.dice.<dataset>,\n"
            "  and the alias best-<dataset> on the top-ranked model."
        )
    return "\n".join(lines)


def evidence_summary(
    result: StudyResult, methods: Sequence[str] = (*DEFAULT_METHODS, "ccfv_twin", "rank_aggregate")
) -> str:
    """Per target and for the average: the noise ceiling beside every method's weighted tau, top-1
    regret and selection value with their 95% intervals (the ``study`` command prints it)."""
    from mlflow_ccfv.study.evidence import evidence_table
    from mlflow_ccfv.study.report import METHOD_LABELS

    ev = result.report.evidence
    if ev is None:
        return ""
    table = evidence_table(ev, methods, METHOD_LABELS)
    columns = [
        "dataset",
        "method",
        "noise_ceiling",
        "weighted_tau",
        "top1_regret",
        "top1_dice",
        "random_dice",
        "best_dice",
    ]
    return (
        "\n## The evidence (bootstrap 95% intervals; the noise ceiling bounds what any estimator can reach)\n\n"
        + to_markdown(table[columns])
    )


#: The methods the demo's evidence table shows (the ranked table's, plus the pre-registered variants).
DEMO_METHODS = ("ccfv", "logme", "leep", "gbc", "transrate", "ccfv_twin", "rank_aggregate")


def demo_evidence(result: StudyResult, methods: Sequence[str] = DEMO_METHODS) -> str:
    """Per target: each method's weighted tau, Pearson and top-1 regret and its selection value (the
    Dice of its top-1 pick, the mean of its top 3) with bootstrap 95% intervals, beside a random pick,
    the best model and the noise ceiling; then whether pre-training mattered (the best pre-trained
    model against the best random-init control, :mod:`mlflow_ccfv.study.pretraining_margin`)."""
    from mlflow_ccfv.study.evidence import evidence_table
    from mlflow_ccfv.study.pretraining_margin import pretraining_margin
    from mlflow_ccfv.study.report import METHOD_LABELS

    ev = result.report.evidence
    lines = []
    for dataset in sorted(result.frame["dataset"].unique()):
        if ev is not None:
            table = evidence_table(ev, methods, METHOD_LABELS)
            table = table[table["dataset"] == dataset]
            if not table.empty:
                first = table.iloc[0]
                lines.append(
                    f"\n## {dataset}: does the ranking pick better models? (bootstrap 95% intervals over held-out "
                    "cases and fine-tuning seeds)\n"
                )
                lines.append(
                    "top1_dice / top3_dice: the selection value, the fine-tune Dice of the method's top pick / mean "
                    "of its top 3;\n"
                    f"against a random pick {first['random_dice']}, the best model {first['best_dice']}, and the "
                    f"noise ceiling (tau between fine-tuning replicates) {first['noise_ceiling']}.\n"
                )
                columns = ["method", "weighted_tau", "pearson", "top1_regret", "top1_dice", "top3_dice"]
                lines.append(to_markdown(table[columns].set_index("method")))
        try:
            lines.append(
                "\nDid pre-training matter? " + pretraining_margin(result.frame, dataset, CONTROL_SOURCE).sentence()
            )
        except ValueError as exc:
            lines.append(f"\nDid pre-training matter? Not measured: {exc}")
    return "\n".join(lines)
