"""The ``finetune`` pipeline: the paper's protocol on a target, the measured Dice recorded in MLflow.

``finetune_version`` (a :class:`~mlflow_ccfv.pipelines.finetune_setup.FinetuneRequest`): all pre-trained
parameters but the last convolution, nothing frozen, Dice on the held-out 20%, repeated for each
fine-tuning seed (``seeds``, default the config's one seed), recorded as

- a run per seed ``finetune <model> on <dataset> (seed <s>)`` (with one seed: ``finetune <model> on
  <dataset>``): params (model, dataset, digest of that seed's budget, split), the target's training
  manifest as input, metrics ``train_loss`` (per step), ``dice.<class>`` and ``finetune_dice``,
  artifacts ``training_curve.png`` and ``dice_per_case.csv`` (``case_id``, ``seed``, one column per
  foreground class), and the fine-tuned network as a LoggedModel of that run. With several seeds
  one run ``finetune <model> on <dataset>`` holds the metrics ``finetune_dice`` (the mean over
  seeds), ``finetune_dice_sd`` and ``finetune_dice.seed<s>``, and every seed's rows in its
  ``dice_per_case.csv``: the per-case, per-seed table the study's bootstrap resamples; the seeds'
  runs are nested in it (in a study they sit beside it, under the study's run). With one seed that
  run is the seed's own run.
- the version tags ``finetune.dice.<dataset>`` (the mean over seeds), ``finetune.dice_sd.<dataset>``
  (with 2 or more seeds), ``finetune.seeds.<dataset>``, ``finetune.run.<dataset>`` (the run holding
  the table) and ``finetune.budget.<dataset>`` (the budget digest, seeds included);
- the metric ``finetune_dice`` on the version's LoggedModel, linked to the same MLflow dataset as the
  transferability metrics of ``score``, so the Models tab shows both columns side by side.

Resuming: a version already tagged with this budget's Dice is not fine-tuned again, and a seed
whose run finished before (same model, dataset and per-seed budget digest: ``params.budget``) is
read back from that run instead of being trained again, so a stopped study loses at most the seed
it was in. Within a seed, training saves a checkpoint every ``checkpoint_every`` steps under
``<cache>/finetune/<model id>-<seed budget digest>.pt`` (``$MLFLOW_CCFV_CACHE`` or ``.ccfv-cache``);
a rerun after a kill resumes from it (same weights as an uninterrupted run), the killed run having
been closed as KILLED, and deletes the killed run once it has finished (one run per model and seed
budget, tag ``ccfv.run_key``).

The steps, for a caller that runs the seeds elsewhere (a study's executor): :func:`tagged_outcome`
(the Dice this budget already has), :func:`~mlflow_ccfv.pipelines.finetune_setup.load_setup` and
:func:`~mlflow_ccfv.pipelines.finetune_setup.load_cases`, :func:`finetune_seed`
(one seed: train, evaluate, log, or read back) and :func:`combine_seeds` (mean and sd over the seeds,
the version's tags). :func:`finetune_version` chains them.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run

from mlflow_ccfv.data import PreprocessedCase, make_target
from mlflow_ccfv.data.normalization import describe_normalization
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.options import cache_root
from mlflow_ccfv.pipelines.finetune_setup import (
    Cases,
    FinetuneRequest,
    FinetuneSetup,
    budget_digest,
    input_digest,
    load_cases,
    load_setup,
)
from mlflow_ccfv.pipelines.pretrain import check_training_resources, load_dataset
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import mlflow_dataset
from mlflow_ccfv.tracking.flavor import log_model
from mlflow_ccfv.tracking.load import LoadedModel, version_normalization
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.runs import (
    command_run,
    delete_replaced_runs,
    finished_run,
    log_dice_on_score_runs,
    log_input,
    log_training_curve,
    run_csv,
)
from mlflow_ccfv.tracking.search import registered_version
from mlflow_ccfv.tracking.summary import refresh_summaries
from mlflow_ccfv.training import DiceResult, TrainConfig, TrainingCheckpoint, evaluate_dice, finetune

__all__ = [
    "DICE_TABLE",
    "FinetuneOutcome",
    "SeedOutcome",
    "combine_seeds",
    "finetune_seed",
    "finetune_version",
    "tagged_outcome",
]

_logger = logging.getLogger(__name__)

#: The artifact holding the per-case, per-seed Dice table of a fine-tuning.
DICE_TABLE = "dice_per_case.csv"


@dataclass
class FinetuneOutcome:
    """``dice``: held-out Dice (with several seeds: the mean over seeds; ``per_class`` and ``per_case``
    of the first seed); ``seed_dice``: seed -> Dice; ``dice_sd``: their sd (NaN with one seed);
    ``run_id``: the run holding the Dice table; ``seconds``: training + evaluation time spent now;
    ``reused``: nothing was trained (every seed was measured before)."""

    model: str
    dataset: str
    dice: DiceResult
    run_id: str | None
    seconds: float
    reused: bool = False
    seed_dice: dict[int, float] = field(default_factory=dict)
    dice_sd: float = float("nan")


@dataclass(frozen=True)
class SeedOutcome:
    """One seed of a fine-tune: its Dice, its rows of the Dice table, the full result when it was
    measured now (None when read back), the run holding it, the seconds spent now."""

    seed: int
    dice: float
    table: pd.DataFrame
    result: DiceResult | None
    run_id: str
    seconds: float

    @property
    def reused(self) -> bool:
        return self.result is None


def _dice_table(dice: DiceResult, seed: int, labels: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"case_id": c, "seed": seed, **{labels[k]: v for k, v in d.items()}} for c, d in dice.per_case.items()]
    )


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")


def _log_table(table: pd.DataFrame) -> None:
    """The Dice table as the active run's :data:`DICE_TABLE` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / DICE_TABLE, index=False)
        mlflow.log_artifact(str(Path(tmp) / DICE_TABLE))


