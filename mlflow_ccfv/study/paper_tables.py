"""The paper's tables over the correlations: Table 1 (tau and Pearson), Table 2 (CC-FV ablations, tau),
top-1 regret, and the within-architecture tau; methods x datasets plus their average (``Avg``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlflow_ccfv.study.long_table import METHOD_LABELS, REPORT_METHODS, TABLE1_METHODS, TABLE2_METHODS, ordered_methods

__all__ = ["architecture_table", "regret_table", "table1", "table2"]


def _metric_row(corr: pd.DataFrame, method: str, column: str, datasets: Sequence[str]) -> list[float]:
    """``method``'s ``column`` per dataset, then their NaN-skipping mean (the ``Avg`` column)."""
    sub = corr[corr["method"] == method].set_index("dataset")[column]
    values = [float(sub.get(d, float("nan"))) for d in datasets]
    return values + [_nanmean(values)]


def _metric_table(corr: pd.DataFrame, methods: Sequence[str], column: str) -> pd.DataFrame:
    """Methods x datasets (+ ``Avg``) of one ``corr`` column, indexed by the methods' labels."""
    datasets = sorted(corr["dataset"].unique())
    present = ordered_methods(methods, corr["method"].unique())
    return pd.DataFrame(
        [_metric_row(corr, m, column, datasets) for m in present],
        index=pd.Index([METHOD_LABELS.get(m, m) for m in present], name="method"),
        columns=datasets + ["Avg"],
    )


def table1(corr: pd.DataFrame, methods: Sequence[str] = TABLE1_METHODS) -> pd.DataFrame:
    """Methods x datasets (+ ``Avg``) of weighted tau and Pearson, indexed by (method, metric)."""
    datasets = sorted(corr["dataset"].unique())
    rows, index = [], []
    for m in ordered_methods(methods, corr["method"].unique()):
        for metric, col in (("tau", "weighted_tau"), ("pearson", "pearson")):
            rows.append(_metric_row(corr, m, col, datasets))
            index.append((METHOD_LABELS.get(m, m), metric))
    return pd.DataFrame(
        rows, index=pd.MultiIndex.from_tuples(index, names=["method", "metric"]), columns=datasets + ["Avg"]
    )


def table2(corr: pd.DataFrame, methods: Sequence[str] = TABLE2_METHODS) -> pd.DataFrame:
    """CC-FV ablation variants x datasets (+ ``Avg``) of weighted tau (the paper's Table 2)."""
    return _metric_table(corr, methods, "weighted_tau")


def regret_table(corr: pd.DataFrame, methods: Sequence[str] = REPORT_METHODS) -> pd.DataFrame:
    """Methods x datasets (+ ``Avg``) of top-1 regret (lower is better; 0 = picked the best model)."""
    return _metric_table(corr, methods, "top1_regret")


def architecture_table(
    arch_corr: pd.DataFrame, methods: Sequence[str] = TABLE1_METHODS + TABLE2_METHODS[1:]
) -> pd.DataFrame:
    """Methods x architectures: the within-architecture weighted tau (:func:`architecture_correlations`)
    averaged over the datasets."""
    archs = sorted(arch_corr["architecture"].unique())
    present = ordered_methods(methods, arch_corr["method"].unique())
    rows = []
    for m in present:
        sub = arch_corr[arch_corr["method"] == m]
        rows.append([_nanmean(sub[sub["architecture"] == a]["weighted_tau"].tolist()) for a in archs])
    return pd.DataFrame(
        rows,
        index=pd.Index([METHOD_LABELS.get(m, m) for m in present], name="method"),
        columns=[f"{a} (avg tau)" for a in archs],
    )


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
