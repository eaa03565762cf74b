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
Ray task (:class:`SelectTask`, :func:`race_unit_remote`), recorded by the driver as it finishes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run

from mlflow_ccfv.data import MSDDataset, PreprocessedCase, Target, make_target
from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.executors import Executor, SerialExecutor, TaskFailure
from mlflow_ccfv.pipelines.pretrain import check_training_resources
from mlflow_ccfv.pipelines.score import score_from_options
from mlflow_ccfv.scoring.ranking import AUTO_RANK, CONTROL_SOURCE
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import is_dataset_reference, load_msd_dataset
from mlflow_ccfv.tracking.registry import (
    DEFAULT_BANK,
    bank_versions,
    delete_version_tag,
    load_version,
    move_alias,
    set_version_tag,
)
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.runs import command_run, process_identity, recover_crashed, tag_process
from mlflow_ccfv.training import TrainConfig, evaluate_dice, finetune
from mlflow_ccfv.training.selection import (
    HalvingRound,
    check_budget,
    halving_schedule,
    keep_best,
    schedule_steps,
    validation_split,
)

__all__ = [
    "RaceResult",
    "SelectOutcome",
    "SelectRequest",
    "SelectTask",
    "SPLIT_SEED",
    "race_split",
    "race_unit",
    "race_unit_remote",
    "select_models",
]

_logger = logging.getLogger(__name__)

#: The ``split_seed`` of the train/held-out split (the one ``score`` and ``finetune`` use by default).
SPLIT_SEED = 0


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
    """What :func:`select_models` decided: ``shortlist`` (labels, best-ranked first), ``schedule``,
    ``dice`` (label -> round -> validation Dice), the ``winner`` and its Dice in the last round,
    ``steps`` of the schedule, ``trained_steps`` spent by this call (0 when everything was recorded
    before), the ``select`` run's id and the validation case ids."""

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


def _cases(ds: MSDDataset, ids: Sequence[str], progress: bool) -> list[PreprocessedCase]:
    return list(ds.iter_cases(ids, progress=progress))


def race_split(ds: MSDDataset, validation_fraction: float, validation_seed: int) -> tuple[Target, list[str], list[str]]:
    """``(target, fit, validation)``: the target's training part (split seed :data:`SPLIT_SEED`) and the
    race's fit and validation case ids carved from it (:func:`~mlflow_ccfv.training.selection.validation_split`);
    the held-out part is in neither."""
    target = make_target(ds, "train", seed=SPLIT_SEED)
    fit, validation = validation_split(target.case_ids, validation_fraction, validation_seed)
    return target, fit, validation


def race_unit(task: SelectTask, cases: tuple[list, list] | None = None) -> RaceResult:
    """Fine-tune one candidate for one round (all pre-trained weights but the last convolution, nothing
    frozen: :func:`~mlflow_ccfv.training.finetune`) and measure its Dice on the validation cases
    (:func:`~mlflow_ccfv.training.evaluate_dice`). ``cases``: pre-loaded ``(fit, validation)`` cases;
    None loads them from ``task.dataset`` (once per process)."""
    start = time.perf_counter()
    loaded = load_version(task.item, allow_pickle=task.allow_pickle)
    if loaded.spec is None:
        raise RegistryError(
            f"{loaded.label} is an mlflow.pytorch model without a network specification; fine-tuning re-creates "
            "the last convolution from the spec, so register it with register_network (a MONAI spec + weights)."
        )
    fit, validation = (
        cases if cases is not None else _worker_cases(task.dataset, task.cache_dir, task.fit, task.validation)
    )
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
    return _cases(ds, fit, False), _cases(ds, validation, False)


