"""MLflow wiring of pre-training (the model bank) and fine-tuning (the measured Dice).

``pretrain_and_register``: train a MONAI network on a source task (:func:`mlflow_ccfv.study.pretrain`)
in a run (params = the budget, metric ``train_loss`` per step, ``training_curve.png``) and register
it through :func:`~mlflow_ccfv.tracking.registry.register_network` with the bank tags plus
``pretrain.*`` tags (the budget and the run). ``register_control``: the randomly initialised network
of an architecture (``source_dataset=random-init``), the control every study includes.

``finetune_version``: the paper's protocol on a target (all pre-trained parameters but the last
convolution, nothing frozen, Dice on the held-out 20%), recorded as

- a run ``finetune <model> on <dataset>``: params (model, dataset, digest, split, budget), the target's
  training manifest as input, metrics ``train_loss`` (per step), ``dice.<class>`` and
  ``finetune_dice``, artifacts ``training_curve.png`` and ``dice_per_case.csv``, and the fine-tuned
  network as a LoggedModel of that run;
- the version tag ``finetune.dice.<dataset>`` (and ``finetune.run.<dataset>``, ``finetune.budget.<dataset>``);
- the metric ``finetune_dice`` on the version's LoggedModel, linked to the same MLflow dataset as the
  transferability metrics of ``score``, so the Models tab shows both columns side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_ccfv.data import MSDDataset, PreprocessConfig
from mlflow_ccfv.features.networks import small_spec
from mlflow_ccfv.study.dice import DiceResult, evaluate_dice
from mlflow_ccfv.study.training import TrainConfig, finetune, pretrain, seeded_network
from mlflow_ccfv.tracking.datasets import make_target, short_name
from mlflow_ccfv.tracking.flavor import log_model
from mlflow_ccfv.tracking.registry import DEFAULT_BANK, BANK_TAG, load_version, register_network, registered_version
from mlflow_ccfv.tracking.runs import command_run

log = logging.getLogger(__name__)

CONTROL_SOURCE = "random-init"
DICE_TAG = "finetune.dice.{dataset}"


def budget_digest(config: TrainConfig, **extra) -> str:
    """A short digest of a training budget (plus any other settings): equal budgets, equal digest."""
    payload = json.dumps({**config.to_dict(), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _load_dataset(dataset: str | Path | MSDDataset, data_root: str | Path | None) -> MSDDataset:
    return dataset if isinstance(dataset, MSDDataset) else MSDDataset.load(dataset, data_root=data_root)


def _select_channels(cases: list, channels: Sequence[int] | None) -> list:
    if channels is None:
        return cases
    channels = list(channels)
    for c in cases:
        if max(channels) >= c.image.shape[0]:
            raise ValueError(f"Case {c.case_id!r} has {c.image.shape[0]} channel(s); cannot select channels {channels}.")
        c.image = c.image[channels]
    return cases


def _curve_png(losses: Sequence[float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, color="tab:blue", alpha=0.5, label="step")
    if len(losses) >= 10:
        k = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, color="tab:blue", label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("Dice + CE loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _log_curve(losses: Sequence[float], title: str) -> None:
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", float(v), now, i) for i, v in enumerate(losses)]
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    for i in range(0, len(metrics), 1000):  # one request per 1000 steps, not one per step
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(_curve_png(losses, Path(tmp) / "training_curve.png", title)))


def _find_version(name: str, tags: dict[str, str]):
    """The newest version of ``name`` whose tags include ``tags`` (for reuse), or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.search_model_versions(filter_string=f"name = '{name}'")
    except MlflowException:
        return None
    matching = [v for v in found if all((v.tags or {}).get(k) == val for k, val in tags.items())]
    return max(matching, key=lambda v: int(v.version)) if matching else None


def bank_name(architecture: str, source: str, prefix: str = "") -> str:
    """Registered-model name of a bank entry: ``[<prefix>-]<arch>-<source>`` (``unet-Task03``)."""
    return "-".join(p for p in (prefix, architecture.lower(), source) if p)


