"""The race of :func:`~mlflow_ccfv.pipelines.select.select_models`: its units, and how they are recorded.

A unit (:class:`SelectTask`) fine-tunes one shortlisted candidate for one round's steps and measures its
validation Dice (:func:`race_unit`; on Ray, :func:`race_unit_remote`). The driver runs a round's units
not yet recorded (:func:`run_race`), logs each unit's ``val_dice`` at step = round on the candidate's
run as it finishes, so that a rerun resumes (:func:`candidate_runs`, :func:`recorded_dice`), and at the
end writes the race's artifacts, tags and the ``selected-<dataset>`` alias (:func:`record_outcome`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run

from mlflow_ccfv.data import MSDDataset, PreprocessedCase
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.pipelines.executors import Executor, TaskFailure
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import load_msd_dataset
from mlflow_ccfv.tracking.load import LoadedModel, load_version
from mlflow_ccfv.tracking.ranking_writes import delete_version_tag, move_alias, set_version_tag
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.runs import process_identity
from mlflow_ccfv.tracking.search import bank_versions
from mlflow_ccfv.training import HalvingRound, TrainConfig, evaluate_dice, finetune, keep_best

__all__ = [
    "Race",
    "RaceResult",
    "SelectOutcome",
    "SelectTask",
    "candidate_runs",
    "load_cases",
    "race_unit",
    "race_unit_remote",
    "record_outcome",
    "recorded_dice",
    "run_race",
]

_logger = logging.getLogger(__name__)


@dataclass
class Race:
    """A race on ``dataset``: the ``shortlist`` (best-ranked first), its ``schedule``, each candidate's
    ``runs`` (label -> run id) and validation ``dice`` recorded so far (label -> round -> Dice, filled as
    units finish), and ``unit``: the :class:`SelectTask` fields every unit shares (the cases, the device ...)."""

    dataset: str
    shortlist: list[str]
    schedule: list[HalvingRound]
    runs: dict[str, str]
    dice: dict[str, dict[int, float]]
    unit: dict[str, Any]

    def pending(self, rnd: HalvingRound, in_race: Sequence[str]) -> list[str]:
        """The candidates of ``in_race`` whose Dice in ``rnd`` is not recorded yet."""
        return [label for label in in_race if rnd.round not in self.dice[label]]


@dataclass(frozen=True)
class SelectTask:
    """One unit of the race: fine-tune ``item`` (``models:/<name>/<version>``) for ``config.steps`` steps
    on the ``fit`` cases of ``dataset`` (a folder path or logged dataset) and measure Dice on ``validation``."""

    item: str
    round: int
    config: TrainConfig
    dataset: str
    fit: tuple[str, ...]
    validation: tuple[str, ...]
    num_classes: int
    overlap: float = 0.5
    device: str | None = None
    cache_dir: str | None = None
    allow_pickle: bool | None = None
    progress: bool = False


@dataclass(frozen=True)
class RaceResult:
    """A unit's outcome: the candidate's ``label``, the ``round``, its validation ``dice``, ``seconds`` spent."""

    label: str
    round: int
    dice: float
    seconds: float


@dataclass
class SelectOutcome:
    """What :func:`~mlflow_ccfv.pipelines.select.select_models` decided: ``shortlist`` (labels,
    best-ranked first), ``schedule``, ``dice`` (label -> round -> validation Dice), the ``winner`` and its
    Dice in the last round, ``steps`` of the schedule, ``trained_steps`` spent by this call (0 when
    everything was recorded before), the ``select`` run's id and the validation case ids."""

    dataset: str
    shortlist: list[str]
    schedule: list[HalvingRound]
    dice: dict[str, dict[int, float]]
    winner: str
    winner_dice: float
    steps: int
    trained_steps: int
    run_id: str
    validation: list[str]
    resumed: bool = False

    def round_reached(self, label: str) -> int:
        """The last round ``label`` ran (0 first)."""
        return max(self.dice[label])


def load_cases(ds: MSDDataset, ids: Sequence[str], progress: bool) -> list[PreprocessedCase]:
    """The pre-processed cases ``ids`` of ``ds``, in order."""
    return list(ds.iter_cases(ids, progress=progress))


