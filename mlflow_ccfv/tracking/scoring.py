"""Score model versions on a target: one feature pass per version feeding every estimator.

:func:`score_loaded` is the single code path shared by the ``score`` entry point
(:func:`score_versions`) and the ``ccfv`` evaluator: sample the version's decoder features on the
target's cases (:func:`mlflow_ccfv.features.sample_features`, cached on disk), then run
:func:`mlflow_ccfv.estimators.score_methods` and :func:`~mlflow_ccfv.estimators.ccfv_layers` (the
per-layer components of Eq. 5).

Metric names: every method by name (``ccfv``, ``logme``, ...), and per decoder layer ``i``
(bottleneck = 0) ``ccfv.layer<i>.class_consistency`` (C_cons, Eq. 2) and
``ccfv.layer<i>.feature_variety`` (F_v, Eq. 4).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mlflow_ccfv.estimators import METHODS, EstimatorError, ccfv_layers, score_methods
from mlflow_ccfv.features import FeatureSet, SamplerConfig, sample_features
from mlflow_ccfv.tracking.datasets import Target
from mlflow_ccfv.tracking.registry import LoadedModel, load_version, version_uri

_logger = logging.getLogger(__name__)

#: Where features are cached unless ``cache_dir`` / ``MLFLOW_CCFV_CACHE`` says otherwise.
DEFAULT_CACHE_DIR = ".ccfv-cache"
#: Methods scored when none are asked for: CC-FV and every baseline (ablations on request).
DEFAULT_METHODS = ("ccfv", "logme", "leep", "gbc", "transrate", "nleep", "nce", "hscore")
RANK_METHOD = "ccfv"


def parse_methods(methods: str | Sequence[str] | None) -> list[str]:
    """``None``/``""``/``"default"`` -> :data:`DEFAULT_METHODS`; ``"all"`` -> every method; else names
    (comma-separated).

    ``ccfv`` is always scored (it ranks the bank).
    """
    if methods is None or methods in ("", "default") or methods == []:
        wanted = list(DEFAULT_METHODS)
    elif methods == "all":
        wanted = list(METHODS)
    else:
        names = methods.split(",") if isinstance(methods, str) else list(methods)
        wanted = [m.strip() for m in names if m.strip()]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)} (or 'all', 'default').")
    if RANK_METHOD not in wanted:
        wanted.insert(0, RANK_METHOD)
    return list(dict.fromkeys(wanted))


def sampler_config_for(loaded: LoadedModel, config: SamplerConfig | dict | None) -> SamplerConfig:
    """A :class:`SamplerConfig` as is; else the defaults with the version's ``patch_size`` tag as the
    sliding-window ROI, updated with ``config`` when it is a dict of overrides."""
    if isinstance(config, SamplerConfig):
        return config
    base = {}
    patch = loaded.tags.get("patch_size")
    if patch:
        base["roi_size"] = tuple(int(p) for p in patch.split(","))
    return SamplerConfig(**{**base, **(config or {})})


def cache_key(model_id: str, target: Target, config: SamplerConfig, layers: Sequence[str]) -> str:
    """Hash of (LoggedModel id, dataset digest, case ids, pre-processing, sampler settings, layers)."""
    payload = {
        "model_id": model_id,
        "dataset_digest": target.digest,
        "cases": list(target.case_ids),
        "sampler": config.to_dict(),
        "layers": list(layers),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir or os.environ.get("MLFLOW_CCFV_CACHE") or DEFAULT_CACHE_DIR)


class _CaseCache:
    """Pre-processed target cases, loaded once and shared by every version of a scoring call."""

    def __init__(self, target: Target):
        self.target = target
        self._cases = None

    def cases(self):
        if self._cases is None:
            self._cases = list(self.target.dataset.iter_cases(self.target.case_ids))
        return self._cases


def extract_features(
    loaded: LoadedModel,
    target: Target,
    config: SamplerConfig,
    *,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    cases: _CaseCache | None = None,
) -> tuple[FeatureSet, bool]:
    """Features of ``loaded`` on ``target``; ``(features, from_cache)``. ``force`` re-runs inference."""
    key = cache_key(loaded.model_id or loaded.uri, target, config, loaded.feature_layers)
    path = _cache_dir(cache_dir) / "features" / (loaded.model_id or "unregistered") / f"{key}.npz"
    if path.is_file() and not force:
        try:
            features = FeatureSet.load(path)
            _logger.info("%s: features from cache %s", loaded.label, path)
            return features, True
        except (ValueError, OSError, KeyError) as exc:
            _logger.warning("%s: ignoring unreadable feature cache %s (%s)", loaded.label, path, exc)
    cases = cases or _CaseCache(target)
    features = sample_features(loaded.module, cases.cases(), layers=loaded.feature_layers, config=config)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    features.save(tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache entry
    return features, False


def compute_metrics(features: FeatureSet, methods: Sequence[str]) -> dict[str, float]:
    """Every requested method plus CC-FV's per-layer components, as MLflow metric name -> value."""
    layers_input = features.ccfv_inputs()
    baseline_methods = [m for m in methods if not m.startswith("ccfv")]
    feats = labels = probs = None
    if baseline_methods:
        feats, labels, probs = features.baseline_inputs()
    try:  # once: the CC-FV variants of Eq. 5 and the logged components share it
        parts = ccfv_layers(layers_input)
    except (ValueError, TypeError, FloatingPointError, np.linalg.LinAlgError) as err:
        raise EstimatorError("ccfv", str(err)) from err
    metrics = dict(score_methods(layers_input, feats, labels, probs, methods=list(methods), layer_scores=parts))
    for i, layer in enumerate(parts):
        metrics[f"ccfv.layer{i}.class_consistency"] = float(layer.class_consistency)
        metrics[f"ccfv.layer{i}.feature_variety"] = float(layer.feature_variety)
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"Non-finite score(s) {', '.join(bad)}.")
    return metrics


