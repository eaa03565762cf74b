"""The ``finetune`` pipeline: the paper's protocol on a target, the measured Dice recorded in MLflow.

``finetune_version``: all pre-trained parameters but the last convolution, nothing frozen, Dice on the
held-out 20%, repeated for each fine-tuning seed (``seeds``, default the config's one seed), recorded as

- a run per seed ``finetune <model> on <dataset> (seed <s>)`` (with one seed: ``finetune <model> on <dataset>``): params (model, dataset, digest of that
  seed's budget, split), the target's training manifest as input, metrics ``train_loss`` (per step),
  ``dice.<class>`` and ``finetune_dice``, artifacts ``training_curve.png`` and ``dice_per_case.csv``
  (``case_id``, ``seed``, one column per foreground class), and the fine-tuned network as a
  LoggedModel of that run. With several seeds these runs are nested in one run
  ``finetune <model> on <dataset>`` that holds the metrics ``finetune_dice`` (the mean over seeds),
  ``finetune_dice_sd`` and ``finetune_dice.seed<s>``, and every seed's rows in its
  ``dice_per_case.csv``: the per-case, per-seed table the study's bootstrap resamples. With one seed
  that run is the seed's own run.
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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import IntensityNormalization, MSDDataset, PreprocessConfig, PreprocessedCase, make_target
from mlflow_ccfv.data.normalization import describe_normalization
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.pretrain import check_training_resources, load_dataset
from mlflow_ccfv.scoring.feature_cache import CACHE_ENV, DEFAULT_CACHE_DIR
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import mlflow_dataset
from mlflow_ccfv.tracking.flavor import log_model
from mlflow_ccfv.tracking.load import LoadedModel, load_version, version_normalization
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

__all__ = ["DICE_TABLE", "FinetuneOutcome", "budget_digest", "finetune_version"]

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


def _input_digest(dataset_digest: str, normalization: IntensityNormalization | None) -> str:
    """The digest of what a model is fine-tuned on: the target's, plus its own normalisation when it
    has one (so a version imported with its own normalisation never reuses Dice measured without it)."""
    if normalization is None:
        return dataset_digest
    return f"{dataset_digest}+{normalization.digest()}"


def _dice_table(dice: DiceResult, seed: int, labels: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"case_id": c, "seed": seed, **{labels[k]: v for k, v in d.items()}} for c, d in dice.per_case.items()]
    )


def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")


def finetune_version(
    model_uri: str | ModelVersion,
    dataset: str | Path | MSDDataset,
    config: TrainConfig,
    *,
    data_root: str | Path | None = None,
    split_seed: int = 0,
    overlap: float = 0.5,
    preprocess: PreprocessConfig | None = None,
    cases: tuple[list[PreprocessedCase], list[PreprocessedCase]] | None = None,
    force: bool = False,
    log_finetuned_model: bool = True,
    progress: bool = True,
    device: str | None = None,
    seeds: Sequence[int] | None = None,
    checkpoint_every: int = 50,
    checkpoint_dir: str | Path | None = None,
    allow_pickle: bool | None = None,
    parent_run_id: str | None = None,
    tag_version: bool = True,
    recombine: bool = False,
) -> FinetuneOutcome:
    """Fine-tune a registered version on ``dataset``'s training split and measure Dice on its test split,
    once per seed in ``seeds`` (default: ``config.seed`` only).

    ``cases``: pre-loaded ``(train, test)`` cases (a study loads a target once for the whole bank).
    Unless ``force``, a version already tagged with this dataset's Dice for the same budget (seeds
    included) is not fine-tuned again (its tagged Dice is returned), and a seed already measured by a
    finished run with the same per-seed budget is read back from that run. ``device``: where to
    fine-tune and evaluate (default CUDA when available, else CPU; checked before any work, with the
    memory the patch size needs). Every ``checkpoint_every`` steps (0: never) a seed's training state
    is saved under ``checkpoint_dir`` (default ``<cache>/finetune``) and a rerun after a kill resumes
    from it. ``allow_pickle``: see :func:`~mlflow_ccfv.tracking.load.pickle_allowed`
    (fine-tuning needs a network spec anyway). ``parent_run_id``: the run to nest under when there is
    no active run (a Ray task of a study). ``tag_version``: false records only the seeds' runs and
    leaves the version (its tags, its LoggedModel's Dice) alone: a Ray task measuring one seed of a
    multi-seed fine-tune, whose seeds the driver combines into the version's mean and sd.
    ``recombine``: train nothing; read every seed from its newest finished run (an error if one has
    none) and write the version's tags even when they already hold this budget (the Ray study's driver,
    once its per-seed tasks have re-measured the seeds).
    """
    check_training_resources(config, device)
    seeds = tuple(int(s) for s in (seeds if seeds is not None else (config.seed,)))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one; got {list(seeds)}.")
    if force and recombine:
        raise ValueError("force re-trains every seed and recombine trains none: pass one of them.")
    ds = load_dataset(dataset, data_root)
    target = make_target(ds, "train", seed=split_seed)
    name = target.name
    tag = T.dice_tag(name)
    mv = registered_version(model_uri)  # the tags, without downloading the weights
    tags = dict(mv.tags or {}) if mv is not None else {}
    # an imported version's own normalisation is part of what it is fine-tuned on
    data_digest = _input_digest(target.digest, version_normalization(tags, f"{mv.name}/{mv.version}") if mv else None)
    digest = budget_digest(config, seeds, split_seed, overlap, data_digest)
    if not force and not recombine and tags.get(T.finetune_budget_tag(name)) == digest and tag in tags:
        label = f"{mv.name}/{mv.version}"
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
    run_on = resolve_device(device)
    loaded = load_version(mv if mv is not None else model_uri, allow_pickle=allow_pickle)
    if loaded.spec is None:
        raise RegistryError(
            f"{loaded.label} is an mlflow.pytorch model without a network specification; fine-tuning re-creates "
            "the last convolution from the spec, so register it with register_network (a MONAI spec + weights)."
        )
    normalization = loaded.normalization
    if cases is None or normalization is not None:
        if cases is not None:
            _logger.info("%s: loading %s with its own normalisation (%s)", loaded.label, name, normalization)
        split = ds.split(seed=split_seed)
        train = list(ds.iter_cases(split.train, config=preprocess, progress=progress, normalization=normalization))
        test = list(ds.iter_cases(split.test, config=preprocess, progress=progress, normalization=normalization))
    else:
        train, test = cases
    data_digest = _input_digest(target.digest, normalization)  # also for a models:/m-... URI (no version tags)
    digest = budget_digest(config, seeds, split_seed, overlap, data_digest)
    labels = ds.labels
    start = time.perf_counter()
    results: dict[int, tuple[float, pd.DataFrame, DiceResult | None, str]] = {}
    mlflow_ds = mlflow_dataset(target)
    reused_all = True

    def one_seed(seed: int) -> None:
        nonlocal reused_all
        seed_config = dataclasses.replace(config, seed=seed)
        seed_digest = seed_config.digest(split_seed=split_seed, overlap=overlap, dataset=data_digest)
        done = (
            None if force else finished_run({"budget": seed_digest}, {T.RUN_MODEL: loaded.label, T.RUN_DATASET: name})
        )
        if done is None and recombine:
            raise RuntimeError(
                f"{loaded.label} on {name}: seed {seed} has no finished fine-tuning run to combine; "
                "run the fine-tune (or the study) again."
            )
        if done is not None:
            table = run_csv(done, DICE_TABLE)
            if "seed" not in table.columns:
                table.insert(1, "seed", seed)
            value = float(mlflow.MlflowClient().get_run(done).data.metrics[T.FINETUNE_DICE])
            _logger.info(
                "%s on %s, seed %d: Dice %.4f measured by run %s (reused)", loaded.label, name, seed, value, done
            )
            results[seed] = (value, table, None, done)
            return
        reused_all = False
        checkpoint = None
        if checkpoint_every:
            folder = Path(checkpoint_dir) if checkpoint_dir else Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
            checkpoint = TrainingCheckpoint(
                (folder if checkpoint_dir else folder / "finetune") / f"{loaded.model_id or 'model'}-{seed_digest}.pt",
                every=checkpoint_every,
                fingerprint=f"{loaded.model_id}/{seed_digest}",
            )
        dice, seed_run = _finetune_seed(
            loaded,
            ds,
            target,
            mlflow_ds,
            train,
            test,
            seed_config,
            seed_digest,
            split_seed=split_seed,
            overlap=overlap,
            log_finetuned_model=log_finetuned_model,
            link_version=len(seeds) == 1 and tag_version,
            progress=progress,
            device=run_on,
            checkpoint=checkpoint,
            parent_run_id=parent_run_id,
        )
        results[seed] = (dice.mean, _dice_table(dice, seed, labels), dice, seed_run)

    if len(seeds) == 1:
        one_seed(seeds[0])
        run_id = results[seeds[0]][3]
    else:
        with command_run(f"finetune {loaded.label} on {name}", parent_run_id=parent_run_id) as parent:
            mlflow.set_tags(
                {
                    T.RUN_STAGE: "finetune",
                    T.RUN_MODEL: loaded.label,
                    T.RUN_DATASET: name,
                    T.RUN_NORMALIZATION: describe_normalization(normalization)[:5000],
                }
            )
            mlflow.log_params(
                {
                    "model_uri": f"models:/{loaded.label}" if loaded.name else loaded.uri,
                    "dataset": name,
                    "dataset_digest": target.digest,
                    "split_seed": split_seed,
                    "seeds": T.format_seeds(seeds),
                    "budget": digest,
                    **T.prefixed_params("train", {k: v for k, v in config.to_dict().items() if k != "seed"}),
                }
            )
            for seed in seeds:
                one_seed(seed)
            values = [results[s][0] for s in seeds]
            mlflow.log_metrics(
                {
                    T.FINETUNE_DICE: float(np.mean(values)),
                    **({"finetune_dice_sd": _sd(values)} if len(values) >= 2 else {}),
                    **{T.seed_dice_metric(s): results[s][0] for s in seeds},
                }
            )
            with tempfile.TemporaryDirectory() as tmp:
                pd.concat([results[s][1] for s in seeds], ignore_index=True).to_csv(Path(tmp) / DICE_TABLE, index=False)
                mlflow.log_artifact(str(Path(tmp) / DICE_TABLE))
            if loaded.model_id and tag_version:  # the bank version's LoggedModel: the mean, beside its scores
                mlflow.log_metric(T.FINETUNE_DICE, float(np.mean(values)), model_id=loaded.model_id, dataset=mlflow_ds)
            run_id = parent.info.run_id
    seconds = time.perf_counter() - start
    values = [results[s][0] for s in seeds]
    mean, sd = float(np.mean(values)), _sd(values)
    if loaded.name and tag_version:
        client = mlflow.MlflowClient()
        version_tags = {
            tag: f"{mean:.6f}",
            T.finetune_seeds_tag(name): T.format_seeds(seeds),
            T.finetune_run_tag(name): run_id or "",
            T.finetune_budget_tag(name): digest,
        }
        if not math.isnan(sd):
            version_tags[T.dice_sd_tag(name)] = f"{sd:.6f}"
        for key, value in version_tags.items():
            retrying(client.set_model_version_tag, loaded.name, loaded.version, key, value, what=f"tag {key}")
        refresh_summaries([(str(loaded.name), str(loaded.version))])  # the description's Dice column
        log_dice_on_score_runs(loaded.label, name, mean)
    first = results[seeds[0]][2]
    dice = DiceResult(first.per_class if first else {}, mean, first.per_case if first else {})
    _logger.info(
        "%s fine-tuned on %s: Dice %.4f%s (%.0f s)",
        loaded.label,
        name,
        mean,
        f" ± {sd:.4f} over seeds {T.format_seeds(seeds)}" if len(seeds) > 1 else "",
        seconds,
    )
    return FinetuneOutcome(
        loaded.label,
        name,
        dice,
        run_id,
        seconds,
        reused=reused_all,
        seed_dice={s: results[s][0] for s in seeds},
        dice_sd=sd,
    )


def _finetune_seed(
    loaded: LoadedModel,
    ds: MSDDataset,
    target,
    mlflow_ds,
    train: list[PreprocessedCase],
    test: list[PreprocessedCase],
    config: TrainConfig,
    digest: str,
    *,
    split_seed: int,
    overlap: float,
    log_finetuned_model: bool,
    link_version: bool,
    progress: bool,
    device,
    checkpoint: TrainingCheckpoint | None = None,
    parent_run_id: str | None = None,
) -> tuple[DiceResult, str]:
    """One seed's fine-tuning and evaluation in its own run (nested in the active one, if any);
    returns the Dice and the run id. ``link_version``: log the Dice on the version's LoggedModel.
    ``checkpoint``: save and resume the training; the run is keyed (``ccfv.run_key``) by the model and
    the seed's budget, and replaces the earlier (killed) runs of its key once it has finished."""
    key = T.run_key(loaded.model_id or loaded.label, digest)
    name = target.name
    num_classes = len(ds.labels)
    start = time.perf_counter()
    labels = ds.labels
    suffix = "" if link_version else f" (seed {config.seed})"  # one seed: the fine-tuning's only run
    with command_run(f"finetune {loaded.label} on {name}{suffix}", parent_run_id=parent_run_id) as run:
        log_input(mlflow_ds, context="finetune")
        log_input(mlflow_dataset(make_target(ds, "test", seed=split_seed)), context="evaluation")
        mlflow.set_tags(
            {
                T.RUN_STAGE: "finetune",
                T.RUN_MODEL: loaded.label,
                T.RUN_DATASET: name,
                T.RUN_KEY: key,
                T.RUN_NORMALIZATION: describe_normalization(loaded.normalization)[:5000],
            }
        )
        state = loaded.module.state_dict()
        if loaded.spec is None:  # checked by the caller; keeps the type checker informed
            raise RegistryError(f"{loaded.label} has no network specification.")
        result, new_spec = finetune(
            loaded.spec,
            state,
            train,
            num_classes,
            config,
            progress=progress,
            desc=f"finetune {loaded.label}",
            device=device,
            checkpoint=checkpoint,
        )
        if result.resumed_from:
            mlflow.set_tag(T.RUN_RESUMED_FROM, str(result.resumed_from))
        mlflow.log_params(
            {
                "model_uri": f"models:/{loaded.label}" if loaded.name else loaded.uri,
                "model_id": loaded.model_id,
                "architecture": loaded.spec.architecture,
                "source_dataset": loaded.tags.get(T.SOURCE_DATASET, ""),
                "dataset": name,
                "dataset_digest": target.digest,
                "split_seed": split_seed,
                "n_train": len(train),
                "n_test": len(test),
                "eval.overlap": overlap,
                "budget": digest,
                "device": str(device),
                "n_reinitialised": len(result.reinitialised),
                "reinitialised": ",".join(result.reinitialised)[:6000],
                **T.prefixed_params("train", config.to_dict()),
            }
        )
        log_training_curve(result.losses, f"fine-tuning {loaded.label} on {name}")
        dice = evaluate_dice(
            result.model,
            test,
            num_classes,
            config.patch_size,
            overlap=overlap,
            progress=progress,
            desc=f"evaluate {loaded.label}",
            device=device,
        )
        seconds = time.perf_counter() - start
        per_class = {f"dice.{labels[k]}": v for k, v in dice.per_class.items() if v == v}
        mlflow.log_metrics({**per_class, T.FINETUNE_DICE: dice.mean, "finetune_seconds": seconds})
        with tempfile.TemporaryDirectory() as tmp:
            _dice_table(dice, config.seed, labels).to_csv(Path(tmp) / DICE_TABLE, index=False)
            mlflow.log_artifact(str(Path(tmp) / DICE_TABLE))
        if log_finetuned_model:
            log_model(
                new_spec,
                result.model.state_dict(),
                name="finetuned",
                tags={T.FINETUNED_FROM: loaded.label, T.RUN_DATASET: name},
                patch_size=config.patch_size,
            )
        # The bank version's LoggedModel gets the Dice next to its transferability metrics
        # (a multi-seed fine-tuning logs the mean there instead).
        if link_version and loaded.model_id:
            mlflow.log_metric(T.FINETUNE_DICE, dice.mean, model_id=loaded.model_id, dataset=mlflow_ds)
    delete_replaced_runs(key, keep=run.info.run_id)  # a killed or earlier run of this model and seed budget
    if checkpoint is not None:
        checkpoint.remove()
    _logger.info("%s on %s, seed %d: Dice %.4f (%.0f s)", loaded.label, name, config.seed, dice.mean, seconds)
    return dice, run.info.run_id
