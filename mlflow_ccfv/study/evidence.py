"""Does the ranking pick better models? The report's uncertainty tables and plots, no MLflow.

From the study's long table (see :mod:`mlflow_ccfv.study.long_table`) and each (dataset, model)'s
per-case, per-seed Dice table (a fine-tune run's ``dice_per_case.csv``: ``case_id``, ``seed``, one
column per foreground class), :func:`evidence` computes with :mod:`mlflow_ccfv.study.statistics`:

- per target and for the average over targets, every method's weighted tau, Pearson, top-1 regret,
  and selection value (the Dice of its top-1 pick, the mean Dice of its top-3) with bootstrap 95%
  intervals, and the permutation p-value of its weighted tau (per target);
- per target the random pick's expected Dice and the best model's Dice (intervals too), and the
  **noise ceiling** (weighted tau between fine-tuning replicates) with its interval;
- the paired difference of each pre-registered variant against ``ccfv``.

A model without a Dice table counts with its tagged Dice as one case of one seed (no resampling
noise of its own). :func:`dice_score_plot` draws a target's Dice mean ± sd over seeds against a
method's score, each point labelled with its model; :func:`source_dice_table` lists every bank
model's Dice on its own source's held-out cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE
from mlflow_ccfv.study.statistics import (
    AVERAGE,
    BANK_STATISTICS,
    RANKING_STATISTICS,
    BootstrapResult,
    TargetData,
    bootstrap,
    model_dice,
    noise_ceiling,
    permutation_pvalue,
)
from mlflow_ccfv.study.variants import VARIANTS

__all__ = [
    "Evidence",
    "dice_array",
    "dice_score_plot",
    "evidence",
    "evidence_table",
    "figure_of",
    "interval_text",
    "pretraining_curve_plot",
    "pretraining_plateau",
    "source_dice_table",
]

_KEYS = ("case_id", "seed")


def dice_array(tables: Sequence[pd.DataFrame | None], fallback: Sequence[float]) -> np.ndarray:
    """Stack models' Dice tables into ``[n_models, n_seeds, n_cases, n_classes]`` over the union of their
    seeds, cases and classes (NaN where a model lacks one); a ``None`` table becomes the model's
    ``fallback`` Dice as one case of one seed."""
    present = [t for t in tables if t is not None and not t.empty]
    seeds = sorted({int(s) for t in present for s in (t["seed"] if "seed" in t.columns else [0])}) or [0]
    cases = sorted({str(c) for t in present for c in t["case_id"]}) or ["-"]
    classes = sorted({c for t in present for c in t.columns if c not in _KEYS}) or ["dice"]
    out = np.full((len(tables), len(seeds), len(cases), len(classes)), np.nan)
    s_index = {s: i for i, s in enumerate(seeds)}
    c_index = {c: i for i, c in enumerate(cases)}
    for m, (table, value) in enumerate(zip(tables, fallback)):
        if table is None or table.empty:
            out[m, :, :, 0] = float(value)  # the same Dice whatever is resampled
            continue
        seed_column = table["seed"] if "seed" in table.columns else pd.Series(0, index=table.index)
        for k, cls in enumerate(classes):
            if cls not in table.columns:
                continue
            for s, c, v in zip(seed_column, table["case_id"], table[cls]):
                out[m, s_index[int(s)], c_index[str(c)], k] = float(v)
    return out


@dataclass
class Evidence:
    """``figures``: long table ``scope, method, statistic, estimate, low, high`` (``method`` empty for
    the bank statistics); ``noise``: per dataset the noise ceiling (``estimate, low, high, kind``);
    ``pvalues``: per (dataset, method) ``permutation_p``; ``differences``: each variant minus ``ccfv``
    (``scope, method, statistic, estimate, low, high``); ``bootstrap``: the resamples themselves."""

    figures: pd.DataFrame
    noise: pd.DataFrame
    pvalues: pd.DataFrame
    differences: pd.DataFrame
    bootstrap: BootstrapResult | None = None
    targets: dict[str, TargetData] = field(default_factory=dict)

    def figure(self, scope: str, method: str, statistic: str) -> tuple[float, float, float]:
        return figure_of(self.figures, scope, method, statistic)


def figure_of(figures: pd.DataFrame, scope: str, method: str, statistic: str) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of one figure of a long table ``scope, method, statistic, estimate, low,
    high`` (NaNs when absent)."""
    row = figures[(figures["scope"] == scope) & (figures["method"] == method) & (figures["statistic"] == statistic)]
    if row.empty:
        return (float("nan"),) * 3
    r = row.iloc[0]
    return float(r["estimate"]), float(r["low"]), float(r["high"])


