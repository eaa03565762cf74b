"""Every tag, alias and metric name the project writes to MLflow: built and parsed here, nowhere else.

Registry (model version) tags:

- written by ``register``: ``architecture``, ``source_dataset``, ``feature_layers``, ``in_channels``,
  ``out_channels``, ``patch_size``, ``ccfv.bank``, ``ccfv.flavor``;
- written by ``pretrain``: ``pretrain.<key>`` (the budget, its digest, the run);
- written by ``score``: ``transferability.<method>.<dataset>``, ``transferability.rank.<dataset>``,
  and the alias ``best-<dataset>`` on the registered model of the rank-1 version;
- written by ``finetune``: ``finetune.dice.<dataset>``, ``finetune.run.<dataset>``,
  ``finetune.budget.<dataset>``.

Metrics: every method by name (``ccfv``, ``logme``, ...) and per decoder layer ``i`` (bottleneck = 0)
``ccfv.layer<i>.class_consistency`` (C_cons, Eq. 2) and ``ccfv.layer<i>.feature_variety`` (F_v, Eq. 4);
``finetune_dice`` (on the fine-tune run, the version's LoggedModel and the version's score runs of
that dataset, so one Runs-tab row shows a model's scores beside its measured Dice); the report's ``<dataset>.<method>.<statistic>`` and ``avg.<method>.<statistic>``.
Run tags: ``ccfv.stage``, ``ccfv.model``, ``ccfv.dataset``, ``ccfv.bank``; a dataset run
(``log-dataset``) also ``ccfv.dataset.digest`` (the content digest its artifacts are addressed by)
and ``ccfv.dataset.artifact`` (the artifact folder holding the MSD task).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "ARCHITECTURE",
    "BANK",
    "FEATURE_LAYERS",
    "FLAVOR",
    "IN_CHANNELS",
    "OUT_CHANNELS",
    "PATCH_SIZE",
    "RANK",
    "RUN_BANK",
    "RUN_DATASET_ARTIFACT",
    "RUN_DATASET_DIGEST",
    "RUN_DATASET",
    "RUN_MODEL",
    "RUN_STAGE",
    "FINETUNE_DICE",
    "SOURCE_DATASET",
    "best_alias",
    "dice_spread_metric",
    "dice_tag",
    "finetune_budget_tag",
    "finetune_run_tag",
    "import_tags",
    "layer_metric",
    "layer_metrics",
    "parse_dice_tag",
    "parse_score_tag",
    "prefixed_params",
    "pretrain_tag",
    "rank_tag",
    "report_metric",
    "score_tag",
    "scores_from_tags",
]

# -- registry tags written at registration ------------------------------------------------------------
ARCHITECTURE = "architecture"
SOURCE_DATASET = "source_dataset"
FEATURE_LAYERS = "feature_layers"
IN_CHANNELS = "in_channels"
OUT_CHANNELS = "out_channels"
PATCH_SIZE = "patch_size"
BANK = "ccfv.bank"
FLAVOR = "ccfv.flavor"

# -- run tags -----------------------------------------------------------------------------------------
RUN_STAGE = "ccfv.stage"
RUN_MODEL = "ccfv.model"
RUN_DATASET = "ccfv.dataset"
RUN_BANK = BANK
#: On a dataset run: the MSD folder's content digest (``MSDDataset.digest()``), set once the upload is complete.
RUN_DATASET_DIGEST = "ccfv.dataset.digest"
#: On a dataset run: the artifact path of the uploaded task folder (``runs:/<run_id>/<this>``).
RUN_DATASET_ARTIFACT = "ccfv.dataset.artifact"

#: Metric: mean held-out Dice after fine-tuning (the ground truth transferability estimates predict).
FINETUNE_DICE = "finetune_dice"

#: The method name in ``transferability.rank.<dataset>`` (not an estimator).
RANK = "rank"

_SCORE_TAG = re.compile(r"^transferability\.(?P<method>[a-z_0-9]+)\.(?P<dataset>.+)$")
_DICE_TAG = re.compile(r"^finetune\.dice\.(?P<dataset>.+)$")


def score_tag(method: str, dataset: str) -> str:
    """``transferability.<method>.<dataset>``: the version's score on ``dataset``."""
    return f"transferability.{method}.{dataset}"


def rank_tag(dataset: str) -> str:
    """``transferability.rank.<dataset>``: 1 = best-ranked version of every scored version of ``dataset``."""
    return score_tag(RANK, dataset)


