"""The paper's experiment as one workflow: pre-train a bank, score it, fine-tune it, report.

:func:`run_transfer_study` is the whole loop, leave-one-task-out (Sec. 3.1): every source is
pre-trained once per architecture; for each target the bank is every model *not* trained on it plus
the random-initialisation controls; the bank is scored on the target's training split (``score``),
fine-tuned on it with one budget and seed for every model (``finetune``), and the correlations are
computed from the stored tags (``report``). It times scoring against fine-tuning (the cost ratio).
Its stages: :func:`pretrain_bank`, then per target :func:`score_target` and :func:`finetune_target`
(one task of the study's executor per (model, seed), whether serial or Ray, the seeds then combined
per model in this process), then the report.

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

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import mlflow

from mlflow_ccfv.data import MSDDataset, make_target, short_name
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.controls import register_control, register_twins
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor, TaskFailure
from mlflow_ccfv.pipelines.finetune import FinetuneOutcome, SeedOutcome, combine_seeds, finetune_seed, tagged_outcome
from mlflow_ccfv.pipelines.finetune_setup import Cases, FinetuneRequest, load_cases, load_setup
from mlflow_ccfv.pipelines.pretrain import PretrainRequest, load_dataset, pretrain_checkpoints
from mlflow_ccfv.pipelines.report import ReportSettings, report_bank
from mlflow_ccfv.pipelines.score import ScoreConfig, TargetSource, score_versions
from mlflow_ccfv.pipelines.shipped_bank import register_bank_folder
from mlflow_ccfv.pipelines.study_config import (
    ARCHITECTURES,
    DEMO_EXTRA_TASKS,
    DEMO_SOURCES,
    Source,
    StudyConfig,
    StudyResult,
    demo_config,
    ensure_synthetic,
    study_config,
)
from mlflow_ccfv.pipelines.study_summary import (
    DEMO_METHODS,
    demo_evidence,
    demo_ranking,
    demo_table,
    evidence_summary,
    print_summary,
)
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.runs import command_run, released_on_interrupt
from mlflow_ccfv.tracking.search import get_version, version_uri

__all__ = [
    "ARCHITECTURES",
    "DEMO_EXTRA_TASKS",
    "DEMO_METHODS",
    "DEMO_SOURCES",
    "FinetuneTask",
    "Source",
    "StudyBank",
    "StudyConfig",
    "StudyResult",
    "StudyRun",
    "check_twins",
    "demo_config",
    "demo_evidence",
    "demo_ranking",
    "demo_table",
    "ensure_synthetic",
    "evidence_summary",
    "finetune_target",
    "finetune_task",
    "pretrain_bank",
    "print_summary",
    "run_cli_workflow",
    "run_transfer_study",
    "score_target",
    "study_config",
]

_logger = logging.getLogger(__name__)


@dataclass
class StudyRun:
    """A study in progress: its config, its run, where its work runs, what it must redo, the seconds
    spent per stage."""

    config: StudyConfig
    run_id: str
    executor: Executor
    progress: bool = True
    force_finetune: bool = False
    force_score: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, key: str, start: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class StudyBank:
    """A study's bank: the pre-trained versions by source dataset, and the random-init controls."""

    by_source: dict[str, list]
    controls: list

    def for_target(self, name: str) -> list:
        """Leave-one-task-out: every version not pre-trained on ``name``, then the controls."""
        return [v for src, vs in sorted(self.by_source.items()) if src != name for v in vs] + self.controls


@dataclass(frozen=True)
class FinetuneTask:
    """One seed of one model's fine-tune in a study (a task of the study's executor)."""

    request: FinetuneRequest
    seed: int


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
        study = StudyRun(config, parent.info.run_id, executor, progress, force_finetune, force_score)
        return _run_study(study, out_dir)


def _run_study(study: StudyRun, out_dir: str | Path | None) -> StudyResult:
    """The stages: the bank, then per target its scores and its fine-tunes, then the report."""
    wall = time.perf_counter()
    config = study.config
    targets = [MSDDataset.load(p) for p in config.targets]
    names = [short_name(t) for t in targets]
    _log_study_params(config, names)
    in_channels = {t.n_channels for t in targets}
    if len(in_channels) != 1:
        raise ValueError(f"The targets have different numbers of channels ({sorted(in_channels)}).")
    bank = pretrain_bank(study, in_channels.pop())
    n_units = sum(len(bank.for_target(name)) for name in names) * len(_seeds(config))
    units = _Progress("fine-tuning", n_units, unit="(model, target, seed)")
    outcomes: list[FinetuneOutcome] = []
    for ds, name in zip(targets, names):
        versions = bank.for_target(name)
        _logger.info("target %s: bank of %d models (%s)", name, len(versions), ", ".join(map(version_uri, versions)))
        score_target(study, ds, versions)
        outcomes += finetune_target(study, ds, versions, units)
    return _report(study, names, outcomes, out_dir, wall)