def pretrain_and_register(
    source: str | Path | MSDDataset,
    architecture: str,
    config: TrainConfig,
    *,
    name: str | None = None,
    bank: str = DEFAULT_BANK,
    data_root: str | Path | None = None,
    channels: Sequence[int] | None = None,
    preprocess: PreprocessConfig | None = None,
    reuse: bool = True,
    progress: bool = True,
):
    """Pre-train ``architecture`` (a CPU-sized :func:`small_spec`) on every case of ``source`` and
    register it in ``bank``. ``channels`` selects input channels (e.g. ``[0]``: BRATS's FLAIR only,
    to match 1-channel CT targets). With ``reuse``, an existing version of the same name, source,
    bank and budget is returned instead of training again. Returns the ``ModelVersion``.
    """
    import mlflow

    ds = _load_dataset(source, data_root)
    src = short_name(ds)
    name = name or bank_name(architecture, src)
    channel_text = ",".join(map(str, channels)) if channels is not None else "all"
    digest = budget_digest(config, architecture=architecture, channels=channel_text, dataset=ds.digest())
    wanted = {"source_dataset": src, BANK_TAG: bank, "pretrain.budget": digest}
    if reuse and (existing := _find_version(name, wanted)) is not None:
        log.info("reusing %s/%s (pre-trained on %s, same budget)", name, existing.version, src)
        return existing
    cases = _select_channels(list(ds.iter_cases(config=preprocess, progress=progress)), channels)
    in_channels = int(cases[0].image.shape[0])
    spec = small_spec(architecture, in_channels, len(ds.labels), config.patch_size)
    with command_run(f"pretrain {name}") as run:
        mlflow.set_tags({"ccfv.stage": "pretrain", "ccfv.model": name})
        mlflow.log_params({"source_dataset": src, "architecture": architecture, "n_cases": len(cases),
                           "channels": channel_text, "spec": spec.to_json()[:6000],
                           **{f"train.{k}": v for k, v in config.to_dict().items()}})
        result = pretrain(spec, cases, config, progress=progress, desc=f"pretrain {name}")
        _log_curve(result.losses, f"pre-training {name} on {src}")
        mlflow.log_metrics({"train_seconds": result.seconds, "final_loss": result.losses[-1]})
        extra = {"pretrain.steps": config.steps, "pretrain.batch_size": config.batch_size,
                 "pretrain.patch_size": "x".join(map(str, config.patch_size)), "pretrain.seed": config.seed,
                 "pretrain.learning_rate": config.learning_rate, "pretrain.channels": channel_text,
                 "pretrain.budget": digest, "pretrain.run_id": run.info.run_id,
                 "pretrain.seconds": f"{result.seconds:.1f}"}
        mv = register_network(spec, result.model.state_dict(), name, src, bank=bank, extra_tags=extra,
                              patch_size=config.patch_size,
                              description=f"{architecture} pre-trained on {src} for {config.steps} steps")
        mlflow.set_tag("ccfv.registered", f"models:/{mv.name}/{mv.version}")
    log.info("registered %s/%s: %s pre-trained on %s (%d steps, %.0f s)", mv.name, mv.version, architecture,
             src, config.steps, result.seconds)
    return mv