def best_alias(dataset: str) -> str:
    """``best-<dataset>``: the registered-model alias of the rank-1 version."""
    return f"best-{dataset}"


def dice_tag(dataset: str) -> str:
    """``finetune.dice.<dataset>``: mean Dice after fine-tuning on ``dataset`` (held-out cases)."""
    return f"finetune.dice.{dataset}"


def finetune_run_tag(dataset: str) -> str:
    """``finetune.run.<dataset>``: the run id of that fine-tuning."""
    return f"finetune.run.{dataset}"


def finetune_budget_tag(dataset: str) -> str:
    """``finetune.budget.<dataset>``: digest of the fine-tuning budget (equal budgets, equal digest)."""
    return f"finetune.budget.{dataset}"


def pretrain_tag(key: str) -> str:
    """``pretrain.<key>`` (``steps``, ``budget``, ``run_id`` ...)."""
    return f"pretrain.{key}"


def prefixed_params(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Run params ``<prefix>.<key>`` (``train.steps``, ``sampler.roi_size``, a study's ``pretrain.steps`` ...)."""
    return {f"{prefix}.{k}": v for k, v in values.items()}


def import_tags(info: Mapping[str, Any]) -> dict[str, str]:
    """``import.<key>`` version tags: where an imported network (MONAI bundle, nnU-Net fold) came from
    (``import.format``, ``import.source``, ``import.normalization`` ...); JSON for non-text values."""
    return {
        f"import.{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in info.items()
        if value is not None
    }


def parse_score_tag(key: str) -> tuple[str, str] | None:
    """``(method, dataset)`` of a ``transferability.<method>.<dataset>`` tag (rank included); else None."""
    match = _SCORE_TAG.match(key)
    return (match["method"], match["dataset"]) if match else None


def parse_dice_tag(key: str) -> str | None:
    """The dataset of a ``finetune.dice.<dataset>`` tag; else None."""
    match = _DICE_TAG.match(key)
    return match["dataset"] if match else None


def layer_metric(index: int, component: str) -> str:
    """``ccfv.layer<index>.<component>`` (``class_consistency`` or ``feature_variety``); bottleneck = 0."""
    return f"ccfv.layer{index}.{component}"


def layer_metrics(layer_scores: Sequence[Any]) -> dict[str, float]:
    """C_cons and F_v of each decoder layer (objects with ``class_consistency``/``feature_variety``) as metrics."""
    out: dict[str, float] = {}
    for i, layer in enumerate(layer_scores):
        for component in ("class_consistency", "feature_variety"):
            value = getattr(layer, component)
            if value is not None:  # a switched-off component has no metric
                out[layer_metric(i, component)] = float(value)
    return out


def report_metric(scope: str, method: str, statistic: str) -> str:
    """``<scope>.<method>.<statistic>``: scope is a dataset, ``avg``, or ``<architecture>.avg``."""
    return f"{scope}.{method}.{statistic}"


def dice_spread_metric(dataset: str) -> str:
    """``<dataset>.dice_spread``: best minus worst fine-tune Dice over the bank (can the target discriminate)."""
    return f"{dataset}.dice_spread"


def scores_from_tags(
    versions: Iterable[ModelVersion],
    methods: Iterable[str],
    datasets: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The study's long table from the versions' tags: one row per (dataset, version, method) where the
    version has both ``transferability.<method>.<dataset>`` and ``finetune.dice.<dataset>``.

    ``methods``: the estimator names to keep (the rank tag and unknown names are skipped);
    ``datasets=None`` takes every dataset that has a Dice tag.
    """
    known = set(methods)
    rows = []
    for v in versions:
        tags: Mapping[str, str] = dict(v.tags or {})
        dice = {d: float(val) for k, val in tags.items() if (d := parse_dice_tag(k)) is not None}
        for key, value in tags.items():
            parsed = parse_score_tag(key)
            if parsed is None or parsed[0] not in known:
                continue
            method, dataset = parsed
            if dataset not in dice or (datasets and dataset not in datasets):
                continue
            rows.append(
                {
                    "dataset": dataset,
                    "model": f"{v.name}/{v.version}",
                    "method": method,
                    "score": float(value),
                    "dice": dice[dataset],
                    "architecture": tags.get(ARCHITECTURE, ""),
                    "source_dataset": tags.get(SOURCE_DATASET, ""),
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "model", "method", "score", "dice", "architecture", "source_dataset"])
