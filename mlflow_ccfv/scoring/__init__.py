"""Scoring one network on one target (no MLflow): decoder features sampled once (cached on disk),
then every requested estimator on them.

:func:`score_model` is the single code path of the ``score`` pipeline and the ``ccfv`` evaluator.
"""

from typing import TYPE_CHECKING

from mlflow_ccfv.lazy import lazy_attributes

if TYPE_CHECKING:
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

__getattr__ = lazy_attributes(
    __name__,
    {
        "CaseCache": "feature_cache",
        "FeatureCache": "feature_cache",
        "cache_key": "feature_cache",
        "DEFAULT_METHODS": "methods",
        "RANK_METHOD": "methods",
        "ModelScores": "methods",
        "parse_methods": "methods",
        "score_features": "methods",
        "sampler_config_for": "model",
        "score_model": "model",
    },
)