def score_loaded(
    loaded: LoadedModel,
    target: Target,
    methods: Sequence[str] | None = None,
    sampler_config: SamplerConfig | dict | None = None,
    *,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    cases: _CaseCache | None = None,
) -> tuple[dict[str, float], SamplerConfig, bool]:
    """Score one loaded model: ``(metrics, sampler config used, features came from cache)``."""
    config = sampler_config_for(loaded, sampler_config)
    features, cached = extract_features(loaded, target, config, force=force, cache_dir=cache_dir, cases=cases)
    return compute_metrics(features, parse_methods(methods)), config, cached


@dataclass
class VersionResult:
    """The outcome for one version: metrics, or the error that stopped it."""

    label: str
    name: str | None
    version: str | None
    model_id: str | None
    tags: dict
    metrics: dict
    config: SamplerConfig | None
    cached: bool
    seconds: float
    error: str | None = None


def _score_one(item, target, methods, sampler_config, force, cache_dir, cases) -> VersionResult:
    start = time.perf_counter()
    label = item if isinstance(item, str) else version_uri(item)
    loaded = None
    try:
        loaded = load_version(item)
        metrics, config, cached = score_loaded(
            loaded, target, methods, sampler_config, force=force, cache_dir=cache_dir, cases=cases
        )
        return VersionResult(loaded.label, loaded.name, str(loaded.version), loaded.model_id, loaded.tags,
                             metrics, config, cached, time.perf_counter() - start)
    except Exception as exc:  # reported by name; the other versions are still scored
        _logger.error("%s failed: %s", label, exc)
        return VersionResult(
            loaded.label if loaded else label.removeprefix("models:/"),
            getattr(loaded, "name", None), None, getattr(loaded, "model_id", None),
            getattr(loaded, "tags", {}), {}, None, False, time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}",
        )


