"""The ``ccfv`` evaluator: ``mlflow.models.evaluate(..., model_type="segmentation", evaluators=["ccfv"])``.

Registered through the ``mlflow.model_evaluator`` entry point (pyproject.toml). It adapts MLflow's
plugin API to :func:`mlflow_ccfv.tracking.scoring.score_loaded`, the code path of ``score``:

- ``data``: the target manifest (:func:`mlflow_ccfv.tracking.target_dataset`, or a DataFrame with the
  columns ``case_id, image, label`` [+ ``image_sha256, label_sha256, split``]); or
  ``evaluator_config={"dataset": "Task07", "data_root": "data", "split": "train"}`` to name the target.
- ``evaluator_config`` keys: ``methods`` (default ``["ccfv"]``; ``"default"`` = CC-FV and every
  baseline, ``"all"`` adds the ablations), ``sampler`` (dict of SamplerConfig overrides), ``force``,
  ``cache_dir``, ``dataset``/``data_root``/``split``.

Returns ``ccfv``, ``ccfv.layer<i>.class_consistency`` / ``.feature_variety`` and the requested
baselines; they are logged on the run and on the model's LoggedModel, linked to the dataset.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator

_logger = logging.getLogger(__name__)

MODEL_TYPES = ("segmentation",)
CONFIG_KEYS = ("methods", "sampler", "force", "cache_dir", "dataset", "data_root", "split")


def _loaded_from_pyfunc(model, model_id: str | None):
    """A :class:`LoadedModel` from the pyfunc model MLflow passes in (no second download)."""
    from mlflow_ccfv.features import decoder_layers
    from mlflow_ccfv.tracking.flavor import CCFVPyfuncModel
    from mlflow_ccfv.tracking.registry import LoadedModel

    impl = getattr(model, "_model_impl", None)
    if not isinstance(impl, CCFVPyfuncModel):
        raise ValueError(
            "The ccfv evaluator needs a model in the mlflow_ccfv flavor (register it with "
            "`mlflow-ccfv register`); got a pyfunc model of another flavor."
        )
    tags: dict[str, str] = {}
    if model_id:
        from mlflow import MlflowClient

        tags = dict(MlflowClient().get_logged_model(model_id).tags or {})
    layers = [l for l in tags.get("feature_layers", "").split(",") if l] or decoder_layers(impl.module)
    return LoadedModel(impl.module, impl.spec, tags, model_id, f"models:/{model_id}" if model_id else "pyfunc",
                       feature_layers=layers)


class CCFVEvaluator(ModelEvaluator):
    """CC-FV transferability of a segmentation model to the target described by the evaluation data."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        unknown = sorted(set(evaluator_config or {}) - set(CONFIG_KEYS) - {"col_mapping"})
        if unknown:
            raise ValueError(
                f"Unknown ccfv evaluator_config key(s) {', '.join(unknown)}; valid: {', '.join(CONFIG_KEYS)}."
            )
        return model_type in MODEL_TYPES

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, extra_metrics=None,
                 custom_artifacts=None, predictions=None, **kwargs) -> EvaluationResult:
        import mlflow

        from mlflow_ccfv.tracking.datasets import make_target, target_from_manifest
        from mlflow_ccfv.tracking.scoring import (
            DEFAULT_METHODS,
            compute_metrics,
            extract_features,
            parse_methods,
            sampler_config_for,
        )

        config = dict(evaluator_config or {})
        if model is None:
            raise ValueError("The ccfv evaluator scores a model: pass model='models:/<name>/<version>'.")
        passed_model_id = kwargs.get("model_id")
        model_id = passed_model_id or getattr(getattr(model, "metadata", None), "model_id", None)
        loaded = _loaded_from_pyfunc(model, model_id)

        if config.get("dataset"):
            from mlflow_ccfv.data import MSDDataset

            target = make_target(MSDDataset.load(config["dataset"], data_root=config.get("data_root")),
                                 config.get("split", "train"))
            ds_name, ds_digest = target.name, target.digest
        else:
            manifest = dataset.features_data
            if not isinstance(manifest, pd.DataFrame):
                raise ValueError("Pass the target manifest as data (target_dataset(...) or a DataFrame with image/label columns).")
            target = target_from_manifest(manifest, name=dataset.name if dataset.name else None,
                                          root=config.get("data_root"))
            ds_name, ds_digest = dataset.name or target.name, dataset.digest or target.digest
        methods = config.get("methods", ["ccfv"])
        if methods == "default":
            methods = list(DEFAULT_METHODS)
        methods = parse_methods(methods)
        sampler = sampler_config_for(loaded, config.get("sampler"))
        features, cached = extract_features(loaded, target, sampler, force=bool(config.get("force", False)),
                                            cache_dir=config.get("cache_dir"))
        metrics = compute_metrics(features, methods)

        # MLflow logs the returned metrics on the LoggedModel itself only when it knows the model id
        # (not for models:/<name>/<version> on a SQL store); otherwise do it here, same dataset link.
        if passed_model_id is None:
            link = target.mlflow_dataset(name=ds_name, digest=ds_digest)
            mlflow.log_metrics(metrics, model_id=model_id, dataset=link, run_id=run_id)
        client = mlflow.MlflowClient()
        client.log_param(run_id, "ccfv.sampler", str(sampler.to_dict()))
        client.log_param(run_id, "ccfv.features_cached", str(cached))
        artifacts = {}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ccfv_layers.csv"
            n = len(features.layers)
            pd.DataFrame({
                "layer": features.layers,
                "class_consistency": [metrics[f"ccfv.layer{i}.class_consistency"] for i in range(n)],
                "feature_variety": [metrics[f"ccfv.layer{i}.feature_variety"] for i in range(n)],
            }).to_csv(path, index=False)
            client.log_artifact(run_id, str(path), artifact_path="ccfv")
        from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact

        uri = mlflow.get_run(run_id).info.artifact_uri + "/ccfv/ccfv_layers.csv"
        artifacts["ccfv_layers"] = CsvEvaluationArtifact(uri=uri)
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)