def _model_uri(loaded: LoadedModel) -> str:
    return f"models:/{loaded.label}" if loaded.name else loaded.uri


def finetune_version(request: FinetuneRequest) -> FinetuneOutcome:
    """Fine-tune a registered version as ``request`` says (see :class:`FinetuneRequest`): the Dice this
    budget already has, else every seed measured (or read back) and combined into the version's tags.
    With several seeds the seeds' runs are nested in the run that combines them."""
    check_training_resources(request.config, request.device)
    if (tagged := tagged_outcome(request)) is not None:
        return tagged
    setup = load_setup(request)
    cases = load_cases(setup)
    start = time.perf_counter()
    if len(setup.seeds) == 1:
        seeds = [finetune_seed(setup, setup.seeds[0], cases)]
        run_id = seeds[0].run_id
    else:
        with _seeds_run(setup) as run:
            seeds = [finetune_seed(setup, seed, cases) for seed in setup.seeds]
            _log_seeds(setup, seeds)
        run_id = run.info.run_id
    _tag_version(setup, seeds, run_id)
    return _outcome(setup, seeds, run_id, time.perf_counter() - start)


def tagged_outcome(request: FinetuneRequest) -> FinetuneOutcome | None:
    """The Dice the version's tags already hold for this budget (seeds included), as a reused outcome;
    None when it has none, or with ``force``."""
    if request.force:
        return None
    target = make_target(load_dataset(request.dataset, request.data_root), "train", seed=request.split_seed)
    name = target.name
    mv = registered_version(request.model)  # the tags, without downloading the weights
    if mv is None:
        return None
    tags = dict(mv.tags or {})
    label = f"{mv.name}/{mv.version}"
    # an imported version's own normalisation is part of what it is fine-tuned on
    data_digest = input_digest(target.digest, version_normalization(tags, label))
    digest = budget_digest(request.config, request.seeds, request.split_seed, request.overlap, data_digest)
    tag = T.dice_tag(name)
    if tags.get(T.finetune_budget_tag(name)) != digest or tag not in tags:
        return None
    _logger.info("%s already fine-tuned on %s with this budget: Dice %s (reused)", label, name, tags[tag])
    return FinetuneOutcome(
        label,
        name,
        DiceResult({}, float(tags[tag])),
        tags.get(T.finetune_run_tag(name)),
        0.0,
        reused=True,
        dice_sd=float(tags.get(T.dice_sd_tag(name), "nan")),
    )