def _targets(frame: pd.DataFrame, tables: Mapping[tuple[str, str], pd.DataFrame]) -> dict[str, TargetData]:
    out = {}
    for dataset, g in frame.groupby("dataset", sort=True):
        models = sorted(g["model"].unique())
        dice_by_model = g.drop_duplicates("model").set_index("model")["dice"].astype(float)
        values = dice_array([tables.get((dataset, m)) for m in models], [dice_by_model[m] for m in models])
        wide = g.pivot(index="model", columns="method", values="score").reindex(models)
        scores = {str(m): wide[m].to_numpy(float) for m in wide.columns}
        out[str(dataset)] = TargetData(models, values, scores)
    return out


def evidence(
    frame: pd.DataFrame,
    tables: Mapping[tuple[str, str], pd.DataFrame] | None = None,
    *,
    n_resamples: int = 1000,
    n_permutations: int = 1999,
    seed: int = 0,
) -> Evidence:
    """Intervals, p-values, noise ceilings and variant differences for ``frame`` (see the module docstring).

    ``tables``: ``(dataset, model)`` -> that fine-tuning's per-case, per-seed Dice table."""
    targets = _targets(frame, tables or {})
    methods = sorted(frame["method"].unique())
    result = bootstrap(targets, methods, n_resamples=n_resamples, seed=seed)
    rows = []
    for scope in [*targets, AVERAGE]:
        for m in methods:
            for s in RANKING_STATISTICS:
                rows.append({"scope": scope, "method": m, "statistic": s, **vars(result.interval(scope, m, s))})
        for s in BANK_STATISTICS:
            rows.append({"scope": scope, "method": "", "statistic": s, **vars(result.interval(scope, "", s))})
    noise_rows, p_rows = [], []
    for name, t in targets.items():
        try:
            ceiling = noise_ceiling(t.dice, n_resamples=n_resamples, seed=seed)
            noise_rows.append({"dataset": name, **vars(ceiling.interval), "kind": ceiling.kind})
        except ValueError:  # one case of one seed: no replicate to compare
            noise_rows.append({"dataset": name, "estimate": np.nan, "low": np.nan, "high": np.nan, "kind": "none"})
        dice = model_dice(t.dice)
        for m, scores in t.scores.items():
            p = permutation_pvalue(scores, dice, n_resamples=n_permutations, seed=seed)
            p_rows.append({"dataset": name, "method": m, "permutation_p": p})
    diff_rows = []
    if "ccfv" in methods:
        for variant in [v for v in VARIANTS if v in methods]:
            for scope in [*targets, AVERAGE]:
                for s in ("weighted_tau", "top1_regret"):
                    d = result.difference(scope, s, variant, "ccfv")
                    diff_rows.append({"scope": scope, "method": variant, "statistic": s, **vars(d)})
    return Evidence(
        pd.DataFrame(rows),
        pd.DataFrame(noise_rows, columns=["dataset", "estimate", "low", "high", "kind"]),
        pd.DataFrame(p_rows, columns=["dataset", "method", "permutation_p"]),
        pd.DataFrame(diff_rows, columns=["scope", "method", "statistic", "estimate", "low", "high"]),
        result,
        targets,
    )


