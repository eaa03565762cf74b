"""Every tag, alias and metric name the project writes to MLflow: built and parsed here, nowhere else.

Registry (model version) tags:

- written by ``register``: ``architecture``, ``source_dataset``, ``feature_layers``, ``in_channels``,
  ``out_channels``, ``patch_size``, ``ccfv.bank``, ``ccfv.flavor``;
- written by ``pretrain``: ``pretrain.<key>`` (the budget, its digest, the run);
- written by ``score``: ``transferability.<method>.<dataset>``, ``transferability.sampler.<dataset>``
  (which sampler settings made the scores), ``transferability.scored.<dataset>`` (completeness marker,
  written last: ``<settings>/<data digest>``), ``transferability.rank.<dataset>``, and the alias
  ``best-<dataset>`` on the registered model of the rank-1 version (docs/reliability.md);
- written by ``finetune``: ``finetune.dice.<dataset>`` (the mean over fine-tuning seeds),
  ``finetune.dice_sd.<dataset>`` (their standard deviation, with 2 or more seeds),
  ``finetune.seeds.<dataset>``, ``finetune.run.<dataset>``, ``finetune.budget.<dataset>``;
- written by ``pretrain``: ``pretrain.source_dice`` (Dice on the source's own held-out 20%) and, for
  a pre-training curve's checkpoints, ``pretrain.checkpoint`` (``early`` or ``final``);
- written by ``select``: ``select.round.<dataset>`` (the last successive-halving round a shortlisted
  version ran, 0 first) and ``select.dice.<dataset>`` (its validation Dice in that round), and the
  alias ``selected-<dataset>`` on the registered model of the winner (one holder per bank);
- the version's description ends with a summary of these tags (:mod:`mlflow_ccfv.tracking.summary`);
- written when a bank folder is registered (the shipped bank, ``export-bank`` output): the same
  ``pretrain.*`` tags as the version it was exported from, and ``weights.sha256`` (the file's digest).

Metrics: every method by name (``ccfv``, ``logme``, ...) and per decoder layer ``i`` (bottleneck = 0)
``ccfv.layer<i>.class_consistency`` (C_cons, Eq. 2) and ``ccfv.layer<i>.feature_variety`` (F_v, Eq. 4);
``finetune_dice`` (on the fine-tune run, the version's LoggedModel and the version's score runs of
that dataset, so one Runs-tab row shows a model's scores beside its measured Dice); ``finetune_dice_sd``,
``finetune_dice.seed<s>``; ``source_dice`` (pre-training); the report's ``<dataset>.<method>.<statistic>`` and ``avg.<method>.<statistic>``, their interval bounds
``<...>.<statistic>.low`` / ``.high``, ``<dataset>.noise_ceiling`` (and bounds) and
``<dataset>.<method>.permutation_p``.
``val_dice`` (a ``select`` candidate's validation Dice, one value per round, ``step`` = the round;
on the ``select`` run, the winner's at the last round), ``select_steps`` (the fine-tuning steps of a ``select`` schedule).
Run tags: ``ccfv.stage``, ``ccfv.model``, ``ccfv.dataset``, ``ccfv.bank``, ``ccfv.process`` (the
``host:pid:start`` of the process that owns a run or a PENDING LoggedModel) and ``ccfv.run_key`` (one
per-version run per key).
On a ``score`` parent run, MLflow's note ``mlflow.note.content`` holds the ranked table; on its
experiment, ``mlflow.sharedViewState.ccfv-<dataset>`` the Runs tab's view of the ranking
(:mod:`mlflow_ccfv.tracking.views`).
Run tags: ``ccfv.stage``, ``ccfv.model``, ``ccfv.dataset``, ``ccfv.bank``; a dataset run
(``log-dataset``) also ``ccfv.dataset.digest`` (the content digest its artifacts are addressed by)
and ``ccfv.dataset.artifact`` (the artifact folder holding the MSD task); a scoring or fine-tuning
run also ``ccfv.normalization`` (the intensity normalisation its model's input got: ``target``, or an
imported version's own, read from its ``import.normalization`` tag).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from mlflow_ccfv.options import format_ints

__all__ = [
    "DatasetKey",
    "ARCHITECTURE",
    "BANK",
    "DEFAULT_SETTINGS",
    "FEATURE_LAYERS",
    "FLAVOR",
    "FINETUNED_FROM",
    "NETWORK",
    "RUN_PARAM_PREFIX",
    "RUN_REGISTERED",
    "RUN_RESUMED_FROM",
    "IMPORT_NORMALIZATION",
    "IN_CHANNELS",
    "OUT_CHANNELS",
    "PATCH_SIZE",
    "PROCESS",
    "RANK",
    "REGISTERING",
    "RESERVED_PREFIXES",
    "RUN_BANK",
    "RUN_DATASET_ARTIFACT",
    "RUN_DATASET_DIGEST",
    "RUN_DATASET",
    "RUN_KEY",
    "RUN_MODEL",
    "RUN_NORMALIZATION",
    "RUN_STAGE",
    "FINETUNE_DICE",
    "SOURCE_DATASET",
    "PRETRAIN_CHECKPOINT",
    "PRETRAIN_SOURCE_DICE",
    "WEIGHTS_SHA256",
    "SOURCE_DICE_METRIC",
    "best_alias",
    "SELECT_STEPS",
    "RUN_SELECT_ROUND",
    "RUN_SELECT_WINNER",
    "VAL_DICE",
    "select_dice_tag",
    "select_round_tag",
    "selected_alias",
    "dice_sd_tag",
    "dice_spread_metric",
    "dice_tag",
    "finetune_seeds_tag",
    "format_seeds",
    "interval_metrics",
    "noise_ceiling_metric",
    "permutation_metric",
    "seed_dice_metric",
    "finetune_budget_tag",
    "finetune_run_tag",
    "import_tags",
    "layer_metric",
    "layer_metrics",
    "parse_dice_tag",
    "parse_score_tag",
    "prefixed_params",
    "pretrain_tag",
    "pretrain_values",
    "reserved_prefix",
    "rank_tag",
    "ranked_by_tag",
    "report_metric",
    "run_key",
    "sampler_tag",
    "score_tag",
    "scored_tag",
    "settings_digest",
    "spec_digest",
    "TWIN_CONTROL_METRIC",
    "RUN_NOTE",
    "SHARED_VIEW_PREFIX",
    "ranking_view_key",
    "shared_view_tag",
]

#: The tag namespaces this package writes itself (scores, ranks, Dice, run bookkeeping, pre-training
#: record, weight digests); a user's ``register --tag`` may not write into them.
RESERVED_PREFIXES = ("transferability.", "finetune.", "ccfv.", "pretrain.", "weights.")


def reserved_prefix(key: str) -> str | None:
    """The :data:`RESERVED_PREFIXES` entry ``key`` starts with, or None when the key is free to use."""
    return next((p for p in RESERVED_PREFIXES if key.startswith(p)), None)


# -- registry tags written at registration ------------------------------------------------------------
ARCHITECTURE = "architecture"
SOURCE_DATASET = "source_dataset"
FEATURE_LAYERS = "feature_layers"
IN_CHANNELS = "in_channels"
OUT_CHANNELS = "out_channels"
PATCH_SIZE = "patch_size"
BANK = "ccfv.bank"
FLAVOR = "ccfv.flavor"
#: The network identity (:func:`~mlflow_ccfv.scoring.ranking.network_identity`: the spec without its output
#: channels, and the patch size): a version and its random-init twin share it.
NETWORK = "ccfv.network"
#: On an imported version: its own intensity normalisation, a JSON list of per-channel records
#: (:class:`~mlflow_ccfv.data.normalization.IntensityNormalization`), written by :func:`import_tags`.
IMPORT_NORMALIZATION = "import.normalization"

# -- run tags -----------------------------------------------------------------------------------------
RUN_STAGE = "ccfv.stage"
RUN_MODEL = "ccfv.model"
RUN_DATASET = "ccfv.dataset"
RUN_BANK = BANK
#: ``<host>:<pid>:<process start>`` of the process that owns a RUNNING run or a PENDING LoggedModel.
PROCESS = "ccfv.process"
#: On a LoggedModel that ``register`` logged: present until its model version exists (a model a killed
#: ``register`` left READY but unregistered still carries it, and the next command deletes it).
REGISTERING = "ccfv.registering"
#: One per-version scoring run (or fine-tuning run) per key: a rerun replaces the runs of its key.
RUN_KEY = "ccfv.run_key"
#: On a dataset run: the MSD folder's content digest (``MSDDataset.digest()``), set once the upload is complete.
RUN_DATASET_DIGEST = "ccfv.dataset.digest"
#: On a dataset run: the artifact path of the uploaded task folder (``runs:/<run_id>/<this>``).
RUN_DATASET_ARTIFACT = "ccfv.dataset.artifact"
#: On a ``score`` parent run: the method the ranks and the alias follow (``ccfv`` or ``ccfv_twin``).
RUN_RANKED_BY = "ccfv.ranked_by"
#: Prefix of the parameters ``score`` and the evaluator log on their runs (``ccfv.dataset``, ``ccfv.sampler``
#: ...): prefixed because ``mlflow run`` has already logged the entry point's own parameters there.
RUN_PARAM_PREFIX = "ccfv"
#: On a ``pretrain`` run: the versions it registered (``models:/<name>/<version>``, comma-separated).
RUN_REGISTERED = "ccfv.registered"
#: On a fine-tuning run: the step its checkpoint was resumed from.
RUN_RESUMED_FROM = "ccfv.resumed_from_step"
#: On a fine-tuned model: the version it was fine-tuned from.
FINETUNED_FROM = "ccfv.finetuned_from"
#: On a ``score`` parent run: the random-init controls that score above every pre-trained model (then no
#: pre-trained model is expected to beat training from scratch).
RUN_FROM_SCRATCH = "ccfv.from_scratch"
#: On a ``score`` parent run: comma-separated labels of the versions whose scoring failed.
RUN_FAILED_VERSIONS = "ccfv.failed_versions"
#: On a scoring or fine-tuning run: the intensity normalisation the model's input got (``target``:
#: the target's own statistics; else the model's recorded one, described).
RUN_NORMALIZATION = "ccfv.normalization"

#: MLflow's run description (the run page's "Description"): on a ``score`` parent run, the ranked table.
RUN_NOTE = MLFLOW_RUN_NOTE
#: MLflow's experiment tag prefix of a shared Runs-tab view (``mlflow.sharedViewState.<key>``: the
#: JSON of the view's filter, sort and visible columns; opened by ``?viewStateShareKey=<key>``).
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."

#: Metric: mean held-out Dice after fine-tuning (the ground truth transferability estimates predict).
FINETUNE_DICE = "finetune_dice"

#: Metric of a ``select`` candidate's run: its Dice on the validation cases, ``step`` = the round (0 first).
VAL_DICE = "val_dice"
#: Metric of a ``select`` run: the fine-tuning steps of its schedule (over rounds and candidates).
SELECT_STEPS = "select_steps"
#: On a ``select`` run: the winner's label (``name/version``).
RUN_SELECT_WINNER = "ccfv.select.winner"
#: On a ``select`` candidate's run: the last round it ran (0 first).
RUN_SELECT_ROUND = "ccfv.select.round"

#: The method name in ``transferability.rank.<dataset>`` (not an estimator).
RANK = "rank"
#: The pseudo-methods of ``transferability.sampler.<dataset>`` and ``transferability.scored.<dataset>``.
SAMPLER = "sampler"
SCORED = "scored"
#: The pseudo-method of ``transferability.ranked_by.<dataset>``: the ranking a version's rank follows.
RANKED_BY = "ranked_by"
#: The value of ``transferability.sampler.<dataset>`` for scores made with the default sampler settings.
DEFAULT_SETTINGS = "default"

_SCORE_TAG = re.compile(r"^transferability\.(?P<method>[a-z_0-9]+)\.(?P<dataset>.+)$")


@dataclass(frozen=True)
class DatasetKey:
    """A tag, alias or metric name made of a fixed ``prefix`` and a dataset name: called with the
    dataset, it returns the name (``dice_tag("Task04")`` = ``finetune.dice.Task04``)."""

    prefix: str

    def __call__(self, dataset: str) -> str:
        return f"{self.prefix}{dataset}"

    def dataset_of(self, key: str) -> str | None:
        """The dataset of a name made by this key; None for any other name."""
        dataset = key[len(self.prefix) :] if key.startswith(self.prefix) else ""
        return dataset or None


def score_tag(method: str, dataset: str) -> str:
    """``transferability.<method>.<dataset>``: the version's score on ``dataset``."""
    return f"transferability.{method}.{dataset}"