def register_control(architecture: str, in_channels: int, out_channels: int, patch_size: Sequence[int], *,
                     bank: str = DEFAULT_BANK, seed: int = 0, name: str | None = None, reuse: bool = True):
    """Register the randomly initialised ``architecture`` (tag ``source_dataset=random-init``)."""
    patch = tuple(int(s) for s in patch_size)
    name = name or bank_name(architecture, CONTROL_SOURCE)
    wanted = {"source_dataset": CONTROL_SOURCE, BANK_TAG: bank, "pretrain.steps": "0", "pretrain.seed": str(seed),
              "patch_size": ",".join(map(str, patch))}
    if reuse and (existing := _find_version(name, wanted)) is not None:
        return existing
    spec = small_spec(architecture, in_channels, out_channels, patch)
    state = seeded_network(spec, seed).state_dict()
    return register_network(spec, state, name, CONTROL_SOURCE, bank=bank, patch_size=patch,
                            extra_tags={"pretrain.steps": 0, "pretrain.seed": seed},
                            description=f"{architecture}, randomly initialised (seed {seed}): the control")


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
    model_uri,
    dataset: str | Path | MSDDataset,
    config: TrainConfig,
    *,
    data_root: str | Path | None = None,
    split_seed: int = 0,
    overlap: float = 0.5,
    preprocess: PreprocessConfig | None = None,
    cases: tuple[list, list] | None = None,
    force: bool = False,
    log_finetuned_model: bool = True,
    progress: bool = True,
) -> FinetuneOutcome:
    """Fine-tune a registered version on ``dataset``'s training split and measure Dice on its test split.

    ``cases``: pre-loaded ``(train, test)`` cases (a study loads a target once for the whole bank).
    Unless ``force``, a version already tagged with this dataset's Dice for the same budget is not
    fine-tuned again (its tagged Dice is returned).
    """
    import mlflow

    ds = _load_dataset(dataset, data_root)
    target = make_target(ds, "train", seed=split_seed)
    name = target.name
    digest = budget_digest(config, split_seed=split_seed, overlap=overlap, dataset=target.digest)
    tag = DICE_TAG.format(dataset=name)
    mv = registered_version(model_uri)  # the tags, without downloading the weights
    tags = dict(mv.tags or {}) if mv is not None else {}
    if not force and tags.get(f"finetune.budget.{name}") == digest and tag in tags:
        label = f"{mv.name}/{mv.version}"
        log.info("%s already fine-tuned on %s with this budget: Dice %s (reused)", label, name, tags[tag])
        return FinetuneOutcome(label, name, DiceResult({}, float(tags[tag])), tags.get(f"finetune.run.{name}"),
                               0.0, reused=True)
    loaded = load_version(mv if mv is not None else model_uri)
    if loaded.spec is None:
        raise ValueError(
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
    with command_run(f"finetune {loaded.label} on {name}") as run:
        mlflow_ds = target.mlflow_dataset()
        mlflow.log_input(mlflow_ds, context="finetune")
        mlflow.log_input(make_target(ds, "test", seed=split_seed).mlflow_dataset(), context="evaluation")
        mlflow.set_tags({"ccfv.stage": "finetune", "ccfv.model": loaded.label, "ccfv.dataset": name})
        state = loaded.module.state_dict()
        result, new_spec = finetune(loaded.spec, state, train, num_classes, config, progress=progress,
                                    desc=f"finetune {loaded.label}")
        mlflow.log_params({
            "model_uri": f"models:/{loaded.label}" if loaded.name else loaded.uri, "model_id": loaded.model_id,
            "architecture": loaded.spec.architecture, "source_dataset": loaded.tags.get("source_dataset", ""),
            "dataset": name, "dataset_digest": target.digest, "split_seed": split_seed,
            "n_train": len(train), "n_test": len(test), "eval.overlap": overlap, "budget": digest,
            "n_reinitialised": len(result.reinitialised),
            "reinitialised": ",".join(result.reinitialised)[:6000],
            **{f"train.{k}": v for k, v in config.to_dict().items()},
        })
        _log_curve(result.losses, f"fine-tuning {loaded.label} on {name}")
        dice = evaluate_dice(result.model, test, num_classes, config.patch_size, overlap=overlap,
                             progress=progress, desc=f"evaluate {loaded.label}")
        seconds = time.perf_counter() - start
        per_class = {f"dice.{ds.labels[k]}": v for k, v in dice.per_class.items() if v == v}
        mlflow.log_metrics({**per_class, "finetune_dice": dice.mean, "finetune_seconds": seconds})
        with tempfile.TemporaryDirectory() as tmp:
            import pandas as pd

            table = pd.DataFrame([{"case_id": c, **{ds.labels[k]: v for k, v in d.items()}}
                                  for c, d in dice.per_case.items()])
            table.to_csv(Path(tmp) / "dice_per_case.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "dice_per_case.csv"))
        if log_finetuned_model:
            log_model(new_spec, result.model.state_dict(), name="finetuned",
                      tags={"ccfv.finetuned_from": loaded.label, "ccfv.dataset": name})
        # The bank version's LoggedModel gets the Dice next to its transferability metrics.
        if loaded.model_id:
            mlflow.log_metric("finetune_dice", dice.mean, model_id=loaded.model_id, dataset=mlflow_ds)
        run_id = run.info.run_id
    if loaded.name:
        client = mlflow.MlflowClient()
        client.set_model_version_tag(loaded.name, loaded.version, tag, f"{dice.mean:.6f}")
        client.set_model_version_tag(loaded.name, loaded.version, f"finetune.run.{name}", run_id)
        client.set_model_version_tag(loaded.name, loaded.version, f"finetune.budget.{name}", digest)
    log.info("%s fine-tuned on %s: Dice %.4f (%.0f s)", loaded.label, name, dice.mean, seconds)
    return FinetuneOutcome(loaded.label, name, dice, run_id, seconds)