def finetune_seed(setup: FinetuneSetup, seed: int, cases: Cases) -> SeedOutcome:
    """One seed: read back from the finished run with the same model and per-seed budget (unless
    ``force``), else trained on ``cases[0]``, evaluated on ``cases[1]`` and logged in its own run."""
    loaded, digest = setup.loaded, setup.seed_digest(seed)
    if not setup.request.force:
        done = finished_run({"budget": digest}, {T.RUN_MODEL: loaded.label, T.RUN_DATASET: setup.name})
        if done is not None:
            table = run_csv(done, DICE_TABLE)
            if "seed" not in table.columns:
                table.insert(1, "seed", seed)
            value = float(mlflow.MlflowClient().get_run(done).data.metrics[T.FINETUNE_DICE])
            _logger.info(
                "%s on %s, seed %d: Dice %.4f measured by run %s (reused)", loaded.label, setup.name, seed, value, done
            )
            return SeedOutcome(seed, value, table, None, done, 0.0)
    start = time.perf_counter()
    dice, run_id = _measure_seed(setup, seed, cases, _checkpoint(setup, digest))
    table = _dice_table(dice, seed, setup.dataset.labels)
    return SeedOutcome(seed, dice.mean, table, dice, run_id, time.perf_counter() - start)


def _checkpoint(setup: FinetuneSetup, seed_digest: str) -> TrainingCheckpoint | None:
    """Where one seed's training state is saved (None when ``checkpoint_every`` is 0)."""
    r, model_id = setup.request, setup.loaded.model_id
    if not r.checkpoint_every:
        return None
    folder = Path(r.checkpoint_dir) if r.checkpoint_dir else cache_root() / "finetune"
    return TrainingCheckpoint(
        folder / f"{model_id or 'model'}-{seed_digest}.pt",
        every=r.checkpoint_every,
        fingerprint=f"{model_id}/{seed_digest}",
    )


def _measure_seed(
    setup: FinetuneSetup, seed: int, cases: Cases, checkpoint: TrainingCheckpoint | None
) -> tuple[DiceResult, str]:
    """One seed's fine-tuning and evaluation in its own run (nested in the active one, if any); returns
    the Dice and the run id. The only seed of a fine-tune is its run and logs the Dice on the version's
    LoggedModel. ``checkpoint``: save and resume the training; the run is keyed (``ccfv.run_key``) by
    the model and the seed's budget, and replaces the earlier (killed) runs of its key once it has finished."""
    loaded, name, r = setup.loaded, setup.name, setup.request
    config, digest = setup.seed_config(seed), setup.seed_digest(seed)
    key = T.run_key(loaded.model_id or loaded.label, digest)
    only = len(setup.seeds) == 1
    start = time.perf_counter()
    suffix = "" if only else f" (seed {seed})"
    with command_run(f"finetune {loaded.label} on {name}{suffix}", parent_run_id=r.parent_run_id) as run:
        mlflow_ds = mlflow_dataset(setup.target)
        log_input(mlflow_ds, context="finetune")
        log_input(mlflow_dataset(make_target(setup.dataset, "test", seed=r.split_seed)), context="evaluation")
        mlflow.set_tags({**_run_tags(loaded, name), T.RUN_KEY: key})
        result, new_spec = _train(setup, config, cases[0], checkpoint)
        if result.resumed_from:
            mlflow.set_tag(T.RUN_RESUMED_FROM, str(result.resumed_from))
        mlflow.log_params(_seed_params(setup, config, cases, result.reinitialised))
        log_training_curve(result.losses, f"fine-tuning {loaded.label} on {name}")
        dice = evaluate_dice(
            result.model,
            cases[1],
            len(setup.dataset.labels),
            config.patch_size,
            overlap=r.overlap,
            progress=r.progress,
            desc=f"evaluate {loaded.label}",
            device=setup.device,
        )
        seconds = time.perf_counter() - start
        labels = setup.dataset.labels
        per_class = {f"dice.{labels[k]}": v for k, v in dice.per_class.items() if v == v}
        mlflow.log_metrics({**per_class, T.FINETUNE_DICE: dice.mean, "finetune_seconds": seconds})
        _log_table(_dice_table(dice, seed, labels))
        if r.log_finetuned_model:
            log_model(
                new_spec,
                result.model.state_dict(),
                name="finetuned",
                tags={T.FINETUNED_FROM: loaded.label, T.RUN_DATASET: name},
                patch_size=config.patch_size,
            )
        # The bank version's LoggedModel gets the Dice next to its transferability metrics
        # (a multi-seed fine-tuning logs the mean there instead).
        if only and loaded.model_id:
            mlflow.log_metric(T.FINETUNE_DICE, dice.mean, model_id=loaded.model_id, dataset=mlflow_ds)
    delete_replaced_runs(key, keep=run.info.run_id)  # a killed or earlier run of this model and seed budget
    if checkpoint is not None:
        checkpoint.remove()
    _logger.info("%s on %s, seed %d: Dice %.4f (%.0f s)", loaded.label, name, seed, dice.mean, seconds)
    return dice, run.info.run_id