#: ``transferability.rank.<dataset>``: 1 = best-ranked version of every scored version of ``dataset``.
rank_tag = DatasetKey(score_tag(RANK, ""))

#: ``transferability.sampler.<dataset>``: the digest of the sampler settings the scores were made with
#: (``default``, or :func:`settings_digest` of the overrides); ranks compare equal settings only.
sampler_tag = DatasetKey(score_tag(SAMPLER, ""))

#: ``transferability.ranked_by.<dataset>``: the ranking (``logme``, ``ccfv_twin`` ...) that a ranked
#: version's ``transferability.rank.<dataset>`` follows.
ranked_by_tag = DatasetKey(score_tag(RANKED_BY, ""))

#: ``transferability.scored.<dataset>``: the completeness marker of a version's score tags, written
#: after all of them (value :func:`~mlflow_ccfv.tracking.tag_values.scored_value`); a version without
#: it holds no current score.
scored_tag = DatasetKey(score_tag(SCORED, ""))

#: Evaluator metric: the CC-FV of the model's random-init twin (``ccfv_twin`` = ``ccfv`` minus it).
TWIN_CONTROL_METRIC = "ccfv.twin_control"


def spec_digest(spec_json: str) -> str:
    """The first 16 hex digits of the SHA-256 of a network specification's JSON (tag ``pretrain.spec``
    of a random-init twin: which network it is the twin of)."""
    return hashlib.sha256(spec_json.encode()).hexdigest()[:16]