def rank_table(results: Sequence[VersionResult], methods: Sequence[str], dataset_name: str) -> pd.DataFrame:
    """One row per version, best CC-FV first (``rank`` 1); failed versions last with their error."""
    rows = []
    for r in results:
        row = {"model": r.label, "name": r.name, "version": r.version, "model_id": r.model_id,
               "architecture": r.tags.get("architecture"), "source_dataset": r.tags.get("source_dataset")}
        row.update({m: r.metrics.get(m) for m in methods})
        row.update({"cached": r.cached, "seconds": round(r.seconds, 2), "error": r.error})
        rows.append(row)
    df = pd.DataFrame(rows)
    ok = df["error"].isna()
    df["rank"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df.loc[ok, "rank"] = df.loc[ok, RANK_METHOD].rank(ascending=False, method="first").astype(int)
    df = df.sort_values(["rank", "model"], na_position="last").reset_index(drop=True)
    df.insert(0, "dataset", dataset_name)
    return df[["rank"] + [c for c in df.columns if c != "rank"]]


def ranking_plot(table: pd.DataFrame, path: str | os.PathLike, method: str = RANK_METHOD) -> Path:
    """Horizontal bars of ``method`` per version, best at the top, rank in the label (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["error"].isna()].sort_values("rank", ascending=False)
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(ok), 2) + 1.2))
    labels = [f"#{int(r)}  {m} ({s})" for r, m, s in zip(ok["rank"], ok["model"], ok["source_dataset"])]
    ax.barh(labels, ok[method].astype(float), color="tab:blue")
    ax.set_xlabel(f"{method} (higher = expected to transfer better)")
    ax.set_title(f"Transferability to {table['dataset'].iloc[0]}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_transferability_tags(results: Sequence[VersionResult], table: pd.DataFrame, dataset_name: str, methods) -> None:
    """Version tags ``transferability.<method>.<dataset>``, ``transferability.rank.<dataset>`` and the
    alias ``best-<dataset>`` on the registered model holding the top version (only for scored versions)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    ranks = {row.model: int(row.rank) for row in table.itertuples() if row.error is None or pd.isna(row.error)}
    for r in results:
        if r.error is not None or r.name is None:
            continue
        for m in methods:
            client.set_model_version_tag(r.name, r.version, f"transferability.{m}.{dataset_name}", f"{r.metrics[m]:.6g}")
        client.set_model_version_tag(r.name, r.version, f"transferability.rank.{dataset_name}", str(ranks[r.label]))
    scored = [r for r in results if r.error is None and r.name is not None]
    if not scored:
        return
    alias = f"best-{dataset_name}"
    best = next(r for r in scored if ranks[r.label] == 1)
    for name in sorted({r.name for r in scored} - {best.name}):
        if alias in (client.get_registered_model(name).aliases or {}):
            client.delete_registered_model_alias(name, alias)
    client.set_registered_model_alias(best.name, alias, best.version)


def _log_version_run(result: VersionResult, target: Target, ds, methods) -> str:
    """One run nested in the active (score) run: the version's params and metrics on ``target``."""
    import mlflow

    with mlflow.start_run(run_name=f"{result.label} on {target.name}", nested=True) as run:
        mlflow.log_input(ds, context="target")
        params = {"model_uri": f"models:/{result.label}", "model_id": result.model_id, "dataset": target.name,
                  "dataset_digest": target.digest, "split": target.split, "n_cases": len(target.case_ids),
                  "methods": ",".join(methods), "features_cached": result.cached}
        params.update({f"sampler.{k}": v for k, v in result.config.to_dict().items()})
        mlflow.log_params(params)
        mlflow.set_tags({"ccfv.dataset": target.name, "ccfv.model": result.label})
        # One call: the run's metrics, linked to the version's LoggedModel and to the dataset.
        mlflow.log_metrics(result.metrics, model_id=result.model_id, dataset=ds)
        return run.info.run_id


def score_versions(
    versions_or_uris: Iterable,
    dataset: Target,
    methods: str | Sequence[str] | None = None,
    sampler_config: SamplerConfig | dict | None = None,
    force: bool = False,
    *,
    cache_dir: str | os.PathLike | None = None,
    log: bool = True,
    artifact_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Score versions (``ModelVersion`` objects or ``models:/`` URIs) on a target and record everything.

    ``dataset`` is a :class:`~mlflow_ccfv.tracking.datasets.Target` (:func:`make_target`). With
    ``log`` (default), inside the active run or a new one: the target manifest as an input, one
    (nested) run per version with params and metrics linked to its LoggedModel and the dataset, the
    version tags and the ``best-<dataset>`` alias, and the ranked table (CSV, Markdown) and plot (PNG)
    as artifacts of the parent run. Returns the ranked table; failed versions are rows with ``error``
    set (and no tags).
    """
    import mlflow

    methods = parse_methods(methods)
    items = list(versions_or_uris)
    if not items:
        raise ValueError("No model versions to score.")
    cases = _CaseCache(target=dataset)
    results = []
    for i, item in enumerate(items, 1):
        result = _score_one(item, dataset, methods, sampler_config, force, cache_dir, cases)
        status = "FAILED: " + result.error if result.error else (
            f"ccfv={result.metrics['ccfv']:.4f}" + (" (cached features)" if result.cached else ""))
        _logger.info("[%d/%d] %s on %s: %s (%.1fs)", i, len(items), result.label, dataset.name, status, result.seconds)
        results.append(result)
    table = rank_table(results, methods, dataset.name)
    if not log:
        return table
    ds = dataset.mlflow_dataset()
    active = mlflow.active_run()
    if active is None:
        mlflow.start_run(run_name=f"score {dataset.name}")
    try:
        mlflow.log_input(ds, context="target")
        # Prefixed: `mlflow run` has already logged the entry point's own (string) parameters here.
        mlflow.log_params({"ccfv.dataset": dataset.name, "ccfv.dataset_digest": dataset.digest,
                           "ccfv.split": dataset.split, "ccfv.methods": ",".join(methods),
                           "ccfv.n_versions": len(items), "ccfv.force": force})
        for r in results:
            if r.error is None:
                _log_version_run(r, dataset, ds, methods)
        failed = [r.label for r in results if r.error]
        if failed:
            mlflow.set_tag("ccfv.failed_versions", ",".join(failed))
        write_transferability_tags(results, table, dataset.name, methods)
        out = Path(artifact_dir) if artifact_dir else None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = out or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"ranking_{dataset.name}"
            table.to_csv(folder / f"{stem}.csv", index=False)
            (folder / f"{stem}.md").write_text(table_markdown(table, methods))
            ranking_plot(table, folder / f"{stem}.png")
            for suffix in ("csv", "md", "png"):
                mlflow.log_artifact(str(folder / f"{stem}.{suffix}"), artifact_path="ranking")
    finally:
        if active is None:
            mlflow.end_run("FAILED" if table["error"].notna().any() else "FINISHED")
    return table


def table_markdown(table: pd.DataFrame, methods: Sequence[str]) -> str:
    """The ranked table as Markdown (rank, model, source, scores, errors)."""
    cols = ["rank", "model", "architecture", "source_dataset"] + list(methods) + ["cached", "error"]
    shown = table[cols].copy()
    for m in methods:
        shown[m] = [("" if pd.isna(v) else f"{v:.4f}") for v in shown[m]]
    shown["rank"] = ["" if pd.isna(v) else str(int(v)) for v in shown["rank"]]
    shown["error"] = ["" if (e is None or (isinstance(e, float) and math.isnan(e))) else str(e) for e in shown["error"]]
    header = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    return header + body