def _train(setup: FinetuneSetup, config: TrainConfig, train: list[PreprocessedCase], checkpoint):
    """The fine-tuning itself: the version's weights, its last convolution re-created for the target's classes."""
    loaded = setup.loaded
    if loaded.spec is None:  # checked by load_setup; keeps the type checker informed
        raise RegistryError(f"{loaded.label} has no network specification.")
    return finetune(
        loaded.spec,
        loaded.module.state_dict(),
        train,
        len(setup.dataset.labels),
        config,
        progress=setup.request.progress,
        desc=f"finetune {loaded.label}",
        device=setup.device,
        checkpoint=checkpoint,
    )


def _run_tags(loaded: LoadedModel, name: str) -> dict[str, str]:
    """The tags of every fine-tuning run: stage, model, dataset, the model's input normalisation."""
    return {
        T.RUN_STAGE: "finetune",
        T.RUN_MODEL: loaded.label,
        T.RUN_DATASET: name,
        T.RUN_NORMALIZATION: describe_normalization(loaded.normalization)[:5000],
    }


def _seed_params(setup: FinetuneSetup, config: TrainConfig, cases: Cases, reinitialised: Sequence[str]) -> dict:
    """The params of one seed's run."""
    loaded, r = setup.loaded, setup.request
    spec = loaded.spec
    return {
        "model_uri": _model_uri(loaded),
        "model_id": loaded.model_id,
        "architecture": spec.architecture if spec is not None else "",
        "source_dataset": loaded.tags.get(T.SOURCE_DATASET, ""),
        "dataset": setup.name,
        "dataset_digest": setup.target.digest,
        "split_seed": r.split_seed,
        "n_train": len(cases[0]),
        "n_test": len(cases[1]),
        "eval.overlap": r.overlap,
        "budget": setup.seed_digest(config.seed),
        "device": str(setup.device),
        "n_reinitialised": len(reinitialised),
        "reinitialised": ",".join(reinitialised)[:6000],
        **T.prefixed_params("train", config.to_dict()),
    }


def combine_seeds(setup: FinetuneSetup, seeds: Sequence[SeedOutcome]) -> FinetuneOutcome:
    """Seeds measured elsewhere (a study's tasks) combined: with several, the run holding their mean,
    sd and table (nested in the active run); then the version's tags. ``seconds``: the seeds' own."""
    if len(seeds) == 1:
        run_id = seeds[0].run_id
    else:
        with _seeds_run(setup) as run:
            _log_seeds(setup, seeds)
        run_id = run.info.run_id
    _tag_version(setup, seeds, run_id)
    return _outcome(setup, seeds, run_id, sum(s.seconds for s in seeds))


