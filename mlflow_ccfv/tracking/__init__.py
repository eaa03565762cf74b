"""MLflow layer, and nothing else: the model bank (registry), the model flavor, target datasets as MLflow
datasets, runs, the tag and metric names (:mod:`~mlflow_ccfv.tracking.tags`), the ``ccfv`` evaluator.

Public API (see docs/api-contracts.md)::

    register_network(spec, state_dict, name, source_dataset, bank="default", extra_tags=None,
                     description=None, patch_size=None) -> ModelVersion
    register_logged_model(model_uri, Registration(name, source_dataset, bank="default", ...),
                          allow_pickle=None, spec=None) -> ModelVersion
    load_version(model_uri | ModelVersion) -> LoadedModel(module, spec, tags, model_id, ...)
    bank_versions(bank="default") -> list[ModelVersion];  logged_model_id(version) -> "m-..."
    target_dataset(name_or_path, split="train", data_root=None) -> mlflow Dataset of the manifest
    log_target_dataset(dataset: MSDDataset, split="train") -> mlflow Dataset (logged with log_input)
    evaluate(model_uri, data, evaluator_config=None, **kwargs) -> mlflow.models.evaluate with the ccfv
                     evaluator, a pickled model refused before it loads
"""

from typing import TYPE_CHECKING

from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.lazy import lazy_attributes

if TYPE_CHECKING:
    from mlflow_ccfv.tracking.datasets import log_target_dataset, mlflow_dataset, target_dataset
    from mlflow_ccfv.tracking.evaluator import evaluate
    from mlflow_ccfv.tracking.load import LoadedModel, load_version
    from mlflow_ccfv.tracking.register import Registration, register_logged_model, register_network
    from mlflow_ccfv.tracking.search import (
        BANK_TAG,
        DEFAULT_BANK,
        bank_versions,
        get_version,
        logged_model_id,
        resolve_versions,
        version_uri,
    )

__all__ = [
    "evaluate",
    "BANK_TAG",
    "DEFAULT_BANK",
    "LoadedModel",
    "Registration",
    "RegistryError",
    "bank_versions",
    "get_version",
    "load_version",
    "log_target_dataset",
    "logged_model_id",
    "mlflow_dataset",
    "register_logged_model",
    "register_network",
    "resolve_versions",
    "target_dataset",
    "version_uri",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "log_target_dataset": "datasets",
        "mlflow_dataset": "datasets",
        "target_dataset": "datasets",
        "evaluate": "evaluator",
        "LoadedModel": "load",
        "load_version": "load",
        "Registration": "register",
        "register_logged_model": "register",
        "register_network": "register",
        "BANK_TAG": "search",
        "DEFAULT_BANK": "search",
        "bank_versions": "search",
        "get_version": "search",
        "logged_model_id": "search",
        "resolve_versions": "search",
        "version_uri": "search",
    },
)
