"""Transferability estimators: CC-FV (Yang et al., MICCAI 2023) and the baselines, as pure functions
over arrays (numpy arrays or torch tensors, computed in float64). No mlflow, no monai, no networks.

Every score is oriented so that higher means "expected to transfer better".

CC-FV: ``gaussian_w2`` (Eq. 1), ``class_consistency`` (Eq. 2), ``feature_variety`` (Eq. 3-4),
``ccfv`` / ``ccfv_layers`` (Eq. 5 and the Table 2 ablations). Baselines: ``logme``, ``leep``,
``gbc``, ``transrate``, ``nleep``, ``nce``, ``hscore``. (Their evaluation, weighted tau and Pearson, is in :mod:`mlflow_ccfv.study`.)
All methods by name: ``METHODS``, ``score_methods``.
"""

from mlflow_ccfv.errors import EstimatorError
from mlflow_ccfv.estimators.ccfv import LayerScore, ccfv, ccfv_layers
from mlflow_ccfv.estimators.class_consistency import (
    DISTANCES,
    class_consistency,
    per_class_consistency,
)
from mlflow_ccfv.estimators.feature_variety import feature_variety, hyperspherical_energy
from mlflow_ccfv.estimators.gaussian_divergences import pairwise_bhattacharyya, pairwise_kl
from mlflow_ccfv.estimators.gbc import gbc
from mlflow_ccfv.estimators.hscore import hscore
from mlflow_ccfv.estimators.leep import leep
from mlflow_ccfv.estimators.logme import logme
from mlflow_ccfv.estimators.methods import METHODS, score_methods
from mlflow_ccfv.estimators.nce import nce
from mlflow_ccfv.estimators.nleep import nleep
from mlflow_ccfv.estimators.transrate import transrate
from mlflow_ccfv.estimators.wasserstein import fit_gaussian, gaussian_w2, pairwise_w2

__all__ = [
    "DISTANCES",
    "METHODS",
    "EstimatorError",
    "LayerScore",
    "ccfv",
    "ccfv_layers",
    "class_consistency",
    "feature_variety",
    "fit_gaussian",
    "gaussian_w2",
    "gbc",
    "hscore",
    "hyperspherical_energy",
    "leep",
    "logme",
    "nce",
    "nleep",
    "pairwise_bhattacharyya",
    "pairwise_kl",
    "pairwise_w2",
    "per_class_consistency",
    "score_methods",
    "transrate",
]
