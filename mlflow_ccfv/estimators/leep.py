"""LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
Representations", ICML 2020): the log expected empirical prediction of the source head.

With the source model's class probabilities ``theta [n, C_s]`` at the sampled voxels and the target
labels ``y [n]``::

    P(y, z) = (1/n) sum_i theta_i(z) [y_i = y],   P(y | z) = P(y, z) / sum_y' P(y', z)
    LEEP = (1/n) sum_i log sum_z P(y_i | z) theta_i(z)

Higher is better (at most 0). It needs a source head: there is no LEEP without ``theta``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_labels, check_probabilities

__all__ = ["empirical_conditional", "leep"]


def empirical_conditional(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``P(y | z)`` ``[C_t, C_s]`` from probabilities ``[n, C_s]`` and labels ``[n]`` (ids < C_t).

    Source classes that receive no probability mass get a zero column.
    """
    n_target = int(labels.max()) + 1
    joint = np.zeros((n_target, probs.shape[1]))
    np.add.at(joint, labels, probs)
    joint /= probs.shape[0]
    marginal = joint.sum(axis=0, keepdims=True)
    return np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)


def leep(probs: Any, labels: Any) -> float:
    """LEEP score (higher = better, <= 0).

    Args:
        probs: ``[n, C_s]`` softmax probabilities of the source model's head at the sampled voxels.
        labels: ``[n]`` integer target class ids at the same voxels.
    """
    y = check_labels(labels, np.shape(probs)[0] if hasattr(probs, "shape") else len(probs))
    theta = check_probabilities(probs, y.shape[0])
    cond = empirical_conditional(theta, y)
    eep = np.einsum("iz,iz->i", theta, cond[y])
    # eep > 0 always: theta_i puts mass on some z, and P(y_i | z) > 0 wherever theta_i(z) > 0.
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))