def race_unit(task: SelectTask, cases: tuple[list, list] | None = None) -> RaceResult:
    """Fine-tune one candidate for one round (all pre-trained weights but the last convolution, nothing
    frozen: :func:`~mlflow_ccfv.training.finetune`) and measure its Dice on the validation cases
    (:func:`~mlflow_ccfv.training.evaluate_dice`). ``cases``: pre-loaded ``(fit, validation)`` cases;
    None loads them from ``task.dataset`` (once per process). A version with its own recorded intensity
    normalisation (an imported nnU-Net or bundle model) gets the cases normalised that way instead."""
    start = time.perf_counter()
    loaded = load_version(task.item, allow_pickle=task.allow_pickle)
    if loaded.spec is None:
        raise RegistryError(
            f"{loaded.label} is an mlflow.pytorch model without a network specification; fine-tuning re-creates "
            "the last convolution from the spec, so register it with register_network (a MONAI spec + weights)."
        )
    if loaded.normalization is not None:  # an imported model races on what it was trained on, as finetune does
        fit, validation = _cases_with_own_normalization(task, loaded)
    elif cases is not None:
        fit, validation = cases
    else:
        fit, validation = _worker_cases(task.dataset, task.cache_dir, task.fit, task.validation)
    result, _ = finetune(
        loaded.spec,
        loaded.module.state_dict(),
        fit,
        task.num_classes,
        task.config,
        progress=task.progress,
        desc=f"select {loaded.label} round {task.round}",
        device=task.device,
    )
    dice = evaluate_dice(
        result.model,
        validation,
        task.num_classes,
        task.config.patch_size,
        overlap=task.overlap,
        progress=False,
        device=task.device,
    )
    return RaceResult(loaded.label, task.round, float(dice.mean), time.perf_counter() - start)


@lru_cache(maxsize=2)
def _worker_cases(dataset: str, cache_dir: str | None, fit: tuple[str, ...], validation: tuple[str, ...]):
    """A Ray worker's fit and validation cases, loaded once per process (Ray reuses workers)."""
    ds = load_msd_dataset(dataset, cache_dir=cache_dir)
    return load_cases(ds, fit, False), load_cases(ds, validation, False)


def _cases_with_own_normalization(task: SelectTask, loaded: LoadedModel) -> tuple[list, list]:
    """The unit's fit and validation cases normalised as ``loaded``'s own recorded normalisation says
    (an imported nnU-Net or bundle model), not as the target's statistics; loaded for the unit."""
    _logger.info("%s: loading %s with its own normalisation (%s)", loaded.label, task.dataset, loaded.normalization)
    ds = load_msd_dataset(task.dataset, cache_dir=task.cache_dir)
    fit, validation = (
        list(ds.iter_cases(ids, progress=False, normalization=loaded.normalization))
        for ids in (task.fit, task.validation)
    )
    return fit, validation


def race_unit_remote(task: SelectTask) -> RaceResult:
    """:func:`race_unit` as a Ray task: the cases read from ``task.dataset`` in the worker."""
    return race_unit(task)


