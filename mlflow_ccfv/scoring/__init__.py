"""Scoring one network on one target (no MLflow): decoder features sampled once (cached on disk),
then every requested estimator on them.

:func:`score_model` is the single code path of the ``score`` pipeline and the ``ccfv`` evaluator.
"""

from mlflow_ccfv.scoring.feature_cache import CaseCache, FeatureCache, cache_key
from mlflow_ccfv.scoring.methods import DEFAULT_METHODS, RANK_METHOD, ModelScores, parse_methods, score_features
from mlflow_ccfv.scoring.model import sampler_config_for, score_model

__all__ = [
    "DEFAULT_METHODS",
    "RANK_METHOD",
    "CaseCache",
    "FeatureCache",
    "ModelScores",
    "cache_key",
    "parse_methods",
    "sampler_config_for",
    "score_features",
    "score_model",
]
