"""The ``ccfv`` evaluator: ``mlflow.models.evaluate(..., model_type="segmentation", evaluators=["ccfv"])``.

Registered through the ``mlflow.model_evaluator`` entry point (pyproject.toml). A thin adapter of
MLflow's plugin API to :func:`mlflow_ccfv.scoring.score_model`, the code path of ``score``:

- ``data``: the target manifest (:func:`mlflow_ccfv.tracking.target_dataset`, or a DataFrame with the
  columns ``case_id, image, label`` [+ ``image_sha256, label_sha256, split``]); or
  ``evaluator_config={"dataset": "Task07", "data_root": "data", "split": "train"}`` to name the target.
- ``evaluator_config`` keys: ``methods`` (default ``["ccfv"]``; ``"default"`` = CC-FV and every
  baseline, ``"all"`` adds the ablations), ``sampler`` (dict of SamplerConfig overrides), ``force``,
  ``cache_dir``, ``dataset``/``data_root``/``split``, ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``;
  default CUDA when available), ``amp`` (mixed-precision inference on CUDA, off by default),
  ``twin`` (default true: also score the model's random-init twin, the same network with random
  weights drawn from seed 0, and return ``ccfv_twin`` = ``ccfv`` minus the twin's; the ranking
  docs/study.md's evidence supports; models without a network specification get none) and
  ``allow_pickle`` (see below).
- ``model``: a model in the ``mlflow_ccfv`` flavor, or one logged with ``mlflow.pytorch`` (as
  ``register`` and ``score`` accept). An ``mlflow.pytorch`` model is pickled code: MLflow's pyfunc
  loader has already unpickled it by the time an evaluator runs, so pass URIs of such models only when
  you trust whoever logged them; the evaluator uses it only with ``allow_pickle: True`` in the config
  or ``MLFLOW_CCFV_ALLOW_PICKLE=1`` (:func:`~mlflow_ccfv.tracking.load.pickle_allowed`).

An imported model's recorded intensity normalisation (its LoggedModel's ``import.normalization`` tag)
is applied to the target's images, for the model and its twin; the run tag ``ccfv.normalization``
names the one applied (``target``: the target's own statistics).

``can_evaluate`` only answers (MLflow asks every installed evaluator, with configs meant for others);
the config is validated in ``evaluate``. Returns ``ccfv``, ``ccfv.layer<i>.class_consistency`` /
``.feature_variety``, ``ccfv_twin`` and ``ccfv.twin_control`` (the twin's CC-FV), and the requested baselines; they are logged on the run and on the model's
LoggedModel, linked to the dataset.

The run gets the tags of a ``score`` version run (``ccfv.stage=score``, ``ccfv.dataset``, ``ccfv.model``
= ``<name>/<version>`` of the registered version, else the LoggedModel id), so the Runs tab's ranking
filter and view list it; a run whose name MLflow generated (nobody named it, e.g. one ``evaluate``
started itself) is also named ``<name>/<version> on <dataset>``, while a name the caller gave is kept.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact
from torch import nn

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.data import Target, make_target, target_from_manifest
from mlflow_ccfv.data.normalization import IntensityNormalization
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.networks import NetworkSpec, decoder_layers
from mlflow_ccfv.options import parse_bool, parse_ints, split_list
from mlflow_ccfv.scoring import DEFAULT_METHODS, ModelScores, score_model
from mlflow_ccfv.scoring.ranking import TWIN_METHOD, TWIN_SEED
from mlflow_ccfv.tracking.datasets import load_msd_dataset, mlflow_dataset
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME
from mlflow_ccfv.tracking.load import ALLOW_PICKLE_ENV, pickle_allowed, version_normalization
from mlflow_ccfv.tracking.retry import retrying
from mlflow_ccfv.tracking.search import search_versions
from mlflow_ccfv.training import seeded_network

__all__ = ["CONFIG_KEYS", "MODEL_TYPES", "CCFVEvaluator", "evaluate"]

_logger = logging.getLogger(__name__)

MODEL_TYPES = ("segmentation",)
CONFIG_KEYS = (
    "methods",
    "sampler",
    "force",
    "cache_dir",
    "dataset",
    "data_root",
    "split",
    "device",
    "amp",
    "allow_pickle",
    "twin",
)


def _check_config(config: dict[str, Any]) -> None:
    unknown = sorted(set(config) - set(CONFIG_KEYS) - {"col_mapping"})
    if unknown:
        raise OptionError(
            f"Unknown ccfv evaluator_config key(s) {', '.join(unknown)}; valid: {', '.join(CONFIG_KEYS)}."
        )


def _network(model, config: dict[str, Any]) -> nn.Module:
    """The ``nn.Module`` behind a pyfunc model of the ``mlflow_ccfv`` or ``pytorch`` flavor."""
    flavors = set(getattr(getattr(model, "metadata", None), "flavors", None) or {})
    if FLAVOR_NAME in flavors:
        return model.get_raw_model()
    if "pytorch" not in flavors:
        raise OptionError(
            "The ccfv evaluator needs a model in the mlflow_ccfv flavor (register it with `mlflow-ccfv register`) "
            f"or one logged with mlflow.pytorch; got a pyfunc model with flavors {sorted(flavors)}."
        )
    allow = config.get("allow_pickle")
    if not pickle_allowed(None if allow is None else parse_bool(allow, "allow_pickle")):
        raise OptionError(
            "This model was logged with mlflow.pytorch, i.e. as pickled code that runs when it is loaded. "
            "Use it only if you trust whoever logged it: pass evaluator_config={'allow_pickle': True} "
            f"(or set {ALLOW_PICKLE_ENV}=1); or register its weights with a network specification (`mlflow-ccfv "
            "register --spec ... --checkpoint ...`), which loads without unpickling."
        )
    module = model.get_raw_model()
    if not isinstance(module, nn.Module) or not any(True for _ in module.named_children()):
        raise OptionError(
            "This mlflow.pytorch model reloads without its named modules (an exported 'pt2' graph?); log it "
            "with mlflow.pytorch.log_model(..., serialization_format='pickle') or register its state_dict."
        )
    return module.eval()


def _target(config: dict[str, Any], dataset) -> tuple[Target, str, str]:
    """The target, and the name and digest its metrics are linked to."""
    if config.get("dataset"):
        target = make_target(
            load_msd_dataset(config["dataset"], config.get("data_root"), config.get("cache_dir")),
            config.get("split", "train"),
        )
        return target, target.name, target.digest
    manifest = dataset.features_data
    if not isinstance(manifest, pd.DataFrame):
        raise OptionError(
            "Pass the target manifest as data (target_dataset(...) or a DataFrame with image/label columns)."
        )
    target = target_from_manifest(manifest, name=dataset.name or None, root=config.get("data_root"))
    return target, dataset.name or target.name, dataset.digest or target.digest


def _model_label(model_id: str | None) -> str:
    """``<name>/<version>`` of the registered version behind LoggedModel ``model_id`` (the lowest, when
    several point at it); the LoggedModel id when none does; ``pyfunc`` without an id."""
    if not model_id:
        return "pyfunc"
    versions = search_versions(f"source_path = 'models:/{model_id}'")
    if not versions:
        return model_id
    first = min(versions, key=lambda mv: (mv.name, int(mv.version)))
    return f"{first.name}/{first.version}"


#: The names MLflow gives a run started without one (``<adjective>-<noun>-<number>``, e.g. ``wistful-tern-959``).
_GENERATED_NAME = re.compile(r"^[a-z]+-[a-z]+-\d{1,3}$")


def _has_generated_name(run_id: str) -> bool:
    """Whether run ``run_id`` carries a name MLflow generated (nobody chose it): only such a run is
    renamed, so a name the caller gave is never replaced."""
    name = mlflow.MlflowClient().get_run(run_id).info.run_name or ""
    return bool(_GENERATED_NAME.match(name))


def _tag_run(run_id: str, label: str, dataset: str) -> None:
    """The tags of a ``score`` version run on ``run_id``; its name too when MLflow generated the one it has."""
    client = mlflow.MlflowClient()
    for key, value in {T.RUN_STAGE: "score", T.RUN_DATASET: dataset, T.RUN_MODEL: label}.items():
        retrying(client.set_tag, run_id, key, value, what=f"run tag {key}")
    if _has_generated_name(run_id):
        retrying(client.update_run, run_id, name=f"{label} on {dataset}", what="run name")


@dataclass(frozen=True)
class _EvaluatedModel:
    """The network behind the evaluated pyfunc model and what its LoggedModel's tags say about it:
    ``layers`` (tag ``feature_layers``, else the decoder layers), ``patch`` (tag ``patch_size``), its own
    intensity ``normalization``, and its ``spec`` (None for an ``mlflow.pytorch`` model: it has no twin)."""

    module: nn.Module
    model_id: str | None
    layers: Sequence[str]
    patch: tuple[int, ...] | None
    normalization: IntensityNormalization | None
    spec: NetworkSpec | None

    @classmethod
    def of(cls, model, config: dict[str, Any], model_id: str | None) -> _EvaluatedModel:
        module = _network(model, config)
        model_tags = dict(mlflow.MlflowClient().get_logged_model(model_id).tags or {}) if model_id else {}
        layers = split_list(model_tags.get(T.FEATURE_LAYERS)) or decoder_layers(module)
        patch = model_tags.get(T.PATCH_SIZE)
        normalization = version_normalization(model_tags, f"models:/{model_id}")
        # the mlflow_ccfv flavor's pyfunc keeps its NetworkSpec; an mlflow.pytorch model has none
        spec = getattr(getattr(model, "_model_impl", None), "spec", None)
        patch_size = parse_ints(patch, T.PATCH_SIZE) if patch else None
        return cls(module, model_id, layers, patch_size, normalization, spec)


def _scoring_options(config: dict[str, Any], model: _EvaluatedModel) -> dict[str, Any]:
    """The :func:`~mlflow_ccfv.scoring.score_model` options the model and its twin are scored with."""
    return {
        "patch_size": model.patch,
        "force": parse_bool(config.get("force", False), "force"),
        "cache_dir": config.get("cache_dir"),
        "device": config.get("device") or None,
        "amp": parse_bool(config.get("amp", False), "amp"),
        "normalization": model.normalization,  # the twin sees what the model sees
    }


def _twin_metrics(model: _EvaluatedModel, target: Target, config: dict[str, Any], ccfv: float) -> dict[str, float]:
    """``ccfv_twin`` (the model's CC-FV minus its random-init twin's) and the twin's own CC-FV; none
    when the model has no network specification to build the twin from."""
    if model.spec is None:
        _logger.warning("no ccfv_twin: the model has no network specification to build its twin from")
        return {}
    twin = score_model(
        seeded_network(model.spec, TWIN_SEED),
        model.layers,
        target,
        ["ccfv"],
        config.get("sampler"),
        model_id=f"twin-{T.spec_digest(model.spec.to_json())}-seed{TWIN_SEED}",
        label="random-init twin",
        **_scoring_options(config, model),
    ).scores["ccfv"]
    return {TWIN_METHOD: ccfv - twin, T.TWIN_CONTROL_METRIC: twin}


def _log_layers(run_id: str, result: ModelScores) -> str:
    """Log C_cons and F_v per decoder layer as the run's ``ccfv/ccfv_layers.csv``; returns its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ccfv_layers.csv"
        pd.DataFrame(
            {
                "layer": result.layer_names,
                "class_consistency": [p.class_consistency for p in result.layers],
                "feature_variety": [p.feature_variety for p in result.layers],
            }
        ).to_csv(path, index=False)
        mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path="ccfv")
    return mlflow.get_run(run_id).info.artifact_uri + "/ccfv/ccfv_layers.csv"


