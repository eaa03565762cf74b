"""The CC-FV transferability score (Yang et al., MICCAI 2023, Eq. 5) and its Table 2 ablations.

    T = (1/D) sum_{layers} log(F_v / C_cons)                                            (Eq. 5)

over the D decoder layers used, with C_cons the class consistency (Eq. 2, lower is better) and F_v
the feature variety (Eq. 4, higher is better) at that layer. Higher T means the model is expected
to transfer better. The ablations of Table 2:

* ``use_consistency=False`` ("w/o C_cons"): the layer term is ``log F_v``;
* ``use_variety=False`` ("w/o F_v"): the layer term is ``-log C_cons``;
* one layer only ("single-scale"): pass a single layer;
* ``distance="kl"`` / ``"bhattacharyya"``: another distance in Eq. 2.

One extension that is not in the paper, ``unit_sphere=True``: the class features are projected onto
the unit sphere before Eq. 1–2, as Eq. 3 already does for the feature variety. The paper's C_cons is
measured in the raw feature space, so multiplying a model's features by ``a`` lowers its T by
``log a`` while F_v is unchanged: scores of architectures whose features have different magnitudes
(a UNet with 8–64 channels, a UNETR) are not comparable. On the unit sphere both terms are invariant
to that rescaling (docs/estimators.md; measured in docs/study.md).

The layers are averaged as Eq. 5 says (the official code sums them, which only rescales the score
for a fixed D but makes scores over different numbers of layers incomparable).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_ccfv.estimators.class_consistency import per_class_consistency
from mlflow_ccfv.estimators.feature_variety import DEFAULT_MIN_DISTANCE, feature_variety
from mlflow_ccfv.estimators.gaussian_divergences import DEFAULT_REGULARIZATION

__all__ = ["ClassCases", "GlobalCases", "Layer", "LayerScore", "ccfv", "ccfv_layers"]


logger = logging.getLogger(__name__)

ClassCases = Sequence[Mapping[Hashable, Any]]
GlobalCases = Sequence[Any]
Layer = tuple[ClassCases | None, GlobalCases | None]


def _on_unit_sphere(class_cases: ClassCases) -> list[dict]:
    """Every case's class features ``[n_k, d]`` with rows scaled to unit length (zero rows stay 0)."""
    out = []
    for case in class_cases:
        projected = {}
        for k, x in case.items():
            x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
            norms = np.linalg.norm(x, axis=-1, keepdims=True)
            projected[k] = x / np.where(norms > 0, norms, 1.0)
        out.append(projected)
    return out


@dataclass(frozen=True)
class LayerScore:
    """The components of Eq. 5 at one decoder layer.

    Attributes:
        class_consistency: C_cons (Eq. 2) at this layer, or None when not used.
        feature_variety: F_v (Eq. 4) at this layer, or None when not used.
        log_ratio: this layer's summand of Eq. 5: ``log(F_v / C_cons)``, or ``log F_v`` without
            C_cons, or ``-log C_cons`` without F_v.
        per_class: ``{class id: mean pairwise distance}`` (the summands of C_cons); empty when
            C_cons is not used.
    """

    class_consistency: float | None
    feature_variety: float | None
    log_ratio: float
    per_class: dict = field(default_factory=dict)


def _check_layers(layers: Sequence[Layer]) -> None:
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Sequence):
        raise TypeError(
            "layers must be a sequence over decoder layers of (class-features-per-case, global-samples-per-case) pairs"
        )
    if len(layers) == 0:
        raise ValueError("ccfv needs at least one decoder layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Sequence) or len(layer) != 2:
            raise TypeError(f"layers[{i}] must be a (class-features-per-case, global-samples-per-case) pair")


def ccfv_layers(
    layers: Sequence[Layer],
    distance: str = "wasserstein",
    use_consistency: bool = True,
    use_variety: bool = True,
    regularization: float = DEFAULT_REGULARIZATION,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    unit_sphere: bool = False,
) -> list[LayerScore]:
    """Per-layer components of Eq. 5 (for logging); ``ccfv`` averages their ``log_ratio``.

    Args:
        layers: per decoder layer a pair ``(class_cases, global_cases)``: ``class_cases`` is a
            sequence over the N cases of ``{class id: features [n_k, d]}`` (foreground classes;
            see ``class_consistency``), ``global_cases`` a sequence over the cases of
            ``[L_i, d]`` features sampled over the whole case (see ``feature_variety``). An entry
            may be None when its component is switched off.
        distance: the distance of Eq. 2: ``"wasserstein"``, ``"kl"`` or ``"bhattacharyya"``.
        use_consistency, use_variety: switch the components off (Table 2 ablations).
        regularization: covariance ridge for ``"kl"`` / ``"bhattacharyya"``.
        min_distance: distance floor for coincident points in the feature variety.
        unit_sphere: project the class features onto the unit sphere before Eq. 1–2 (an
            extension, not the paper's definition: makes T invariant to the features' scale).

    Returns:
        One ``LayerScore`` per layer, in the order given.
    """
    if not (use_consistency or use_variety):
        raise ValueError("use_consistency and use_variety are both False: Eq. 5 has no term left")
    _check_layers(layers)
    scores = []
    for i, (class_cases, global_cases) in enumerate(layers):
        c_cons = f_v = None
        per_class: dict = {}
        log_ratio = 0.0
        if use_consistency:
            if class_cases is None:
                raise ValueError(f"layers[{i}] has no class features but use_consistency=True")
            if unit_sphere:
                class_cases = _on_unit_sphere(class_cases)
            per_class = per_class_consistency(class_cases, distance, regularization)
            c_cons = float(sum(per_class.values()))
            if not c_cons > 0:
                raise ValueError(
                    f"class consistency is 0 at layer {i}: every case has identical class "
                    f"features, so log(F_v / C_cons) is undefined; check the feature sampling"
                )
            log_ratio -= math.log(c_cons)
        if use_variety:
            if global_cases is None:
                raise ValueError(f"layers[{i}] has no global samples but use_variety=True")
            f_v = feature_variety(global_cases, min_distance)
            log_ratio += math.log(f_v)
        logger.debug("layer %d: C_cons=%s F_v=%s term=%.6g", i, c_cons, f_v, log_ratio)
        scores.append(LayerScore(c_cons, f_v, log_ratio, per_class))
    return scores


def ccfv(
    layers: Sequence[Layer],
    use_consistency: bool = True,
    use_variety: bool = True,
    distance: str = "wasserstein",
    regularization: float = DEFAULT_REGULARIZATION,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    unit_sphere: bool = False,
) -> float:
    """The CC-FV score T of Eq. 5: the mean over decoder layers of ``log(F_v / C_cons)``.

    Higher means better expected transfer. Arguments as in ``ccfv_layers``; pass one layer for the
    "single-scale" ablation; ``unit_sphere=True`` for the scale-invariant extension.
    """
    per_layer = ccfv_layers(layers, distance, use_consistency, use_variety, regularization, min_distance, unit_sphere)
    return float(sum(s.log_ratio for s in per_layer) / len(per_layer))
