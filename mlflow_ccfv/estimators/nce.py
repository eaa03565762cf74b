"""NCE (Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019):
the negative conditional entropy of the target labels given the source model's hard predictions.

    NCE = -H(Y | Z) = sum_{y, z} P(y, z) log P(y | z),    z_i = argmax theta_i

with P the empirical joint distribution over the n sampled voxels. Higher is better (at most 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlflow_ccfv.estimators.arrays import check_labels, check_probabilities

__all__ = ["nce"]


def nce(probs: Any, labels: Any) -> float:
    """NCE score (higher = better, <= 0).

    Args:
        probs: ``[n, C_s]`` source-head probabilities (the argmax is used), or ``[n]`` integer
            source predictions.
        labels: ``[n]`` integer target class ids.
    """
    shape = np.shape(probs) if hasattr(probs, "shape") else np.shape(np.asarray(probs))
    if len(shape) == 1:
        z = check_labels(probs, shape[0], name="probs (source predictions)")
    else:
        z = check_probabilities(probs, shape[0]).argmax(axis=1)
    y = check_labels(labels, z.shape[0])
    n = y.shape[0]
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= n
    p_z = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    cond = np.divide(joint, p_z, out=np.ones_like(joint), where=p_z > 0)
    return float(np.sum(joint[nz] * np.log(cond[nz])))