def race_unit_remote(task: SelectTask) -> RaceResult:
    """:func:`race_unit` as a Ray task: the cases read from ``task.dataset`` in the worker."""
    return race_unit(task)


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
    candidates = [v for v in bank_versions(request.bank) if (v.tags or {}).get(T.SOURCE_DATASET) != CONTROL_SOURCE]
    if not candidates:
        raise RegistryError(
            f"The bank {request.bank!r} has no pre-trained version to select from (random-init controls are "
            f"never candidates); register models with `mlflow-ccfv register ... --bank {request.bank}`."
        )
    planned = halving_schedule(min(request.top_k, len(candidates)), request.rounds)
    check_budget(planned, request.budget)
    labels = sorted(f"{v.name}/{v.version}" for v in candidates)
    settings = dataclasses.replace(config, steps=max(request.rounds)).digest(**request.params())
    key = T.run_key("select", target.digest, *labels, settings)
    client = mlflow.MlflowClient()
    with _select_run(f"select {target.name}", key, request.force) as (run, resumed):
        run_id = run.info.run_id
        mlflow.set_tags({T.RUN_STAGE: "select", T.RUN_DATASET: target.name, T.RUN_BANK: request.bank})
        params = dict(run.data.params)
        mlflow.log_params({**request.params(), "dataset_digest": target.digest, "n_validation": len(val_ids)})
        if "shortlist" not in params:
            _log_split(ds, fit_ids, val_ids)
        if "shortlist" in params:
            shortlist = params["shortlist"].split(",")
            _logger.info("%s: resuming run %s (shortlist %s)", target.name, run_id, ", ".join(shortlist))
        else:
            shortlist = _shortlist(request, executor, target.name, min(request.top_k, len(candidates)))
        schedule = halving_schedule(len(shortlist), request.rounds)
        if "shortlist" not in params:
            mlflow.log_params(
                {
                    "shortlist": ",".join(shortlist),
                    "schedule": " ".join(f"{r.n_candidates}x{r.steps}" for r in schedule),
                    T.SELECT_STEPS: schedule_steps(schedule),
                }
            )
            mlflow.log_metric(T.SELECT_STEPS, schedule_steps(schedule))
        runs = _candidate_runs(client, run, shortlist, target.name)
        dice = {label: _recorded(client, runs[label]) for label in shortlist}
        cases: tuple[list, list] | None = None
        task_of = dict(
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
        in_race, trained = list(shortlist), 0
        for rnd in schedule:
            if executor.in_process and cases is None and any(rnd.round not in dice[label] for label in in_race):
                cases = (_cases(ds, fit_ids, progress), _cases(ds, val_ids, progress))  # once, when needed
            trained += _run_round(
                rnd, in_race, dice, runs, executor, cases, dataclasses.replace(config, steps=rnd.steps), task_of
            )
            kept = keep_best({label: dice[label][rnd.round] for label in in_race}, rnd.n_kept, shortlist)
            _logger.info(
                "%s round %d (%d steps): %s; kept %s",
                target.name,
                rnd.round,
                rnd.steps,
                ", ".join(f"{label} {dice[label][rnd.round]:.4f}" for label in in_race),
                ", ".join(kept),
            )
            in_race = kept
        winner = in_race[0]
        outcome = SelectOutcome(
            target.name,
            shortlist,
            schedule,
            dice,
            winner,
            dice[winner][schedule[-1].round],
            schedule_steps(schedule),
            trained,
            run_id,
            list(val_ids),
            resumed,
        )
        _record_outcome(client, outcome, runs, request.bank)
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


def _shortlist(request: SelectRequest, executor: Executor, dataset: str, k: int) -> list[str]:
    """Score the bank in a nested ``score`` run (the ``score`` pipeline) and return the ``k`` best-ranked
    versions' labels (rank 1 first; controls have no rank)."""
    start = getattr(executor, "start", None)
    if start is not None:  # a Ray started here outlives the scoring (its executor leaves it running)
        start()
    with command_run(f"score {dataset}"):
        table = score_from_options(
            dataset=request.dataset,
            data_root=request.data_root or "",
            bank=request.bank,
            methods=request.methods,
            cache_dir=request.cache_dir or "",
            device=request.device,
            executor=executor.name,
            ray_address=getattr(executor, "address", None) or "",
            num_cpus=str(getattr(executor, "num_cpus", 1)),
            num_gpus=str(getattr(executor, "num_gpus", 0)),
            allow_pickle=request.allow_pickle,
            rank_by=request.rank_by,
            add_twins=request.add_twins,
        )
    ranked = table[table["rank"].notna() & table["error"].isna()].sort_values("rank")
    shortlist = [str(m).removeprefix("models:/") for m in ranked["model"].head(k)]
    if not shortlist:
        raise RegistryError(
            f"No version of the bank {request.bank!r} could be ranked on {dataset}; see the score run's errors."
        )
    columns = [c for c in ("rank", "model", "architecture", "source_dataset", "ccfv_twin", "ccfv") if c in ranked]
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


def _candidate_runs(client: mlflow.MlflowClient, parent, shortlist: list[str], dataset: str) -> dict[str, str]:
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


def _recorded(client: mlflow.MlflowClient, run_id: str) -> dict[int, float]:
    """round -> validation Dice of a candidate's finished rounds (its ``val_dice`` history)."""
    return {int(m.step): float(m.value) for m in client.get_metric_history(run_id, T.VAL_DICE)}


def _run_round(
    rnd: HalvingRound,
    in_race: list[str],
    dice: dict[str, dict[int, float]],
    runs: dict[str, str],
    executor: Executor,
    cases: tuple[list, list] | None,
    config: TrainConfig,
    task_of: dict,
) -> int:
    """Run the units of ``rnd`` not yet recorded, record each as it finishes (``val_dice`` at step =
    round on the candidate's run); returns the steps trained. A failed unit stops the selection
    (the finished ones stay recorded, so a rerun resumes)."""
    todo = [label for label in in_race if rnd.round not in dice[label]]
    for label in in_race:
        if label not in todo:
            _logger.info("%s round %d: Dice %.4f recorded before (reused)", label, rnd.round, dice[label][rnd.round])
    if not todo:
        return 0
    tasks = [SelectTask(f"models:/{label}", rnd.round, config, **task_of) for label in todo]
    client = mlflow.MlflowClient()

    def record(i: int, result: RaceResult | TaskFailure) -> None:
        if isinstance(result, TaskFailure):
            return
        label = todo[i]
        retrying(client.log_metric, runs[label], T.VAL_DICE, result.dice, step=rnd.round, what="log val_dice")
        dice[label][rnd.round] = result.dice
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


def _record_outcome(client: mlflow.MlflowClient, outcome: SelectOutcome, runs: dict[str, str], bank: str) -> None:
    """The race's artifacts and tags: ``race.csv``, the winner on the ``select`` run, each candidate's
    round reached on its run and version, the ``selected-<dataset>`` alias on the winner."""
    dataset = outcome.dataset
    rows = []
    for rnd in outcome.schedule:
        for label in outcome.shortlist:
            if rnd.round in outcome.dice[label]:
                rows.append(
                    {
                        "round": rnd.round,
                        "steps": rnd.steps,
                        "model": label,
                        "rank": outcome.shortlist.index(label) + 1,
                        "val_dice": outcome.dice[label][rnd.round],
                        "kept": outcome.round_reached(label) > rnd.round or label == outcome.winner,
                    }
                )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "race.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
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
        with active:
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
