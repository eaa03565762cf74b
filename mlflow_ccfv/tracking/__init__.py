"""MLflow layer: the model bank (registry), target datasets, scoring, tags/aliases, the ``ccfv`` evaluator.

Public API (see docs/mlflow.md)::

    register_network(spec, state_dict, name, source_dataset, bank="default", extra_tags=None,
                     description=None, patch_size=None) -> ModelVersion
    register_logged_model(model_uri, name, source_dataset, bank="default", ...) -> ModelVersion
    load_version(model_uri | ModelVersion) -> LoadedModel(module, spec, tags, model_id, ...)
    bank_versions(bank="default") -> list[ModelVersion];  logged_model_id(version) -> "m-..."
    make_target(dataset: MSDDataset, split="train") -> Target;  target_dataset(...) -> mlflow Dataset
    log_target_dataset(dataset: MSDDataset, split="train") -> mlflow Dataset (logged with log_input)
    score_versions(versions_or_uris, target, methods=None, sampler_config=None, force=False) -> DataFrame
    score_loaded(loaded, target, methods, sampler_config) -> (metrics, config, cached)
"""

from mlflow_ccfv.tracking.datasets import Target, log_target_dataset, make_target, target_dataset, target_from_manifest
from mlflow_ccfv.tracking.registry import (
    BANK_TAG,
    DEFAULT_BANK,
    LoadedModel,
    RegistryError,
    bank_versions,
    get_version,
    load_version,
    logged_model_id,
    register_logged_model,
    register_network,
    resolve_versions,
    version_uri,
)
from mlflow_ccfv.tracking.scoring import (
    DEFAULT_METHODS,
    parse_methods,
    rank_table,
    ranking_plot,
    score_loaded,
    score_versions,
    write_transferability_tags,
)

__all__ = [
    "BANK_TAG",
    "DEFAULT_BANK",
    "DEFAULT_METHODS",
    "LoadedModel",
    "RegistryError",
    "Target",
    "bank_versions",
    "get_version",
    "load_version",
    "log_target_dataset",
    "logged_model_id",
    "make_target",
    "parse_methods",
    "rank_table",
    "ranking_plot",
    "register_logged_model",
    "register_network",
    "resolve_versions",
    "score_loaded",
    "score_versions",
    "target_dataset",
    "target_from_manifest",
    "version_uri",
    "write_transferability_tags",
]
