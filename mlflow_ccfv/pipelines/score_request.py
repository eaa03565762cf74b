"""One ``score`` invocation as typed values, and the checks made before any work.

The command line parses its options into a :class:`ScoreRequest` (the sampler options through
:func:`sampler_overrides`, each error naming its option); :func:`~mlflow_ccfv.pipelines.score.run_score`
carries it out. What can be refused without loading a model is refused here: sampler settings, Ray
resources, an unusable device, an unwritable feature cache, a ROI whose memory lower bound exceeds the
available memory (:func:`check_resources`) or that dwarfs the target's volumes
(:func:`check_roi_against_volumes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.features import SamplerConfig
from mlflow_ccfv.features.resources import check_memory, inference_bytes
from mlflow_ccfv.networks import resolve_device
from mlflow_ccfv.options import ExecutorKind, TargetSplit, format_ints, parse_float, parse_int, parse_ints
from mlflow_ccfv.pipelines.score_task import ScoreConfig
from mlflow_ccfv.scoring import FeatureCache
from mlflow_ccfv.tracking.search import DEFAULT_BANK

__all__ = [
    "ScoreRequest",
    "check_resources",
    "check_roi_against_volumes",
    "sampler_overrides",
]


@dataclass(frozen=True)
class ScoreRequest:
    """Everything one ``score`` invocation needs, typed.

    ``dataset``: the target (a task name under ``data_root``, a folder, or a logged dataset
    ``runs:/<run_id>/<folder>``); ``bank``: the versions scored, unless ``models`` lists
    ``models:/<name>/<version>`` URIs; ``split``: the target's cases that score; ``config``: how each
    version is scored and what ranks them; ``verify``: run the dataset integrity check first;
    ``executor`` (``serial``/``ray``, with ``ray_address`` and ``num_cpus``, ``num_gpus`` per task): where
    the versions are scored; ``log_dataset``: upload the target folder first (``log-dataset``; nothing
    if already logged) and let the workers read it from there; ``add_twins``: register and score the
    random-init twin of every network of the scored versions that has none in its bank
    (:func:`~mlflow_ccfv.pipelines.pretrain.register_twins`; no training, one more version per network):
    the references of a twin-calibrated ranking, and with any ranking the check that no random network
    beats every pre-trained model.
    """

    dataset: str
    data_root: str | None = None
    bank: str = DEFAULT_BANK
    models: tuple[str, ...] = ()
    split: TargetSplit = TargetSplit.TRAIN
    config: ScoreConfig = field(default_factory=ScoreConfig)
    verify: bool = True
    executor: ExecutorKind = ExecutorKind.SERIAL
    ray_address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    log_dataset: bool = False
    add_twins: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_root", self.data_root or None)
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "ray_address", self.ray_address or None)
        object.__setattr__(self, "split", TargetSplit(self.split))
        object.__setattr__(self, "executor", ExecutorKind(self.executor))
        object.__setattr__(self, "num_cpus", parse_float(self.num_cpus, "--num-cpus", minimum=0))
        object.__setattr__(self, "num_gpus", parse_float(self.num_gpus, "--num-gpus", minimum=0))

    @property
    def roi_size(self) -> tuple[int, ...] | None:
        """The ``--roi-size`` chosen (None: each version's patch size)."""
        roi = (self.config.sampler or {}).get("roi_size")
        return tuple(roi) if roi is not None else None


def check_resources(request: ScoreRequest) -> str:
    """Refuse before any work an unusable device, an unwritable feature cache and a ROI whose memory
    lower bound exceeds the available memory; returns the device to score on in this process."""
    device = str(resolve_device(request.config.device))
    FeatureCache(request.config.cache_dir).check_writable()
    if request.roi_size is not None:
        check_memory(
            inference_bytes(request.roi_size, SamplerConfig().sw_batch_size),
            "--roi-size",
            request.roi_size,
            "lower --roi-size (a typical window is 32-128 voxels a side).",
        )
    return device


def sampler_overrides(
    *,
    roi_size: str | Sequence[int] | None = None,
    overlap: str | float | None = None,
    global_samples: str | int | None = None,
    layer_budgets: str | Sequence[int] | None = None,
    sampler_seed: str | int | None = None,
) -> dict[str, Any]:
    """The sampler settings a user gave (``""``/``None``: not given), each checked with its option's name
    (:class:`~mlflow_ccfv.errors.OptionError`), then together by :class:`SamplerConfig`."""
    overrides: dict[str, Any] = {}
    if _given(roi_size):
        overrides["roi_size"] = parse_ints(roi_size, "--roi-size", length=3, minimum=1)
    if _given(overlap):
        overrides["overlap"] = parse_float(overlap, "--overlap", minimum=0, maximum=1, max_open=True)
    if _given(global_samples):
        overrides["global_samples"] = parse_int(global_samples, "--global-samples", minimum=1)
    if _given(layer_budgets):
        overrides["layer_budgets"] = parse_ints(layer_budgets, "--layer-budgets", minimum=1)
        if not overrides["layer_budgets"]:
            raise OptionError("--layer-budgets must list at least one sample count (e.g. 100,200,400).")
    if _given(sampler_seed):
        overrides["seed"] = parse_int(sampler_seed, "--sampler-seed", minimum=0)
    if overrides:
        try:
            SamplerConfig(**overrides)  # validate the values together now
        except ValueError as exc:
            raise OptionError(f"Bad sampler option: {exc}") from exc
    return overrides


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def check_roi_against_volumes(roi_size: Sequence[int], ds: MSDDataset, case_ids: Sequence[str]) -> None:
    """Refuse a ``--roi-size`` side above twice the largest side of any target volume (read from the
    NIfTI headers): every window would be mostly padding."""
    largest = ds.largest_side(case_ids)
    if largest and max(roi_size) > 2 * largest:
        raise OptionError(
            f"--roi-size {format_ints(roi_size)} is far larger than the volumes of {ds.name} (largest side "
            f"{largest} voxels): every window would be mostly padding. Use at most {2 * largest} a side, "
            f"e.g. {format_ints([min(int(r), largest) for r in roi_size])}."
        )
