"""Every estimator by name: the CC-FV variants of Table 2 and the baselines, scored in one call.

Method names (the keys the study and MLflow layers log):

======================== ===========================================================
``ccfv``                 Eq. 5 over all layers given
``ccfv_no_consistency``  w/o C_cons (Table 2)
``ccfv_no_variety``      w/o F_v (Table 2)
``ccfv_single_scale``    Eq. 5 on the last layer only (the one nearest the output)
``ccfv_kl``              KL divergence in Eq. 2
``ccfv_bhattacharyya``   Bhattacharyya distance in Eq. 2
``ccfv_unit_sphere``     Eq. 5 with the class features on the unit sphere (an extension; scale-free)
``logme`` ``gbc`` ``transrate`` ``hscore`` ``nleep``  baselines on (features, labels)
``leep`` ``nce``         baselines on (source probabilities, labels)
======================== ===========================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlflow_ccfv.errors import EstimatorError
from mlflow_ccfv.estimators.catalogue import method_names
from mlflow_ccfv.estimators.ccfv import LayerScore, ccfv
from mlflow_ccfv.estimators.gbc import gbc
from mlflow_ccfv.estimators.hscore import hscore
from mlflow_ccfv.estimators.leep import leep
from mlflow_ccfv.estimators.logme import logme
from mlflow_ccfv.estimators.nce import nce
from mlflow_ccfv.estimators.nleep import nleep
from mlflow_ccfv.estimators.transrate import transrate

__all__ = [
    "CCFV_METHODS",
    "FEATURE_METHODS",
    "LAYER_SCORE_METHODS",
    "METHODS",
    "PROBABILITY_METHODS",
    "ccfv_from_layer_scores",
    "score_methods",
]


logger = logging.getLogger(__name__)

CCFV_METHODS = method_names(kinds=("ccfv",))
FEATURE_METHODS = method_names(kinds=("feature",))
PROBABILITY_METHODS = method_names(kinds=("probability",))
METHODS: tuple[str, ...] = method_names(kinds=("ccfv", "feature", "probability"))


def _required(value: float | None, method: str) -> float:
    if value is None:
        raise ValueError(f"{method} needs both C_cons and F_v of every layer; compute ccfv_layers with both on.")
    return value


#: The variants that are arithmetic on the per-layer C_cons and F_v of Eq. 5 (no other distance).
LAYER_SCORE_METHODS = ("ccfv", "ccfv_no_consistency", "ccfv_no_variety", "ccfv_single_scale")


def ccfv_from_layer_scores(method: str, parts: Sequence[LayerScore]) -> float:
    """``method`` (one of :data:`LAYER_SCORE_METHODS`) from ``ccfv_layers(layers)``'s output, so the
    W2 and energies of one model are computed once for all four instead of once per variant.
    The same arithmetic as ``ccfv`` with the matching flags, hence the same float."""
    if not parts:
        raise ValueError("ccfv needs at least one decoder layer, got none")
    if method == "ccfv_single_scale":
        return float(parts[-1].log_ratio)
    if method == "ccfv":
        terms = [p.log_ratio for p in parts]
    elif method == "ccfv_no_consistency":
        terms = [0.0 + math.log(_required(p.feature_variety, method)) for p in parts]
    elif method == "ccfv_no_variety":
        terms = [0.0 - math.log(_required(p.class_consistency, method)) for p in parts]
    else:
        raise ValueError(f"{method} is not computed from per-layer scores; use one of {LAYER_SCORE_METHODS}")
    return float(sum(terms) / len(terms))


def _ccfv_variant(method: str, layers: Sequence, parts: Sequence[LayerScore] | None = None) -> float:
    if parts is not None and method in LAYER_SCORE_METHODS:
        return ccfv_from_layer_scores(method, parts)
    if method == "ccfv":
        return ccfv(layers)
    if method == "ccfv_no_consistency":
        return ccfv(layers, use_consistency=False)
    if method == "ccfv_no_variety":
        return ccfv(layers, use_variety=False)
    if method == "ccfv_single_scale":
        return ccfv(list(layers)[-1:])
    if method == "ccfv_kl":
        return ccfv(layers, distance="kl")
    if method == "ccfv_unit_sphere":
        return ccfv(layers, unit_sphere=True)
    return ccfv(layers, distance="bhattacharyya")


_BASELINES: dict[str, Callable[..., float]] = {
    "logme": logme,
    "gbc": gbc,
    "transrate": transrate,
    "hscore": hscore,
    "nleep": nleep,
    "leep": leep,
    "nce": nce,
}


def score_methods(
    ccfv_layers_input: Sequence | None,
    features: Any = None,
    labels: Any = None,
    probs: Any = None,
    methods: Sequence[str] | None = None,
    layer_scores: Sequence[LayerScore] | None = None,
) -> dict[str, float]:
    """Score one model with several estimators.

    Args:
        ccfv_layers_input: the ``layers`` argument of ``ccfv`` (needed by the ``ccfv*`` methods).
        features: ``[n, d]`` features of the layer before the final convolution (baselines).
        labels: ``[n]`` target class ids at those voxels, background included.
        probs: ``[n, C_s]`` source-head probabilities at those voxels (``leep``, ``nce``).
        methods: names from ``METHODS``; None means all of them.
        layer_scores: ``ccfv_layers(ccfv_layers_input)`` if the caller has it (both components,
            Wasserstein): ``ccfv`` and the w/o-C_cons, w/o-F_v and single-scale ablations are then
            read from it instead of recomputing every layer's W2 and energy per variant.

    Returns:
        ``{method: finite float}`` in the order requested.

    Raises:
        EstimatorError: a method failed or lacks its input; the message names the method.
        ValueError: an unknown method name.
    """
    wanted = list(METHODS if methods is None else methods)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    out: dict[str, float] = {}
    for method in wanted:
        try:
            if method in CCFV_METHODS:
                if ccfv_layers_input is None:
                    raise EstimatorError(method, "needs the per-layer CC-FV inputs, got None")
                value = _ccfv_variant(method, ccfv_layers_input, layer_scores)
            elif method in PROBABILITY_METHODS:
                if probs is None or labels is None:
                    raise EstimatorError(
                        method,
                        "needs the source head's probabilities and the labels; pass probs or leave this method out",
                    )
                value = _BASELINES[method](probs, labels)
            else:
                if features is None or labels is None:
                    raise EstimatorError(method, "needs features [n, d] and labels [n]")
                value = _BASELINES[method](features, labels)
        except EstimatorError:
            raise
        except (ValueError, TypeError, FloatingPointError, np.linalg.LinAlgError) as err:
            raise EstimatorError(method, str(err)) from err
        if not np.isfinite(value):
            raise EstimatorError(method, f"returned a non-finite score {value}")
        logger.debug("%s = %.6g", method, value)
        out[method] = float(value)
    return out