def settings_digest(overrides: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None) -> str:
    """``default`` when ``overrides`` (sampler settings a user chose) equal ``defaults``, else the first
    12 hex digits of the SHA-256 of their canonical JSON (tuples as lists, keys sorted)."""

    def canonical(value: Any) -> Any:
        return [canonical(v) for v in value] if isinstance(value, (list, tuple)) else value

    changed = {
        k: canonical(v)
        for k, v in (overrides or {}).items()
        if defaults is None or k not in defaults or canonical(defaults[k]) != canonical(v)
    }
    if not changed:
        return DEFAULT_SETTINGS
    text = json.dumps(changed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_key(*parts: Any) -> str:
    """The :data:`RUN_KEY` of a run made from ``parts`` (model id, data digest, settings ...): 16 hex digits."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def ranking_view_key(dataset: str) -> str:
    """``ccfv-<dataset>``: the share key of an experiment's ranking view of ``dataset`` (letters, digits,
    ``-`` and ``_`` only, so that it travels in a URL unquoted)."""
    return "ccfv-" + re.sub(r"[^A-Za-z0-9_-]", "_", dataset)


def shared_view_tag(key: str) -> str:
    """``mlflow.sharedViewState.<key>``: the experiment tag holding the shared view ``key``."""
    return f"{SHARED_VIEW_PREFIX}{key}"


#: ``best-<dataset>``: the registered-model alias of the rank-1 version.
best_alias = DatasetKey("best-")

#: ``selected-<dataset>``: the registered-model alias of the version ``select`` chose (one per bank).
selected_alias = DatasetKey("selected-")

#: ``select.round.<dataset>``: the last successive-halving round a shortlisted version ran (0 first).
select_round_tag = DatasetKey("select.round.")

#: ``select.dice.<dataset>``: a shortlisted version's validation Dice in the last round it ran.
select_dice_tag = DatasetKey("select.dice.")

#: ``finetune.dice.<dataset>``: mean Dice after fine-tuning on ``dataset`` (held-out cases).
dice_tag = DatasetKey("finetune.dice.")

#: ``finetune.dice_sd.<dataset>``: standard deviation of the Dice over the fine-tuning seeds (ddof 1).
dice_sd_tag = DatasetKey("finetune.dice_sd.")

#: ``finetune.seeds.<dataset>``: the fine-tuning seeds whose Dice the mean and sd are over (``0,1,2``).
finetune_seeds_tag = DatasetKey("finetune.seeds.")


def format_seeds(seeds: Iterable[int]) -> str:
    """``0,1,2``: the value of :func:`finetune_seeds_tag` (read back with :func:`mlflow_ccfv.options.parse_ints`)."""
    return format_ints(list(seeds))


def seed_dice_metric(seed: int) -> str:
    """``finetune_dice.seed<seed>``: one fine-tuning seed's Dice on the multi-seed fine-tune run."""
    return f"finetune_dice.seed{int(seed)}"