def _seeds(config: StudyConfig) -> tuple[int, ...]:
    """The fine-tuning seeds of every (model, target)."""
    return tuple(config.seeds) if config.seeds else (config.finetune.seed,)


def _log_study_params(config: StudyConfig, target_names: Sequence[str]) -> None:
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
            "seeds": T.format_seeds(_seeds(config)),
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


def pretrain_bank(study: StudyRun, n_in: int) -> StudyBank:
    """The bank: the models of the bank folder, or one pre-training per source per architecture; the
    extra models; a random-init control per architecture (``n_in`` input channels) and a twin for every
    other network of the bank (e.g. an imported model: same identity, random weights)."""
    config = study.config
    start = time.perf_counter()
    by_source: dict[str, list] = {}
    if config.bank_folder is not None:
        shipped = register_bank_folder(config.bank_folder, bank=config.bank)
        for v in shipped:
            by_source.setdefault(v.tags[T.SOURCE_DATASET], []).append(v)
        _logger.info("bank folder %s: %d pre-trained models registered or reused", config.bank_folder, len(shipped))
    else:
        _pretrain_sources(study, by_source)
    for uri in config.extra_models:
        extra = get_version(uri)
        by_source.setdefault(extra.tags[T.SOURCE_DATASET], []).append(extra)
    controls = [
        register_control(arch, n_in, 2, config.pretrain.patch_size, bank=config.bank, seed=config.control_seed)
        for arch in config.architectures
    ]
    pretrained = [v for vs in by_source.values() for v in vs]
    known = {(c.name, str(c.version)) for c in controls}
    controls += [
        t
        for t in register_twins([*pretrained, *controls], seed=config.control_seed)
        if (t.name, str(t.version)) not in known
    ]
    check_twins(pretrained, controls)
    study.timed("pretrain", start)
    return StudyBank(by_source, controls)


def _pretrain_sources(study: StudyRun, by_source: dict[str, list]) -> None:
    """One pre-training per source per architecture (reused when registered with this budget), added to
    ``by_source``."""
    config = study.config
    units = _Progress("pre-training", len(config.sources) * len(config.architectures), unit="(source, architecture)")
    for source in config.sources:
        source_ds = MSDDataset.load(source.path)
        early = config.early_step if short_name(source_ds) in config.early_sources else None
        for arch in config.architectures:
            unit = time.perf_counter()
            request = PretrainRequest(
                source_ds,
                arch,
                config.pretrain,
                bank=config.bank,
                channels=source.channels,
                source_holdout=config.source_holdout,
                curve_every=config.curve_every,
                early_step=early,
                device=config.device,
            )
            versions = pretrain_checkpoints(request, study.progress)
            units.tick(
                f"{arch} on {short_name(source_ds)} ({', '.join(version_uri(v) for v in versions)})",
                time.perf_counter() - unit,
                reused=time.perf_counter() - unit < 1.0,
            )
            by_source.setdefault(versions[-1].tags[T.SOURCE_DATASET], []).extend(versions)


def score_target(study: StudyRun, ds: MSDDataset, bank: Sequence) -> None:
    """Score the bank on the target's training split (features cached per version and target), in one
    nested run per target: ``score_versions`` logs the target's params on its parent run, and a run's
    params cannot change from one target to the next."""
    config = study.config
    start = time.perf_counter()
    with mlflow.start_run(run_name=f"score {short_name(ds)}", nested=True), released_on_interrupt():
        score_versions(
            list(bank),
            make_target(ds, "train", seed=config.split_seed),
            ScoreConfig(
                config.methods,
                force=study.force_score,
                cache_dir=config.cache_dir,
                device=config.device,
                amp=config.amp,
            ),
            executor=study.executor,
            source=TargetSource(config.location(ds.root), "train", config.split_seed, config.cache_dir),
        )
    study.timed("score", start)


