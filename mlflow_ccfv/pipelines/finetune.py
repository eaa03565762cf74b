"""The ``finetune`` pipeline: the paper's protocol on a target, the measured Dice recorded in MLflow.

``finetune_version``: all pre-trained parameters but the last convolution, nothing frozen, Dice on the
held-out 20%, recorded as

- a run ``finetune <model> on <dataset>``: params (model, dataset, digest, split, budget), the target's
  training manifest as input, metrics ``train_loss`` (per step), ``dice.<class>`` and
  ``finetune_dice``, artifacts ``training_curve.png`` and ``dice_per_case.csv``, and the fine-tuned
  network as a LoggedModel of that run;
- the version tag ``finetune.dice.<dataset>`` (and ``finetune.run.<dataset>``, ``finetune.budget.<dataset>``);
- the metric ``finetune_dice`` on the version's LoggedModel, linked to the same MLflow dataset as the
  transferability metrics of ``score``, so the Models tab shows both columns side by side.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset, PreprocessConfig, PreprocessedCase, make_target
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.pipelines.pretrain import load_dataset
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import mlflow_dataset
from mlflow_ccfv.tracking.flavor import log_model
from mlflow_ccfv.tracking.registry import load_version, registered_version
from mlflow_ccfv.tracking.runs import command_run, log_dice_on_score_runs, log_training_curve
from mlflow_ccfv.training import DiceResult, TrainConfig, evaluate_dice, finetune

__all__ = ["FinetuneOutcome", "finetune_version"]

_logger = logging.getLogger(__name__)


@dataclass
class FinetuneOutcome:
    """``dice``: held-out Dice; ``run_id``: the fine-tune run; ``seconds``: training + evaluation time."""

    model: str
    dataset: str
    dice: DiceResult
    run_id: str | None
    seconds: float
    reused: bool = False


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
    parent_run_id: str | None = None,
) -> FinetuneOutcome:
    """Fine-tune a registered version on ``dataset``'s training split and measure Dice on its test split.

    ``cases``: pre-loaded ``(train, test)`` cases (a study loads a target once for the whole bank).
    Unless ``force``, a version already tagged with this dataset's Dice for the same budget is not
    fine-tuned again (its tagged Dice is returned). ``device``: where to fine-tune and evaluate (default
    CUDA when available, else CPU). ``parent_run_id``: the run to nest under when there is no active
    run (a Ray task of a study).
    """
    ds = load_dataset(dataset, data_root)
    target = make_target(ds, "train", seed=split_seed)
    name = target.name
    digest = config.digest(split_seed=split_seed, overlap=overlap, dataset=target.digest)
    tag = T.dice_tag(name)
    mv = registered_version(model_uri)  # the tags, without downloading the weights
    tags = dict(mv.tags or {}) if mv is not None else {}
    if not force and tags.get(T.finetune_budget_tag(name)) == digest and tag in tags:
        label = f"{mv.name}/{mv.version}"
        _logger.info("%s already fine-tuned on %s with this budget: Dice %s (reused)", label, name, tags[tag])
        return FinetuneOutcome(
            label, name, DiceResult({}, float(tags[tag])), tags.get(T.finetune_run_tag(name)), 0.0, reused=True
        )
    run_on = resolve_device(device)
    loaded = load_version(mv if mv is not None else model_uri)
    if loaded.spec is None:
        raise RegistryError(
            f"{loaded.label} is an mlflow.pytorch model without a network specification; fine-tuning re-creates "
            "the last convolution from the spec, so register it with register_network (a MONAI spec + weights)."
        )
    if cases is None:
        split = ds.split(seed=split_seed)
        train = list(ds.iter_cases(split.train, config=preprocess, progress=progress))
        test = list(ds.iter_cases(split.test, config=preprocess, progress=progress))
    else:
        train, test = cases
    num_classes = len(ds.labels)
    start = time.perf_counter()
    with command_run(f"finetune {loaded.label} on {name}", parent_run_id=parent_run_id) as run:
        mlflow_ds = mlflow_dataset(target)
        mlflow.log_input(mlflow_ds, context="finetune")
        mlflow.log_input(mlflow_dataset(make_target(ds, "test", seed=split_seed)), context="evaluation")
        mlflow.set_tags({T.RUN_STAGE: "finetune", T.RUN_MODEL: loaded.label, T.RUN_DATASET: name})
        state = loaded.module.state_dict()
        result, new_spec = finetune(
            loaded.spec,
            state,
            train,
            num_classes,
            config,
            progress=progress,
            desc=f"finetune {loaded.label}",
            device=run_on,
        )
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
                "device": str(run_on),
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
            device=run_on,
        )
        seconds = time.perf_counter() - start
        per_class = {f"dice.{ds.labels[k]}": v for k, v in dice.per_class.items() if v == v}
        mlflow.log_metrics({**per_class, T.FINETUNE_DICE: dice.mean, "finetune_seconds": seconds})
        with tempfile.TemporaryDirectory() as tmp:
            table = pd.DataFrame(
                [{"case_id": c, **{ds.labels[k]: v for k, v in d.items()}} for c, d in dice.per_case.items()]
            )
            table.to_csv(Path(tmp) / "dice_per_case.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "dice_per_case.csv"))
        if log_finetuned_model:
            log_model(
                new_spec,
                result.model.state_dict(),
                name="finetuned",
                tags={"ccfv.finetuned_from": loaded.label, T.RUN_DATASET: name},
            )
        # The bank version's LoggedModel gets the Dice next to its transferability metrics.
        if loaded.model_id:
            mlflow.log_metric(T.FINETUNE_DICE, dice.mean, model_id=loaded.model_id, dataset=mlflow_ds)
        run_id = run.info.run_id
    if loaded.name:
        client = mlflow.MlflowClient()
        client.set_model_version_tag(loaded.name, loaded.version, tag, f"{dice.mean:.6f}")
        client.set_model_version_tag(loaded.name, loaded.version, T.finetune_run_tag(name), run_id)
        client.set_model_version_tag(loaded.name, loaded.version, T.finetune_budget_tag(name), digest)
        log_dice_on_score_runs(loaded.label, name, dice.mean)
    _logger.info("%s fine-tuned on %s: Dice %.4f (%.0f s)", loaded.label, name, dice.mean, seconds)
    return FinetuneOutcome(loaded.label, name, dice, run_id, seconds)
