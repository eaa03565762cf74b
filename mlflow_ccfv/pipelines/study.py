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
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow

from mlflow_ccfv.data import MSDDataset, make_target, short_name
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.controls import register_control, register_twins
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor, TaskFailure
from mlflow_ccfv.pipelines.finetune import FinetuneOutcome, finetune_version
from mlflow_ccfv.pipelines.pretrain import CONTROL_SOURCE, PretrainRequest, pretrain_checkpoints
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
from mlflow_ccfv.tracking.runs import command_run
from mlflow_ccfv.tracking.search import get_version, version_uri
from mlflow_ccfv.training import TrainConfig

__all__ = [
    "ARCHITECTURES",
    "CONTROL_SOURCE",
    "DEMO_EXTRA_TASKS",
    "DEMO_METHODS",
    "DEMO_SOURCES",
    "FinetuneTask",
    "Source",
    "StudyConfig",
    "StudyResult",
    "check_twins",
    "demo_config",
    "demo_evidence",
    "demo_ranking",
    "demo_table",
    "ensure_synthetic",
    "evidence_summary",
    "finetune_task_remote",
    "print_summary",
    "run_cli_workflow",
    "run_transfer_study",
    "study_config",
]

_logger = logging.getLogger(__name__)


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
            versions = pretrain_checkpoints(request, progress)
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
                ScoreConfig(
                    config.methods, force=force_score, cache_dir=config.cache_dir, device=config.device, amp=config.amp
                ),
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
        settings=ReportSettings(n_resamples=config.n_resamples, in_domain=config.in_domain),
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
                "needs one (pipelines.controls.register_twins registers it)."
            )


def run_cli_workflow(make_config, out_dir: str | Path | None = None, executor: Executor | None = None) -> StudyResult:
    """Build the config (``make_config()``), run it in the active experiment (the command chose it)."""
    return run_transfer_study(make_config(), out_dir=out_dir, executor=executor)
