"""Score one network on one target: the code path shared by the ``score`` pipeline and the evaluator."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mlflow_ccfv.data.normalization import IntensityNormalization, describe_normalization
from mlflow_ccfv.data.target import Target
from mlflow_ccfv.features import SamplerConfig
from mlflow_ccfv.scoring.feature_cache import CaseCache, FeatureCache
from mlflow_ccfv.scoring.methods import ModelScores, parse_methods, score_features

__all__ = ["sampler_config_for", "score_model"]


def sampler_config_for(
    patch_size: Sequence[int] | None, config: SamplerConfig | Mapping[str, Any] | None
) -> SamplerConfig:
    """A :class:`SamplerConfig` as is; else the defaults with ``patch_size`` (the model's training
    patch) as the sliding-window ROI, updated with ``config`` when it is a mapping of overrides."""
    if isinstance(config, SamplerConfig):
        return config
    base: dict[str, Any] = {}
    if patch_size:
        base["roi_size"] = tuple(int(p) for p in patch_size)
    return SamplerConfig(**{**base, **dict(config or {})})


def score_model(
    module: nn.Module,
    layers: Sequence[str],
    target: Target,
    methods: str | Sequence[str] | None = None,
    sampler_config: SamplerConfig | Mapping[str, Any] | None = None,
    *,
    model_id: str | None = None,
    label: str = "model",
    patch_size: Sequence[int] | None = None,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    cases: CaseCache | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    normalization: IntensityNormalization | None = None,
) -> ModelScores:
    """Sample ``module``'s features at ``layers`` on ``target`` (cached) and run ``methods`` on them.

    ``model_id`` keys the feature cache (the LoggedModel id); ``patch_size`` is the default
    sliding-window ROI; ``sampler_config`` overrides it and the other sampler settings. ``device``:
    where the network runs (default CUDA when available, else CPU; the features, hence the scores,
    do not depend on it beyond rounding). ``amp``: mixed-precision inference (an opt-in: see
    :mod:`mlflow_ccfv.networks.devices`). ``normalization``: the model's own intensity normalisation,
    applied to the target's images instead of the target's (``None``: the target's); the result's
    ``normalization`` names the one applied.
    """
    config = sampler_config_for(patch_size, sampler_config)
    features, cached = FeatureCache(cache_dir).features(
        module,
        layers,
        target,
        config,
        model_id,
        label,
        force=force,
        cases=cases,
        device=device,
        amp=amp,
        normalization=normalization,
    )
    result = score_features(features, parse_methods(methods))
    result.config, result.cached = config, cached
    result.normalization = describe_normalization(normalization)
    return result
