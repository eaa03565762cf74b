"""The ``pretrain`` pipeline: train a bank model on a source task and register it.

``pretrain_checkpoints``: train a MONAI network on a source task (:func:`mlflow_ccfv.training.pretrain`)
in a run (params = the budget, metric ``train_loss`` per step, ``training_curve.png``) and register
it through :func:`~mlflow_ccfv.tracking.register.register_network` with the bank tags plus
``pretrain.*`` tags (the budget and the run); what to train is one :class:`PretrainRequest`. The
random-init controls live in :mod:`mlflow_ccfv.pipelines.controls`.

Did the bank learn its source? With ``source_holdout`` (default) a model is pre-trained on its
source's 80% split only and its Dice on the held-out 20% is measured (DiceMetric, sliding window,
as for fine-tuning): the version tag ``pretrain.source_dice`` and the run metric ``source_dice``.
A request can add a pre-training curve: the source Dice every ``curve_every`` steps (metric
``source_dice`` per step) and, with ``early_step``, the network at that step registered as a second
version ``<name>-early`` (tag ``pretrain.checkpoint=early``; the last step's is ``final``), so a bank
spans model quality the way a real model zoo does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset, PreprocessConfig, PreprocessedCase, short_name
from mlflow_ccfv.features.resources import check_memory, training_bytes
from mlflow_ccfv.networks import NetworkSpec, resolve_device, small_spec
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import load_msd_dataset
from mlflow_ccfv.tracking.register import register_network
from mlflow_ccfv.tracking.runs import command_run, log_training_curve
from mlflow_ccfv.tracking.search import DEFAULT_BANK, check_name, find_version
from mlflow_ccfv.training import TrainConfig, TrainResult, evaluate_dice, pretrain

__all__ = [
    "PretrainRequest",
    "bank_name",
    "check_training_resources",
    "load_dataset",
    "pretrain_and_register",
    "pretrain_checkpoints",
]

_logger = logging.getLogger(__name__)


def load_dataset(dataset: str | Path | MSDDataset, data_root: str | Path | None) -> MSDDataset:
    """``dataset`` as is, a logged dataset (``runs:/<run_id>/<folder>``, downloaded once and verified), or
    the task folder it names (under ``data_root``)."""
    return load_msd_dataset(dataset, data_root)


def _select_channels(cases: list[PreprocessedCase], channels: Sequence[int] | None) -> list[PreprocessedCase]:
    if channels is None:
        return cases
    channels = list(channels)
    for c in cases:
        if max(channels) >= c.image.shape[0]:
            raise ValueError(
                f"Case {c.case_id!r} has {c.image.shape[0]} channel(s); cannot select channels {channels}."
            )
        c.image = c.image[channels]
    return cases


def check_training_resources(config: TrainConfig, device: str | None = None) -> str:
    """Refuse before any work a ``device`` that does not exist here, or a patch size and batch whose
    memory lower bound (:func:`~mlflow_ccfv.features.resources.training_bytes`) exceeds the available
    memory. Returns the device to train on."""
    chosen = str(resolve_device(device or None))
    check_memory(
        training_bytes(config.patch_size, config.batch_size),
        "--patch-size",
        config.patch_size,
        f"lower --patch-size or --batch-size (now {config.batch_size}).",
    )
    return chosen


def bank_name(architecture: str, source: str, prefix: str = "") -> str:
    """Registered-model name of a bank entry: ``[<prefix>-]<arch>-<source>`` (``unet-Task03``)."""
    return "-".join(p for p in (prefix, architecture.lower(), source) if p)


@dataclass(frozen=True)
class PretrainRequest:
    """One bank entry to pre-train: ``architecture`` (a CPU-sized :func:`small_spec`) trained on ``source``
    (a dataset, a task folder under ``data_root`` or a logged dataset) with ``config``, registered as
    ``name`` (default ``<architecture>-<source>``, :func:`bank_name`) in ``bank``.

    ``channels`` selects input channels (e.g. ``(0,)``: BRATS's FLAIR only, to match 1-channel CT
    targets). ``source_holdout``: train on the source's 80% split and tag the Dice on its 20%
    (``pretrain.source_dice``); else train on every case. With ``reuse``, an existing version of the
    same name, source, bank and budget is returned instead of training again (whatever device trained
    it). ``curve_every``: measure the source Dice every that many steps (needs ``source_holdout``);
    ``early_step`` (a multiple of ``curve_every`` below ``config.steps``): also register that step's
    network as ``<name>-early``. ``device``: where to train (default CUDA when available, else CPU).
    Refused when built: an unknown architecture, an invalid bank or model name, an ``early_step`` off
    the curve, a curve without the held-out cases.
    """

    source: str | Path | MSDDataset
    architecture: str
    config: TrainConfig
    name: str | None = None
    bank: str = DEFAULT_BANK
    data_root: str | Path | None = None
    channels: Sequence[int] | None = None
    preprocess: PreprocessConfig | None = None
    reuse: bool = True
    source_holdout: bool = True
    curve_every: int = 0
    early_step: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        config, early = self.config, self.early_step
        small_spec(self.architecture, 1, 2, config.patch_size)  # an unknown architecture is refused before any work
        check_name("bank", self.bank)
        if self.name is not None:
            check_name("Registered model name", self.name)
        if early is not None and (not self.curve_every or early % self.curve_every or not 0 < early < config.steps):
            raise ValueError(
                f"early_step ({early}) must be a multiple of curve_every ({self.curve_every}) between 0 and the "
                f"pre-training steps ({config.steps}); e.g. curve_every={max(1, config.steps // 4)}, "
                f"early_step={max(1, config.steps // 4)}."
            )
        if self.curve_every and not self.source_holdout:
            raise ValueError("A pre-training curve measures the source Dice on held-out cases: keep source_holdout.")


def pretrain_and_register(request: PretrainRequest, progress: bool = True) -> ModelVersion:
    """Pre-train and register ``request`` (:func:`pretrain_checkpoints`); returns the final version."""
    return pretrain_checkpoints(request, progress)[-1]


def pretrain_checkpoints(request: PretrainRequest, progress: bool = True) -> list[ModelVersion]:
    """Pre-train ``request.architecture`` on its source in a run and register it, with the pre-training
    curve and early checkpoint the request asks for: the source Dice every ``curve_every`` steps (run
    metric ``source_dice`` at that step) and, with ``early_step``, the network at that step registered
    as ``<name>-early`` (tag ``pretrain.checkpoint=early``, ``pretrain.steps`` = the step) besides the
    final one (``pretrain.checkpoint=final``). Returns ``[early, final]`` or ``[final]`` (reused when
    ``request.reuse`` finds them registered with the same budget).
    """
    check_training_resources(request.config, request.device)
    ds = load_dataset(request.source, request.data_root)
    entry = _entry(request, ds)
    if request.reuse and (reused := _reused(entry, request.early_step)) is not None:
        _logger.info("reusing %s/%s (pre-trained on %s, same budget)", entry.name, reused[-1].version, entry.source)
        return reused
    cases = _source_cases(request, ds, progress)
    with command_run(f"pretrain {entry.name}") as run:
        trained = _train(request, entry, cases, progress)
        out = _register_checkpoints(request, entry, trained, run.info.run_id)
        mlflow.set_tag(T.RUN_REGISTERED, ",".join(f"models:/{mv.name}/{mv.version}" for mv in out))
    for mv in out:
        _logger.info(
            "registered %s/%s: %s pre-trained on %s (%s steps, source Dice %s, %.0f s)",
            mv.name,
            mv.version,
            request.architecture,
            entry.source,
            mv.tags.get(T.pretrain_tag("steps")),
            mv.tags.get(T.PRETRAIN_SOURCE_DICE, "not measured"),
            trained.result.seconds,
        )
    return out


@dataclass(frozen=True)
class _Entry:
    """What identifies the versions a request registers: the source's short name, the model name, the
    channels (``0,1`` or ``all``) and the budget digest (everything the weights depend on), and the
    final and early versions' identifying tags."""

    source: str
    name: str
    channels: str
    budget: str
    tags: dict[str, str]
    early_tags: dict[str, str]

    @property
    def early_name(self) -> str:
        return f"{self.name}-early"