def interval_text(estimate: float, low: float = float("nan"), high: float = float("nan"), digits: int = 3) -> str:
    """``estimate [low, high]`` (``estimate`` alone without bounds, ``–`` when missing)."""
    if estimate != estimate:
        return "–"
    if low != low:
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def evidence_table(ev: Evidence, methods: Sequence[str], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Per scope (target or ``avg``) and method: weighted tau, Pearson, top-1 regret, top-1 and top-3
    Dice (``estimate [low, high]`` text), the permutation p-value, and the scope's noise ceiling,
    random-pick and best Dice."""
    labels = labels or {}
    noise = ev.noise.set_index("dataset")
    pvalues = ev.pvalues.set_index(["dataset", "method"])["permutation_p"]
    rows = []
    for scope in [*sorted(ev.noise["dataset"]), AVERAGE]:
        ceiling = (
            interval_text(*noise.loc[scope, ["estimate", "low", "high"]].astype(float)) if scope in noise.index else "–"
        )
        for m in methods:
            if not (ev.figures["method"] == m).any():
                continue
            row = {"dataset": scope, "method": labels.get(m, m), "noise_ceiling": ceiling}
            for s in RANKING_STATISTICS:
                row[s] = interval_text(*ev.figure(scope, m, s))
            p = pvalues.get((scope, m), float("nan"))
            row["permutation_p"] = "–" if p != p else f"{p:.4f}"
            for s in BANK_STATISTICS:
                row[s] = interval_text(*ev.figure(scope, "", s))
            rows.append(row)
    return pd.DataFrame(rows)


def source_dice_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every bank model once: architecture, source, checkpoint, steps and its Dice on its own source's
    held-out cases (``source_dice``; NaN for controls and models pre-trained before it was measured)."""
    cols = [c for c in ("model", "architecture", "source_dataset", "checkpoint", "source_dice") if c in frame.columns]
    if "source_dice" not in cols:
        return pd.DataFrame(columns=cols)
    return frame.drop_duplicates("model")[cols].sort_values(["source_dataset", "model"]).reset_index(drop=True)


def dice_score_plot(frame: pd.DataFrame, dataset: str, method: str, path: str | Path, label: str | None = None) -> Path:
    """``method``'s score (x) against the fine-tune Dice (y, mean ± sd over seeds as error bars) for
    ``dataset``, each point labelled with its model; random-init controls in red. Saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    sub = frame[(frame["dataset"] == dataset) & (frame["method"] == method)]
    sub = sub[np.isfinite(sub["score"].astype(float))]
    if sub.empty:
        raise ValueError(f"No {method!r} scores for dataset {dataset!r}.")
    x = sub["score"].to_numpy(float)
    y = sub["dice"].to_numpy(float)
    sd = sub["dice_sd"].to_numpy(float) if "dice_sd" in sub.columns else np.full(len(sub), np.nan)
    control = (
        sub["source_dataset"].astype(str).eq(CONTROL_SOURCE).to_numpy()
        if "source_dataset" in sub.columns
        else np.zeros(len(sub), bool)
    )
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for mask, colour, name in ((~control, "tab:blue", "pre-trained"), (control, "tab:red", "random init")):
        if mask.any():
            ax.errorbar(
                x[mask],
                y[mask],
                yerr=np.nan_to_num(sd[mask]),
                fmt="o",
                color=colour,
                ecolor=colour,
                capsize=3,
                label=name,
            )
    for xi, yi, model in zip(x, y, sub["model"]):
        ax.annotate(str(model), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{label or method} score")
    ax.set_ylabel("fine-tune Dice (mean ± sd over seeds)")
    ax.set_title(f"{dataset}: fine-tune Dice against {label or method}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


#: A curve has flattened when the second half of its budget added at most this much source Dice.
PLATEAU_TOLERANCE = 0.02


def pretraining_plateau(curves: pd.DataFrame, tolerance: float = PLATEAU_TOLERANCE) -> pd.DataFrame:
    """Did pre-training stop improving? Per curve (``architecture``, ``source_dataset``; ``step``,
    ``source_dice``), with ``S`` its last step: ``first_half`` = the best source Dice at steps <= S/2,
    ``second_half`` = the best at steps > S/2, ``gain`` = their difference, and ``verdict``
    ``flattened`` when the gain is at most ``tolerance`` (doubling the budget from S/2 to S bought at
    most that much), else ``still rising``; ``unknown`` with fewer than one point in either half.
    A curve is one run's held-out Dice every few steps under a schedule that decays to 0 at ``S``, so
    "flattened" reads: this budget is enough for this run, not that a longer schedule could not help."""
    rows = []
    for (arch, source), g in curves.groupby(["architecture", "source_dataset"], sort=True):
        g = g.dropna(subset=["source_dice"]).sort_values("step")
        last = int(g["step"].max()) if not g.empty else 0
        early = g.loc[g["step"] <= last / 2, "source_dice"]
        late = g.loc[g["step"] > last / 2, "source_dice"]
        first, second = (float(early.max()), float(late.max())) if len(early) and len(late) else (np.nan, np.nan)
        gain = second - first
        verdict = "unknown" if gain != gain else "flattened" if gain <= tolerance else "still rising"
        rows.append(
            {
                "architecture": arch,
                "source_dataset": source,
                "steps": last,
                "first_half": first,
                "second_half": second,
                "gain": gain,
                "verdict": verdict,
            }
        )
    columns = ["architecture", "source_dataset", "steps", "first_half", "second_half", "gain", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def pretraining_curve_plot(curves: pd.DataFrame, path: str | Path) -> Path:
    """The source Dice against the pre-training step (``curves``: ``architecture``, ``source_dataset``,
    ``step``, ``source_dice``), one panel per architecture, one line per source. Saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    if curves.empty:
        raise ValueError("No pre-training curve to plot: pre-train with curve_every > 0.")
    archs = sorted(curves["architecture"].unique())
    fig = Figure(figsize=(5 * len(archs), 4))
    axes = np.atleast_1d(fig.subplots(1, len(archs), sharey=True))
    for ax, arch in zip(axes, archs):
        for source, g in curves[curves["architecture"] == arch].groupby("source_dataset", sort=True):
            g = g.sort_values("step")
            ax.plot(g["step"], g["source_dice"], marker="o", label=str(source))
        ax.set_title(f"{arch}: Dice on the source's held-out cases")
        ax.set_xlabel("pre-training step")
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("source Dice")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