def _record_run(run_id: str, result: ModelScores, model_id: str | None, dataset: str) -> str:
    """Tag and name the evaluation run as a ``score`` version run, log its params, normalisation and
    per-layer table; returns the table's URI."""
    client = mlflow.MlflowClient()
    _tag_run(run_id, _model_label(model_id), dataset)
    params = {
        "sampler": str(result.config.to_dict() if result.config else {}),
        "features_cached": str(result.cached),
    }
    for key, value in T.prefixed_params(T.RUN_PARAM_PREFIX, params).items():
        client.log_param(run_id, key, value)
    client.set_tag(run_id, T.RUN_NORMALIZATION, result.normalization[:5000])
    return _log_layers(run_id, result)


class CCFVEvaluator(ModelEvaluator):
    """CC-FV transferability of a segmentation model to the target described by the evaluation data."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type in MODEL_TYPES

    def evaluate(
        self,
        *,
        model_type,
        dataset,
        run_id,
        evaluator_config,
        model=None,
        extra_metrics=None,
        custom_artifacts=None,
        predictions=None,
        **kwargs,
    ) -> EvaluationResult:
        config = dict(evaluator_config or {})
        _check_config(config)
        if model is None:
            raise OptionError("The ccfv evaluator scores a model: pass model='models:/<name>/<version>'.")
        passed_model_id = kwargs.get("model_id")
        model_id = passed_model_id or getattr(getattr(model, "metadata", None), "model_id", None)
        evaluated = _EvaluatedModel.of(model, config, model_id)
        target, ds_name, ds_digest = _target(config, dataset)
        methods = config.get("methods", ["ccfv"])
        result = score_model(
            evaluated.module,
            evaluated.layers,
            target,
            list(DEFAULT_METHODS) if methods == "default" else methods,
            config.get("sampler"),
            model_id=model_id,
            label=f"models:/{model_id}" if model_id else "pyfunc",
            **_scoring_options(config, evaluated),
        )
        metrics = {**result.scores, **T.layer_metrics(result.layers)}
        if parse_bool(config.get("twin", True), "twin") and "ccfv" in result.scores:
            metrics.update(_twin_metrics(evaluated, target, config, result.scores["ccfv"]))

        # MLflow logs the returned metrics on the LoggedModel itself only when it knows the model id
        # (not for models:/<name>/<version> on a SQL store); otherwise do it here, same dataset link.
        if passed_model_id is None:
            link = mlflow_dataset(target, name=ds_name, digest=ds_digest)
            mlflow.log_metrics(metrics, model_id=model_id, dataset=link, run_id=run_id)
        uri = _record_run(run_id, result, model_id, ds_name)
        return EvaluationResult(
            metrics=metrics, artifacts={"ccfv_layers": CsvEvaluationArtifact(uri=uri)}, run_id=run_id
        )


def evaluate(model: str, data: Any, *, evaluator_config: dict[str, Any] | None = None, **kwargs: Any):
    """``mlflow.models.evaluate(model, data, model_type="segmentation", evaluators=["ccfv"], ...)`` that
    reads the model's MLmodel file first and refuses an ``mlflow.pytorch`` (pickled) model without the
    opt-in *before anything loads it*: MLflow's own loader unpickles a model URI before any evaluator
    runs, so the evaluator's own refusal comes after the pickle has run. ``model``: a model URI;
    ``evaluator_config``: the ``ccfv`` evaluator's config (``allow_pickle`` is read here too); other
    keyword arguments go to ``mlflow.models.evaluate``."""
    from mlflow.models import get_model_info

    config = dict(evaluator_config or {})
    flavors = set(get_model_info(model).flavors)  # downloads the MLmodel file only
    if FLAVOR_NAME not in flavors and "pytorch" in flavors:
        allow = config.get("allow_pickle")
        if not pickle_allowed(None if allow is None else parse_bool(allow, "allow_pickle")):
            raise OptionError(
                f"{model} was logged with mlflow.pytorch, i.e. as pickled code that runs when it is loaded; "
                f"refused before loading it. Pass evaluator_config={{'allow_pickle': True}} (or set {ALLOW_PICKLE_ENV}=1) "
                "only if you trust whoever logged it, or register its weights with a network specification."
            )
    return mlflow.models.evaluate(
        model=model,
        data=data,
        model_type=MODEL_TYPES[0],
        evaluators=["ccfv"],
        evaluator_config={"ccfv": config},
        **kwargs,
    )