def finetune_target(study: StudyRun, ds: MSDDataset, bank: Sequence, units: _Progress) -> list[FinetuneOutcome]:
    """Fine-tune every model of the bank the same way: a model whose tags hold this budget's Dice is
    reused; the others are one executor task per (model, seed) (each logging its own run), whose seeds
    are then combined in this process into the model's mean, sd and tags."""
    config, name = study.config, short_name(ds)
    _warn_small_test_split(ds, config.split_seed)
    requests = [
        FinetuneRequest(
            version_uri(v),
            ds,
            config.finetune,
            split_seed=config.split_seed,
            overlap=config.overlap,
            force=study.force_finetune,
            progress=study.progress and study.executor.in_process,
            device=config.device,
            seeds=_seeds(config),
            parent_run_id=study.run_id,
        )
        for v in bank
    ]
    outcomes = [tagged_outcome(r) for r in requests]
    for o in outcomes:
        if o is not None:
            units.tick(f"{o.model} on {name}: Dice {o.dice.mean:.3f}", 0.0, reused=True, count=len(_seeds(config)))
    # a task reads the target from where a worker finds it (its logged reference, else its folder)
    where = config.location(ds.root)
    tasks = [
        FinetuneTask(replace(r, dataset=where), s) for r, o in zip(requests, outcomes) if o is None for s in r.seeds
    ]

    def done(i: int, got: SeedOutcome | TaskFailure) -> None:
        if not isinstance(got, TaskFailure):
            label = f"{tasks[i].request.model} on {name}, seed {got.seed}: Dice {got.dice:.3f}"
            units.tick(label, got.seconds, reused=got.reused)

    start = time.perf_counter()
    seeds = study.executor.map(finetune_task, tasks, on_done=done)
    failed = [
        f"{t.request.model} (seed {t.seed}): {o.error}" for t, o in zip(tasks, seeds) if isinstance(o, TaskFailure)
    ]
    if failed:
        raise RuntimeError(f"fine-tuning on {ds.root.name} failed: {'; '.join(failed)}")
    by_model: dict[str, list[SeedOutcome]] = {}
    for task, got in zip(tasks, seeds):
        by_model.setdefault(str(task.request.model), []).append(got)
    measured = [m for m, got in by_model.items() if not all(s.reused for s in got)]
    if measured:
        study.timed("finetune", start)
        study.seconds["finetune_measured_models"] = study.seconds.get("finetune_measured_models", 0) + len(measured)
    _target_cases.cache_clear()  # this process is done with the target's cases
    return [
        o if o is not None else combine_seeds(load_setup(r), by_model[str(r.model)]) for r, o in zip(requests, outcomes)
    ]


def _warn_small_test_split(ds: MSDDataset, split_seed: int) -> None:
    held_out = len(ds.split(seed=split_seed).test)
    if held_out < 10:
        _logger.warning(
            "target %s has %d held-out cases; the study's Dice needs at least 10 (80/20 split: 50 cases) "
            "for a usable noise floor",
            short_name(ds),
            held_out,
        )


def finetune_task(task: FinetuneTask) -> SeedOutcome:
    """One seed of a study's fine-tune, in this process or as a Ray task: its run nested under the
    study's run. The target's cases are loaded once per process and target content. A retried task (its
    worker died) fine-tunes again."""
    setup = load_setup(task.request)
    shared = _target_cases(str(task.request.dataset), task.request.split_seed, setup.target.digest)
    return finetune_seed(setup, task.seed, load_cases(setup, shared))


@lru_cache(maxsize=1)
def _target_cases(dataset: str, split_seed: int, digest: str) -> Cases:
    """The ``(train, test)`` cases of a target (``digest``: its content, part of the cache key), kept for
    the next task on the same target."""
    ds = load_dataset(dataset, None)
    split = ds.split(seed=split_seed)
    return list(ds.iter_cases(split.train, progress=False)), list(ds.iter_cases(split.test, progress=False))


def _report(
    study: StudyRun, names: Sequence[str], outcomes: list[FinetuneOutcome], out_dir: str | Path | None, wall: float
) -> StudyResult:
    """The report, from the stored tags of every model involved, and the study's timings and spreads."""
    config, seconds = study.config, study.seconds
    start = time.perf_counter()
    report = report_bank(
        config.bank,
        datasets=list(names),
        out_dir=out_dir,
        settings=ReportSettings(n_resamples=config.n_resamples, in_domain=config.in_domain),
    )
    study.timed("report", start)
    seconds["total"] = time.perf_counter() - wall
    result = StudyResult(report, report.scores, seconds, outcomes)
    mlflow.log_metrics({f"seconds.{k}": v for k, v in seconds.items()})
    if seconds.get("finetune"):
        mlflow.log_metric("cost_ratio.score_over_finetune", result.cost_ratio)
    mlflow.log_metrics({T.dice_spread_metric(d): float(s) for d, s in report.discrimination["dice_spread"].items()})
    _logger.info("study %s done in %.0f s (run %s)", config.bank, seconds["total"], study.run_id)
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
                "needs one (pipelines.controls.register_twins registers it)."
            )


def run_cli_workflow(make_config, out_dir: str | Path | None = None, executor: Executor | None = None) -> StudyResult:
    """Build the config (``make_config()``), run it in the active experiment (the command chose it)."""
    return run_transfer_study(make_config(), out_dir=out_dir, executor=executor)