def _entry(request: PretrainRequest, ds: MSDDataset) -> _Entry:
    src = short_name(ds)
    channels = ",".join(map(str, request.channels)) if request.channels is not None else "all"
    budget = request.config.digest(
        architecture=request.architecture,
        channels=channels,
        dataset=ds.digest(),
        **({"holdout": "80/20 seed 0"} if request.source_holdout else {}),
    )
    tags = {T.SOURCE_DATASET: src, T.BANK: request.bank, T.pretrain_tag("budget"): budget}
    early_tags = {**tags, T.PRETRAIN_CHECKPOINT: "early", T.pretrain_tag("steps"): str(request.early_step)}
    return _Entry(src, request.name or bank_name(request.architecture, src), channels, budget, tags, early_tags)


def _reused(entry: _Entry, early_step: int | None) -> list[ModelVersion] | None:
    """The versions registered before with the same identity (``[early, final]`` or ``[final]``), or None
    when one of them is missing."""
    existing = find_version(entry.name, entry.tags)
    if existing is None:
        return None
    if early_step is None:
        return [existing]
    early = find_version(entry.early_name, entry.early_tags)
    return None if early is None else [early, existing]


@dataclass(frozen=True)
class _SourceCases:
    """The pre-processed source cases: ``train`` and ``held_out`` (empty without a hold-out), the
    number of label classes."""

    train: list[PreprocessedCase]
    held_out: list[PreprocessedCase]
    num_classes: int