#: ``finetune.run.<dataset>``: the run id of that fine-tuning.
finetune_run_tag = DatasetKey("finetune.run.")

#: ``finetune.budget.<dataset>``: digest of the fine-tuning budget (equal budgets, equal digest).
finetune_budget_tag = DatasetKey("finetune.budget.")


def pretrain_tag(key: str) -> str:
    """``pretrain.<key>`` (``steps``, ``budget``, ``run_id`` ...)."""
    return f"pretrain.{key}"


#: Dice of a pre-trained version on its own source's held-out 20% (did the bank learn its source?).
PRETRAIN_SOURCE_DICE = pretrain_tag("source_dice")
#: ``early`` or ``final``: which checkpoint of a pre-training run the version is.
PRETRAIN_CHECKPOINT = pretrain_tag("checkpoint")
#: The pre-training run's metric of the same Dice (per evaluated step on a curve).
SOURCE_DICE_METRIC = "source_dice"
#: SHA-256 of the safetensors file a version was registered from (a shipped or exported bank).
WEIGHTS_SHA256 = "weights.sha256"


def pretrain_values(tags: Mapping[str, str]) -> dict[str, str]:
    """``{key: value}`` of a version's ``pretrain.<key>`` tags (the inverse of :func:`pretrain_tag`)."""
    prefix = pretrain_tag("")
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix) and len(k) > len(prefix)}


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
    return dice_tag.dataset_of(key)


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


def interval_metrics(name: str, estimate: float, low: float, high: float) -> dict[str, float]:
    """``<name>``, ``<name>.low``, ``<name>.high``: a report figure and its 95% interval (finite values only)."""
    values = {name: estimate, f"{name}.low": low, f"{name}.high": high}
    return {k: float(v) for k, v in values.items() if v == v}


def noise_ceiling_metric(dataset: str) -> str:
    """``<dataset>.noise_ceiling``: weighted tau between fine-tuning replicates' rankings of the bank."""
    return f"{dataset}.noise_ceiling"


def permutation_metric(dataset: str, method: str) -> str:
    """``<dataset>.<method>.permutation_p``: p-value of the method's weighted tau against random rankings."""
    return f"{dataset}.{method}.permutation_p"


def dice_spread_metric(dataset: str) -> str:
    """``<dataset>.dice_spread``: best minus worst fine-tune Dice over the bank (can the target discriminate)."""
    return f"{dataset}.dice_spread"
