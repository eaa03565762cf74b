"""The ``select`` pipeline: the scores shortlist, short fine-tunes decide.

:func:`select_models` scores every version of a bank on a target (the ``score`` pipeline: cached
features are reused, random-init controls are never candidates), shortlists the ``top_k`` best-ranked
versions, then runs successive halving over the shortlist (:mod:`mlflow_ccfv.training.selection`):
round ``r`` fine-tunes each candidate still in the race for ``rounds[r]`` steps from its pre-trained
weights on the *fit* cases and measures Dice on the *validation* cases, both carved out of the
target's training part (:func:`~mlflow_ccfv.training.selection.validation_split`); the held-out 20%
on which ``finetune`` reports Dice is never loaded. Every round keeps the better half (rounded up),
the last round keeps the winner. A schedule whose steps exceed ``budget`` is refused before any run.

Recorded in MLflow:

- one run ``select <dataset>`` with the settings as params (``shortlist``, ``schedule``, ``budget``,
  ``select_steps`` ...), the shortlist as ``shortlist.csv``, the race as ``race.csv`` (one row per
  candidate and round), the tag ``ccfv.select.winner`` and the winner's ``val_dice``;
- nested in it, a ``score <dataset>`` run (the ``score`` pipeline's records) and one run per
  shortlisted candidate logging ``val_dice`` with ``step`` = the round: comparing the candidates' runs
  draws the race as one chart, one line per candidate, each ending in the round it left the race;
- the version tags ``select.round.<dataset>`` and ``select.dice.<dataset>`` on every shortlisted
  version (removed from the bank's other versions), and the alias ``selected-<dataset>`` on the
  winner's registered model (one holder per bank).

Resuming: the ``select`` run is keyed (``ccfv.run_key``) by the target's digest, the bank's candidates
and every setting; a rerun with the same key reopens that run, reads the shortlist from its params
and each candidate's finished rounds from its ``val_dice`` history, and trains only the units
(candidate, round) not yet recorded. ``force`` starts a new run. With a Ray executor each unit is one
Ray task (:class:`SelectTask`, :func:`race_unit_remote`), recorded by the driver as it finishes; the
units and their records are :mod:`~mlflow_ccfv.pipelines.select_race`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset, Target, make_target
from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.options import ExecutorKind
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor
from mlflow_ccfv.pipelines.pretrain import check_training_resources
from mlflow_ccfv.pipelines.score import ScoreConfig, ScoreRequest, run_score
from mlflow_ccfv.pipelines.select_race import (
    Race,
    RaceResult,
    SelectOutcome,
    SelectTask,
    candidate_runs,
    load_cases,
    race_unit,
    race_unit_remote,
    record_outcome,
    recorded_dice,
    run_race,
)
from mlflow_ccfv.scoring.ranking import AUTO_RANK, CONTROL_SOURCE, TWIN_METHOD
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import is_dataset_reference, load_msd_dataset
from mlflow_ccfv.tracking.runs import command_run, recover_crashed, released_on_interrupt, tag_process
from mlflow_ccfv.tracking.search import DEFAULT_BANK, bank_versions
from mlflow_ccfv.training import (
    HalvingRound,
    TrainConfig,
    check_budget,
    halving_schedule,
    schedule_steps,
    validation_split,
)

__all__ = [
    "RaceResult",
    "SelectOutcome",
    "SelectRequest",
    "SPLIT_SEED",
    "SelectTask",
    "race_split",
    "race_unit",
    "race_unit_remote",
    "select_models",
]

_logger = logging.getLogger(__name__)

#: The ``split_seed`` of the train/held-out split (the one ``score`` and ``finetune`` use by default).
SPLIT_SEED = 0


def race_split(ds: MSDDataset, validation_fraction: float, validation_seed: int) -> tuple[Target, list[str], list[str]]:
    """``(target, fit, validation)``: the target's training part (split seed :data:`SPLIT_SEED`) and the
    race's fit and validation case ids carved from it (:func:`~mlflow_ccfv.training.selection.validation_split`);
    the held-out part is in neither."""
    target = make_target(ds, "train", seed=SPLIT_SEED)
    fit, validation = validation_split(target.case_ids, validation_fraction, validation_seed)
    return target, fit, validation


@dataclass(frozen=True)
class SelectRequest:
    """Everything a selection depends on (logged as params; equal requests resume each other).

    ``dataset``/``data_root``: the target (a task name under ``data_root``, a folder, or a logged dataset
    ``runs:/<run_id>/<folder>``); ``bank``: the versions scored; ``top_k``: the shortlist's size;
    ``rank_by``: the ranking that shortlists (``auto``: see :func:`~mlflow_ccfv.pipelines.score.score_versions`);
    ``rounds``: fine-tuning steps per round; ``budget``: the most steps the schedule may spend (None: no
    limit); ``train``: the fine-tuning recipe (its ``steps`` is replaced by each round's);
    ``validation_fraction``/``validation_seed``: the validation part of the training cases;
    ``overlap``: sliding-window overlap at evaluation; ``methods``: estimators scored (``score``'s
    default when empty); ``force``: a new run even when one with the same settings exists.
    """

    dataset: str
    data_root: str | None = None
    bank: str = DEFAULT_BANK
    top_k: int = 4
    rank_by: str = AUTO_RANK
    rounds: tuple[int, ...] = (50, 100, 200)
    budget: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    validation_fraction: float = 0.2
    validation_seed: int = 0
    overlap: float = 0.5
    methods: str = ""
    force: bool = False
    cache_dir: str | None = None
    device: str | None = None
    allow_pickle: bool | None = None
    add_twins: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "rounds", tuple(int(s) for s in self.rounds))
        if int(self.top_k) < 1:
            raise OptionError(f"--top-k must be at least 1, got {self.top_k}.")
        if not self.rounds or min(self.rounds) < 1:
            raise OptionError(
                f"--rounds must list fine-tuning steps per round, each >= 1 (e.g. 50,100,200); got {self.rounds}."
            )
        if self.budget is not None and int(self.budget) < 1:
            raise OptionError(f"--budget must be at least 1 fine-tuning step, got {self.budget}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise OptionError(f"--validation-fraction must be within (0, 1), got {self.validation_fraction}.")
        if not 0.0 <= self.overlap < 1.0:
            raise OptionError(f"--overlap must be within [0, 1), got {self.overlap}.")

    def params(self) -> dict[str, object]:
        """The settings as run params (the schedule, shortlist and budget are logged beside them)."""
        return {
            "dataset": self.dataset,
            "bank": self.bank,
            "top_k": self.top_k,
            "rank_by": self.rank_by,
            "rounds": ",".join(map(str, self.rounds)),
            "budget": self.budget if self.budget is not None else "none",
            "validation_fraction": self.validation_fraction,
            "validation_seed": self.validation_seed,
            "split_seed": SPLIT_SEED,
            "eval.overlap": self.overlap,
            **T.prefixed_params("train", {k: v for k, v in self.train.to_dict().items() if k != "steps"}),
        }


def select_models(request: SelectRequest, executor: Executor | None = None, progress: bool = True) -> SelectOutcome:
    """Shortlist ``request.bank``'s versions on ``request.dataset`` by their scores, race the shortlist
    with successive halving, record the race and the winner (see the module docstring); returns the
    outcome. Refused before any run: a schedule over the bank's candidates (at most ``top_k``) that
    exceeds ``budget``, a bank without a pre-trained candidate, a target with fewer than 2 training
    cases, an unusable ``device``. ``executor``: where the units run (default in this process)."""
    executor = executor or SerialExecutor()
    config = request.train
    if executor.in_process:  # checked before any work; a Ray worker resolves its own
        check_training_resources(dataclasses.replace(config, steps=max(request.rounds)), request.device)
    ds = load_msd_dataset(request.dataset, request.data_root, request.cache_dir)
    target, fit_ids, val_ids = race_split(ds, request.validation_fraction, request.validation_seed)
    candidates = _candidates(request.bank)
    check_budget(halving_schedule(min(request.top_k, len(candidates)), request.rounds), request.budget)
    labels = sorted(f"{v.name}/{v.version}" for v in candidates)
    settings = dataclasses.replace(config, steps=max(request.rounds)).digest(**request.params())
    key = T.run_key("select", target.digest, *labels, settings)
    client = mlflow.MlflowClient()
    with _select_run(f"select {target.name}", key, request.force) as (run, resumed):
        mlflow.set_tags({T.RUN_STAGE: "select", T.RUN_DATASET: target.name, T.RUN_BANK: request.bank})
        mlflow.log_params({**request.params(), "dataset_digest": target.digest, "n_validation": len(val_ids)})
        shortlist = _recorded_shortlist(run, target.name)
        if shortlist is None:
            _log_split(ds, fit_ids, val_ids)
            shortlist = _shortlist(request, executor, target.name, min(request.top_k, len(candidates)))
        schedule = halving_schedule(len(shortlist), request.rounds)
        if "shortlist" not in run.data.params:
            _log_schedule(shortlist, schedule)
        runs = candidate_runs(client, run, shortlist, target.name)
        race = Race(
            target.name,
            shortlist,
            schedule,
            runs,
            {label: recorded_dice(client, runs[label]) for label in shortlist},
            _unit_fields(request, ds, fit_ids, val_ids, executor, progress),
        )
        winner, trained = run_race(
            race, executor, config, lambda: (load_cases(ds, fit_ids, progress), load_cases(ds, val_ids, progress))
        )
        outcome = SelectOutcome(
            target.name,
            shortlist,
            schedule,
            race.dice,
            winner,
            race.dice[winner][schedule[-1].round],
            schedule_steps(schedule),
            trained,
            run.info.run_id,
            list(val_ids),
            resumed,
        )
        record_outcome(client, outcome, runs, request.bank)
    _logger.info(
        "%s: selected %s (validation Dice %.4f after %d steps; %d fine-tuning steps in all, %d trained now)",
        target.name,
        winner,
        outcome.winner_dice,
        schedule[-1].steps,
        outcome.steps,
        trained,
    )
    return outcome


def _candidates(bank: str) -> list[ModelVersion]:
    """The bank's pre-trained versions (random-init controls are never candidates); none is refused."""
    candidates = [v for v in bank_versions(bank) if (v.tags or {}).get(T.SOURCE_DATASET) != CONTROL_SOURCE]
    if not candidates:
        raise RegistryError(
            f"The bank {bank!r} has no pre-trained version to select from (random-init controls are "
            f"never candidates); register models with `mlflow-ccfv register ... --bank {bank}`."
        )
    return candidates


def _recorded_shortlist(run: Run, dataset: str) -> list[str] | None:
    """The shortlist a reopened ``select`` run logged (None: a new run, not shortlisted yet)."""
    recorded = run.data.params.get("shortlist")
    if recorded is None:
        return None
    shortlist = recorded.split(",")
    _logger.info("%s: resuming run %s (shortlist %s)", dataset, run.info.run_id, ", ".join(shortlist))
    return shortlist


def _log_schedule(shortlist: list[str], schedule: list[HalvingRound]) -> None:
    """The shortlist and its schedule as params of the ``select`` run, the schedule's steps as a metric."""
    mlflow.log_params(
        {
            "shortlist": ",".join(shortlist),
            "schedule": " ".join(f"{r.n_candidates}x{r.steps}" for r in schedule),
            T.SELECT_STEPS: schedule_steps(schedule),
        }
    )
    mlflow.log_metric(T.SELECT_STEPS, schedule_steps(schedule))


def _unit_fields(
    request: SelectRequest,
    ds: MSDDataset,
    fit_ids: Sequence[str],
    val_ids: Sequence[str],
    executor: Executor,
    progress: bool,
) -> dict[str, Any]:
    """The :class:`SelectTask` fields every unit of the race shares."""
    return dict(
        # a logged dataset is downloaded by each worker; a folder must be readable where the tasks run
        dataset=request.dataset if is_dataset_reference(request.dataset) else str(ds.root),
        fit=tuple(fit_ids),
        validation=tuple(val_ids),
        num_classes=len(ds.labels),
        overlap=request.overlap,
        device=str(resolve_device(request.device)) if executor.in_process else request.device,
        cache_dir=request.cache_dir,
        allow_pickle=request.allow_pickle,
        progress=progress and executor.in_process,  # a training bar per unit in this process
    )


def _shortlist(request: SelectRequest, executor: Executor, dataset: str, k: int) -> list[str]:
    """Score the bank in a nested ``score`` run (the ``score`` pipeline) and return the ``k`` best-ranked
    versions' labels (rank 1 first; controls have no rank)."""
    start = getattr(executor, "start", None)
    if start is not None:  # a Ray started here outlives the scoring (its executor leaves it running)
        start()
    scoring = ScoreConfig(
        request.methods,
        cache_dir=request.cache_dir,
        device=request.device,
        rank_by=request.rank_by,
        allow_pickle=request.allow_pickle,
    )
    with command_run(f"score {dataset}"):
        table = run_score(
            ScoreRequest(
                request.dataset,
                request.data_root,
                request.bank,
                config=scoring,
                executor=ExecutorKind(executor.name),
                ray_address=getattr(executor, "address", None),
                num_cpus=getattr(executor, "num_cpus", 1.0),
                num_gpus=getattr(executor, "num_gpus", 0.0),
                add_twins=request.add_twins,
            )
        )
    ranked = table[table["rank"].notna() & table["error"].isna()].sort_values("rank")
    shortlist = [str(m).removeprefix("models:/") for m in ranked["model"].head(k)]
    if not shortlist:
        raise RegistryError(
            f"No version of the bank {request.bank!r} could be ranked on {dataset}; see the score run's errors."
        )
    columns = [c for c in ("rank", "model", "architecture", "source_dataset", TWIN_METHOD, "ccfv") if c in ranked]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shortlist.csv"
        ranked.head(k)[columns].to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    return shortlist


def _log_split(ds: MSDDataset, fit_ids: Sequence[str], val_ids: Sequence[str]) -> None:
    """``split.csv``: every case of the target and its part (``fit``, ``validation`` or ``held-out``)."""
    split = ds.split(seed=SPLIT_SEED)
    part = {**{c: "held-out" for c in split.test}, **{c: "fit" for c in fit_ids}, **{c: "validation" for c in val_ids}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.csv"
        pd.DataFrame({"case_id": list(part), "part": list(part.values())}).to_csv(path, index=False)
        mlflow.log_artifact(str(path))


def _previous_run(key: str) -> Run | None:
    """The newest ``select`` run (any experiment, not deleted) with this key, or None."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{T.RUN_KEY}` = '{key}' and tags.`{T.RUN_STAGE}` = 'select'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


@contextmanager
def _select_run(run_name: str, key: str, force: bool) -> Iterator[tuple[Run, bool]]:
    """The ``select`` run: the run of ``key`` reopened (unless ``force``), else a new one (nested in an
    active run; under ``mlflow run``, in the entry point's run as :func:`command_run` does). Yields the
    run (as stored when it was opened) and whether it was reopened; ends FINISHED, or FAILED on an error."""
    if mlflow.active_run() is None:
        recover_crashed()  # a killed select's run is closed as KILLED first, then reopened here
    previous = None if force else _previous_run(key)
    if previous is not None and previous.info.status == "RUNNING":
        raise RegistryError(
            f"select run {previous.info.run_id} with these settings is running in another process "
            f"({previous.data.tags.get(T.PROCESS, 'unknown')}); wait for it, or pass --force true for a new run."
        )
    outer = mlflow.start_run() if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID") else None
    status = "FINISHED"
    try:
        nested = mlflow.active_run() is not None
        if previous is not None:
            active = mlflow.start_run(run_id=previous.info.run_id, nested=nested)
        else:
            active = mlflow.start_run(run_name=run_name, nested=nested, tags={T.RUN_KEY: key})
        with active, released_on_interrupt():
            tag_process()
            yield (
                (previous if previous is not None else mlflow.MlflowClient().get_run(active.info.run_id)),
                previous is not None,
            )
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if outer is not None:
            mlflow.end_run(status)