@contextmanager
def _seeds_run(setup: FinetuneSetup) -> Iterator[Run]:
    """The run of a multi-seed fine-tune ``finetune <model> on <dataset>``, with its tags and params."""
    loaded, r = setup.loaded, setup.request
    with command_run(f"finetune {loaded.label} on {setup.name}", parent_run_id=r.parent_run_id) as run:
        mlflow.set_tags(_run_tags(loaded, setup.name))
        mlflow.log_params(
            {
                "model_uri": _model_uri(loaded),
                "dataset": setup.name,
                "dataset_digest": setup.target.digest,
                "split_seed": r.split_seed,
                "seeds": T.format_seeds(setup.seeds),
                "budget": setup.budget,
                **T.prefixed_params("train", {k: v for k, v in r.config.to_dict().items() if k != "seed"}),
            }
        )
        yield run


def _log_seeds(setup: FinetuneSetup, seeds: Sequence[SeedOutcome]) -> None:
    """In the active (multi-seed) run: the mean, sd and per-seed Dice, every seed's rows of the Dice
    table, and the mean on the version's LoggedModel, beside its scores."""
    values = [s.dice for s in seeds]
    mean = float(np.mean(values))
    mlflow.log_metrics(
        {
            T.FINETUNE_DICE: mean,
            **({"finetune_dice_sd": _sd(values)} if len(values) >= 2 else {}),
            **{T.seed_dice_metric(s.seed): s.dice for s in seeds},
        }
    )
    _log_table(pd.concat([s.table for s in seeds], ignore_index=True))
    if setup.loaded.model_id:
        mlflow.log_metric(T.FINETUNE_DICE, mean, model_id=setup.loaded.model_id, dataset=mlflow_dataset(setup.target))


def _tag_version(setup: FinetuneSetup, seeds: Sequence[SeedOutcome], run_id: str) -> None:
    """The version's tags (mean, sd, seeds, the run holding the table, the budget), its description's
    Dice column and its score runs' Dice: only for a registered version."""
    loaded, name = setup.loaded, setup.name
    if not loaded.name:
        return
    values = [s.dice for s in seeds]
    mean, sd = float(np.mean(values)), _sd(values)
    version_tags = {
        T.dice_tag(name): f"{mean:.6f}",
        T.finetune_seeds_tag(name): T.format_seeds(setup.seeds),
        T.finetune_run_tag(name): run_id or "",
        T.finetune_budget_tag(name): setup.budget,
    }
    if not math.isnan(sd):
        version_tags[T.dice_sd_tag(name)] = f"{sd:.6f}"
    client = mlflow.MlflowClient()
    for key, value in version_tags.items():
        retrying(client.set_model_version_tag, loaded.name, loaded.version, key, value, what=f"tag {key}")
    refresh_summaries([(str(loaded.name), str(loaded.version))])  # the description's Dice column
    log_dice_on_score_runs(loaded.label, name, mean)


def _outcome(setup: FinetuneSetup, seeds: Sequence[SeedOutcome], run_id: str, seconds: float) -> FinetuneOutcome:
    values = [s.dice for s in seeds]
    mean, sd = float(np.mean(values)), _sd(values)
    first = seeds[0].result
    dice = DiceResult(first.per_class if first else {}, mean, first.per_case if first else {})
    _logger.info(
        "%s fine-tuned on %s: Dice %.4f%s (%.0f s)",
        setup.loaded.label,
        setup.name,
        mean,
        f" ± {sd:.4f} over seeds {T.format_seeds(setup.seeds)}" if len(seeds) > 1 else "",
        seconds,
    )
    return FinetuneOutcome(
        setup.loaded.label,
        setup.name,
        dice,
        run_id,
        seconds,
        reused=all(s.reused for s in seeds),
        seed_dice={s.seed: s.dice for s in seeds},
        dice_sd=sd,
    )