def _source_cases(request: PretrainRequest, ds: MSDDataset, progress: bool) -> _SourceCases:
    def load(case_ids=None) -> list[PreprocessedCase]:
        cases = ds.iter_cases(case_ids, config=request.preprocess, progress=progress)
        return _select_channels(list(cases), request.channels)

    if request.source_holdout:
        split = ds.split(seed=0)
        return _SourceCases(load(split.train), load(split.test), len(ds.labels))
    return _SourceCases(load(), [], len(ds.labels))


@dataclass(frozen=True)
class _Trained:
    """A finished pre-training: its network ``spec``, the training result, the final source Dice (NaN
    when not measured), the curve (step -> source Dice) and the weights at the early step (if any)."""

    spec: NetworkSpec
    result: TrainResult
    source_dice: float
    curve: dict[int, float]
    early_state: dict | None


def _train(request: PretrainRequest, entry: _Entry, cases: _SourceCases, progress: bool) -> _Trained:
    """Train in the active run: log the parameters, the curve, the loss and the final source Dice."""
    config, run_on = request.config, resolve_device(request.device)
    spec = small_spec(request.architecture, int(cases.train[0].image.shape[0]), cases.num_classes, config.patch_size)
    _log_params(request, entry, cases, spec, str(run_on))
    curve: dict[int, float] = {}
    early: dict[str, dict] = {}

    def checkpoint(step: int, model) -> None:
        curve[step] = _source_dice(model, cases, config, progress=False, device=run_on)
        mlflow.log_metric(T.SOURCE_DICE_METRIC, curve[step], step=step)
        _logger.info("pretrain %s: step %d/%d, source Dice %.4f", entry.name, step, config.steps, curve[step])
        if step == request.early_step:
            early["state"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    result = pretrain(
        spec,
        cases.train,
        config,
        progress=progress,
        desc=f"pretrain {entry.name}",
        checkpoint_every=request.curve_every,
        on_checkpoint=checkpoint if request.curve_every else None,
        device=run_on,
    )
    log_training_curve(result.losses, f"pre-training {entry.name} on {entry.source}")
    mlflow.log_metrics({"train_seconds": result.seconds, "final_loss": result.losses[-1]})
    source_dice = float("nan")
    if cases.held_out:
        source_dice = _source_dice(result.model, cases, config, progress, device=run_on)
        mlflow.log_metric(T.SOURCE_DICE_METRIC, source_dice, step=config.steps)
    return _Trained(spec, result, source_dice, curve, early.get("state"))


def _log_params(request: PretrainRequest, entry: _Entry, cases: _SourceCases, spec: NetworkSpec, device: str) -> None:
    mlflow.set_tags({T.RUN_STAGE: "pretrain", T.RUN_MODEL: entry.name})
    mlflow.log_params(
        {
            "source_dataset": entry.source,
            "architecture": request.architecture,
            "n_cases": len(cases.train),
            "n_held_out": len(cases.held_out),
            "channels": entry.channels,
            "spec": spec.to_json()[:6000],
            "curve_every": request.curve_every,
            "early_step": request.early_step,
            "device": device,
            **T.prefixed_params("train", request.config.to_dict()),
        }
    )


def _source_dice(model, cases: _SourceCases, config: TrainConfig, progress: bool, device=None) -> float:
    """Dice on the source's held-out cases; NaN (with a warning) when none of them has a foreground class."""
    try:
        return evaluate_dice(
            model,
            cases.held_out,
            cases.num_classes,
            config.patch_size,
            progress=progress,
            desc="source Dice",
            device=device,
        ).mean
    except ValueError as exc:
        _logger.warning("source Dice not measured: %s", exc)
        return float("nan")


@dataclass(frozen=True)
class _Checkpoint:
    """One network of a pre-training run to register: its version name, weights, steps, source Dice and
    ``pretrain.checkpoint`` tag (``early``/``final``; None without an early checkpoint)."""

    name: str
    state: dict
    steps: int
    dice: float
    tag: str | None


def _register_checkpoints(
    request: PretrainRequest, entry: _Entry, trained: _Trained, run_id: str
) -> list[ModelVersion]:
    """Register the early checkpoint (if the request has one) and the final network."""
    config, early_step = request.config, request.early_step
    checkpoints = []
    if early_step is not None and trained.early_state is not None:
        dice = trained.curve.get(early_step, float("nan"))
        checkpoints.append(_Checkpoint(entry.early_name, trained.early_state, early_step, dice, "early"))
    final = "final" if early_step else None
    checkpoints.append(
        _Checkpoint(entry.name, trained.result.model.state_dict(), config.steps, trained.source_dice, final)
    )
    common = {
        "batch_size": config.batch_size,
        "patch_size": "x".join(map(str, config.patch_size)),
        "seed": config.seed,
        "learning_rate": config.learning_rate,
        "channels": entry.channels,
        "budget": entry.budget,
        "run_id": run_id,
        "seconds": f"{trained.result.seconds:.1f}",
    }
    return [_register_checkpoint(request, entry.source, trained.spec, common, c, run_id) for c in checkpoints]


def _register_checkpoint(
    request: PretrainRequest, source: str, spec: NetworkSpec, common: dict, checkpoint: _Checkpoint, run_id: str
) -> ModelVersion:
    extra = {T.pretrain_tag(k): v for k, v in {**common, "steps": checkpoint.steps}.items()}
    if checkpoint.dice == checkpoint.dice:
        extra[T.PRETRAIN_SOURCE_DICE] = f"{checkpoint.dice:.6f}"
    if checkpoint.tag:
        extra[T.PRETRAIN_CHECKPOINT] = checkpoint.tag
    description = f"{request.architecture} pre-trained on {source} for {checkpoint.steps} steps"
    if checkpoint.tag:
        description += f" (the {checkpoint.tag} checkpoint of run {run_id})"
    return register_network(
        spec,
        checkpoint.state,
        checkpoint.name,
        source,
        bank=request.bank,
        extra_tags=extra,
        patch_size=request.config.patch_size,
        description=description,
    )
