"""The ``pretrain`` pipeline: train a bank model on a source task and register it, and the random-init controls.

``pretrain_and_register``: train a MONAI network on a source task (:func:`mlflow_ccfv.training.pretrain`)
in a run (params = the budget, metric ``train_loss`` per step, ``training_curve.png``) and register
it through :func:`~mlflow_ccfv.tracking.registry.register_network` with the bank tags plus
``pretrain.*`` tags (the budget and the run). ``register_control``: the randomly initialised network
of an architecture (``source_dataset=random-init``), the control every study includes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset, PreprocessConfig, PreprocessedCase, short_name
from mlflow_ccfv.networks import resolve_device, small_spec
from mlflow_ccfv.options import format_ints
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.datasets import load_msd_dataset
from mlflow_ccfv.tracking.registry import DEFAULT_BANK, find_version, register_network
from mlflow_ccfv.tracking.runs import command_run, log_training_curve
from mlflow_ccfv.training import TrainConfig, pretrain, seeded_network

__all__ = ["CONTROL_SOURCE", "bank_name", "load_dataset", "pretrain_and_register", "register_control"]

_logger = logging.getLogger(__name__)

#: ``source_dataset`` of the randomly initialised controls.
CONTROL_SOURCE = "random-init"


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
    device: str | None = None,
) -> ModelVersion:
    """Pre-train ``architecture`` (a CPU-sized :func:`small_spec`) on every case of ``source`` and
    register it in ``bank``. ``channels`` selects input channels (e.g. ``[0]``: BRATS's FLAIR only,
    to match 1-channel CT targets). With ``reuse``, an existing version of the same name, source,
    bank and budget is returned instead of training again (whatever device trained it). ``device``:
    where to train (default CUDA when available, else CPU). Returns the ``ModelVersion``.
    """
    ds = load_dataset(source, data_root)
    src = short_name(ds)
    name = name or bank_name(architecture, src)
    channel_text = ",".join(map(str, channels)) if channels is not None else "all"
    digest = config.digest(architecture=architecture, channels=channel_text, dataset=ds.digest())
    wanted = {T.SOURCE_DATASET: src, T.BANK: bank, T.pretrain_tag("budget"): digest}
    if reuse and (existing := find_version(name, wanted)) is not None:
        _logger.info("reusing %s/%s (pre-trained on %s, same budget)", name, existing.version, src)
        return existing
    run_on = resolve_device(device)
    cases = _select_channels(list(ds.iter_cases(config=preprocess, progress=progress)), channels)
    in_channels = int(cases[0].image.shape[0])
    spec = small_spec(architecture, in_channels, len(ds.labels), config.patch_size)
    with command_run(f"pretrain {name}") as run:
        mlflow.set_tags({T.RUN_STAGE: "pretrain", T.RUN_MODEL: name})
        mlflow.log_params(
            {
                "source_dataset": src,
                "architecture": architecture,
                "n_cases": len(cases),
                "channels": channel_text,
                "spec": spec.to_json()[:6000],
                "device": str(run_on),
                **T.prefixed_params("train", config.to_dict()),
            }
        )
        result = pretrain(spec, cases, config, progress=progress, desc=f"pretrain {name}", device=run_on)
        log_training_curve(result.losses, f"pre-training {name} on {src}")
        mlflow.log_metrics({"train_seconds": result.seconds, "final_loss": result.losses[-1]})
        extra = {
            T.pretrain_tag(k): v
            for k, v in {
                "steps": config.steps,
                "batch_size": config.batch_size,
                "patch_size": "x".join(map(str, config.patch_size)),
                "seed": config.seed,
                "learning_rate": config.learning_rate,
                "channels": channel_text,
                "budget": digest,
                "run_id": run.info.run_id,
                "seconds": f"{result.seconds:.1f}",
            }.items()
        }
        mv = register_network(
            spec,
            result.model.state_dict(),
            name,
            src,
            bank=bank,
            extra_tags=extra,
            patch_size=config.patch_size,
            description=f"{architecture} pre-trained on {src} for {config.steps} steps",
        )
        mlflow.set_tag("ccfv.registered", f"models:/{mv.name}/{mv.version}")
    _logger.info(
        "registered %s/%s: %s pre-trained on %s (%d steps, %.0f s)",
        mv.name,
        mv.version,
        architecture,
        src,
        config.steps,
        result.seconds,
    )
    return mv


def register_control(
    architecture: str,
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int],
    *,
    bank: str = DEFAULT_BANK,
    seed: int = 0,
    name: str | None = None,
    reuse: bool = True,
) -> ModelVersion:
    """Register the randomly initialised ``architecture`` (tag ``source_dataset=random-init``)."""
    patch = tuple(int(s) for s in patch_size)
    name = name or bank_name(architecture, CONTROL_SOURCE)
    wanted = {
        T.SOURCE_DATASET: CONTROL_SOURCE,
        T.BANK: bank,
        T.pretrain_tag("steps"): "0",
        T.pretrain_tag("seed"): str(seed),
        T.PATCH_SIZE: format_ints(patch),
    }
    if reuse and (existing := find_version(name, wanted)) is not None:
        return existing
    spec = small_spec(architecture, in_channels, out_channels, patch)
    state = seeded_network(spec, seed).state_dict()
    return register_network(
        spec,
        state,
        name,
        CONTROL_SOURCE,
        bank=bank,
        patch_size=patch,
        extra_tags={T.pretrain_tag("steps"): 0, T.pretrain_tag("seed"): seed},
        description=f"{architecture}, randomly initialised (seed {seed}): the control",
    )
