"""Which estimators to run, and running them on a :class:`~mlflow_ccfv.features.FeatureSet`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_ccfv.data.normalization import TARGET_NORMALIZATION
from mlflow_ccfv.errors import EstimatorError, OptionError
from mlflow_ccfv.estimators import METHODS, LayerScore, ccfv_layers, score_methods
from mlflow_ccfv.estimators.catalogue import method_names
from mlflow_ccfv.features import FeatureSet, SamplerConfig
from mlflow_ccfv.options import split_list

__all__ = ["DEFAULT_METHODS", "RANK_METHOD", "ModelScores", "parse_methods", "score_features"]

#: Methods scored when none are asked for: CC-FV and every baseline (ablations on request).
DEFAULT_METHODS = method_names(default=True)
#: The method that ranks a bank (rank tags, the ``best-<dataset>`` alias).
RANK_METHOD = "ccfv"


def parse_methods(methods: str | Sequence[str] | None) -> list[str]:
    """``None``/``""``/``"default"`` -> :data:`DEFAULT_METHODS`; ``"all"`` -> every method; else names
    (comma-separated).

    ``ccfv`` is always scored (it ranks the bank).
    """
    if methods is None or methods in ("", "default") or (not isinstance(methods, str) and not list(methods)):
        wanted = list(DEFAULT_METHODS)
    elif methods == "all":
        wanted = list(METHODS)
    else:
        wanted = split_list(methods)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise OptionError(
            f"Unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)} (or 'all', 'default')."
        )
    if RANK_METHOD not in wanted:
        wanted.insert(0, RANK_METHOD)
    return list(dict.fromkeys(wanted))


@dataclass
class ModelScores:
    """One model's scores on one target.

    ``scores``: method -> score (higher = expected to transfer better); ``layers``: C_cons (Eq. 2) and
    F_v (Eq. 4) per decoder layer, bottleneck first, named ``layer_names``; ``config``: the sampler
    settings used; ``cached``: the features came from the on-disk cache; ``normalization``: the
    intensity normalisation of the target's images (``target``, or the model's own, described).
    """

    scores: dict[str, float]
    layers: list[LayerScore]
    layer_names: list[str]
    config: SamplerConfig | None = None
    cached: bool = False
    normalization: str = TARGET_NORMALIZATION


def score_features(features: FeatureSet, methods: Sequence[str]) -> ModelScores:
    """Every requested method plus CC-FV's per-layer components on ``features``.

    Raises :class:`~mlflow_ccfv.errors.EstimatorError` when an estimator fails or returns a
    non-finite value.
    """
    layers_input: list[Any] = list(features.ccfv_inputs())
    baseline_methods = [m for m in methods if not m.startswith("ccfv")]
    feats = labels = probs = None
    if baseline_methods:
        feats, labels, probs = features.baseline_inputs()
    try:  # once: the CC-FV variants of Eq. 5 and the logged components share it
        parts = ccfv_layers(layers_input)
    except (ValueError, TypeError, FloatingPointError, np.linalg.LinAlgError) as err:
        raise EstimatorError("ccfv", str(err)) from err
    scores = dict(score_methods(layers_input, feats, labels, probs, methods=list(methods), layer_scores=parts))
    bad = [k for k, v in scores.items() if not math.isfinite(v)]
    bad += [
        f"layer {i}"
        for i, p in enumerate(parts)
        if not all(v is not None and math.isfinite(v) for v in (p.class_consistency, p.feature_variety))
    ]
    if bad:
        raise EstimatorError(bad[0].split(" ")[0], f"non-finite score(s) {', '.join(bad)}.")
    return ModelScores(scores, list(parts), list(features.layers))