def candidate_runs(client: mlflow.MlflowClient, parent: Run, shortlist: list[str], dataset: str) -> dict[str, str]:
    """One run per shortlisted candidate nested in ``parent`` (found by its ``ccfv.model`` tag, reopened
    when a killed process left it; else created), tagged with this process."""
    found = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{T.RUN_STAGE}` = 'select'",
        max_results=1000,
    )
    existing = {r.data.tags.get(T.RUN_MODEL): r for r in found}
    runs: dict[str, str] = {}
    for rank, label in enumerate(shortlist, 1):
        run = existing.get(label)
        if run is None:
            run = client.create_run(
                parent.info.experiment_id,
                run_name=f"select {label} on {dataset}",
                tags={
                    "mlflow.parentRunId": parent.info.run_id,
                    T.RUN_STAGE: "select",
                    T.RUN_MODEL: label,
                    T.RUN_DATASET: dataset,
                    T.PROCESS: process_identity(),
                },
            )
            client.log_param(run.info.run_id, "model_uri", f"models:/{label}")
            client.log_param(run.info.run_id, "rank", rank)
        elif run.info.status != "RUNNING":
            retrying(client.update_run, run.info.run_id, "RUNNING", what="reopen a candidate's run")
            client.set_tag(run.info.run_id, T.PROCESS, process_identity())
        runs[label] = run.info.run_id
    return runs


def recorded_dice(client: mlflow.MlflowClient, run_id: str) -> dict[int, float]:
    """round -> validation Dice of a candidate's finished rounds (its ``val_dice`` history)."""
    return {int(m.step): float(m.value) for m in client.get_metric_history(run_id, T.VAL_DICE)}


def run_race(
    race: Race, executor: Executor, config: TrainConfig, cases: Callable[[], tuple[list, list]] | None
) -> tuple[str, int]:
    """Run the race's rounds (each round's units with ``config``, its steps replaced by the round's), each
    keeping the better half by validation Dice; returns the winner and the steps trained now. ``cases``:
    loads the ``(fit, validation)`` cases for units run in this process, once, when a unit needs them."""
    in_race, trained, loaded = list(race.shortlist), 0, None
    for rnd in race.schedule:
        if executor.in_process and loaded is None and cases is not None and race.pending(rnd, in_race):
            loaded = cases()
        trained += _run_round(race, rnd, in_race, executor, loaded, dataclasses.replace(config, steps=rnd.steps))
        kept = keep_best({label: race.dice[label][rnd.round] for label in in_race}, rnd.n_kept, race.shortlist)
        _logger.info(
            "%s round %d (%d steps): %s; kept %s",
            race.dataset,
            rnd.round,
            rnd.steps,
            ", ".join(f"{label} {race.dice[label][rnd.round]:.4f}" for label in in_race),
            ", ".join(kept),
        )
        in_race = kept
    return in_race[0], trained


def _run_round(
    race: Race,
    rnd: HalvingRound,
    in_race: list[str],
    executor: Executor,
    cases: tuple[list, list] | None,
    config: TrainConfig,
) -> int:
    """Run the units of ``rnd`` not yet recorded, record each as it finishes (``val_dice`` at step =
    round on the candidate's run); returns the steps trained. A failed unit stops the selection
    (the finished ones stay recorded, so a rerun resumes)."""
    todo = race.pending(rnd, in_race)
    for label in in_race:
        if label not in todo:
            _logger.info(
                "%s round %d: Dice %.4f recorded before (reused)", label, rnd.round, race.dice[label][rnd.round]
            )
    if not todo:
        return 0
    tasks = [SelectTask(f"models:/{label}", rnd.round, config, **race.unit) for label in todo]
    client = mlflow.MlflowClient()

    def record(i: int, result: RaceResult | TaskFailure) -> None:
        if isinstance(result, TaskFailure):
            return
        label = todo[i]
        retrying(client.log_metric, race.runs[label], T.VAL_DICE, result.dice, step=rnd.round, what="log val_dice")
        race.dice[label][rnd.round] = result.dice
        _logger.info(
            "%s round %d (%d steps): validation Dice %.4f (%.0f s)",
            label,
            rnd.round,
            rnd.steps,
            result.dice,
            result.seconds,
        )

    if executor.in_process:
        got = executor.map(lambda task: race_unit(task, cases), tasks, record)
    else:
        got = executor.map(race_unit_remote, tasks, record)
    failed = [f"{t.item} round {t.round}: {r.error}" for t, r in zip(tasks, got) if isinstance(r, TaskFailure)]
    if failed:
        raise RuntimeError(f"select: {'; '.join(failed)}; run select again to resume at this round.")
    return config.steps * len(todo)


def _race_rows(outcome: SelectOutcome) -> list[dict[str, Any]]:
    """``race.csv``: one row per candidate and round it ran, with whether it stayed in the race."""
    return [
        {
            "round": rnd.round,
            "steps": rnd.steps,
            "model": label,
            "rank": outcome.shortlist.index(label) + 1,
            "val_dice": outcome.dice[label][rnd.round],
            "kept": outcome.round_reached(label) > rnd.round or label == outcome.winner,
        }
        for rnd in outcome.schedule
        for label in outcome.shortlist
        if rnd.round in outcome.dice[label]
    ]


def record_outcome(client: mlflow.MlflowClient, outcome: SelectOutcome, runs: dict[str, str], bank: str) -> None:
    """The race's artifacts and tags: ``race.csv``, the winner on the ``select`` run, each candidate's
    round reached on its run and version, the ``selected-<dataset>`` alias on the winner."""
    dataset = outcome.dataset
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "race.csv"
        pd.DataFrame(_race_rows(outcome)).to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    mlflow.set_tag(T.RUN_SELECT_WINNER, outcome.winner)
    mlflow.log_metric(T.VAL_DICE, outcome.winner_dice, step=outcome.schedule[-1].round)
    for label in outcome.shortlist:
        reached = outcome.round_reached(label)
        client.set_tag(runs[label], T.RUN_SELECT_ROUND, str(reached))
        retrying(client.set_terminated, runs[label], "FINISHED", what="end a candidate's run")
        name, _, version = label.rpartition("/")
        set_version_tag(name, version, T.select_round_tag(dataset), str(reached))
        set_version_tag(name, version, T.select_dice_tag(dataset), f"{outcome.dice[label][reached]:.6f}")
    for v in bank_versions(bank):  # the tags describe the latest selection only
        if f"{v.name}/{v.version}" in outcome.shortlist:
            continue
        for key in (T.select_round_tag(dataset), T.select_dice_tag(dataset)):
            if key in (v.tags or {}):
                delete_version_tag(v.name, str(v.version), key)
    name, _, version = outcome.winner.rpartition("/")
    move_alias(T.selected_alias(dataset), name, version, bank)
