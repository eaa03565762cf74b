"""The paper's evaluation as tables and plots: correlations of scores with fine-tune Dice.

Input: a long table ``frame`` (pandas) with one row per (target dataset, bank model, method):

=================  ==============================================================================
``dataset``        target task (e.g. ``Task03``)
``model``          bank model id (e.g. ``bank-unet-Task06/2``)
``method``         estimator name from :data:`mlflow_ccfv.estimators.METHODS`
``score``          its transferability score (higher = expected to transfer better); NaN if failed
``dice``           the model's mean foreground Dice after fine-tuning on the dataset
=================  ==============================================================================

plus optional descriptive columns (``architecture``, ``source_dataset``) carried into the ranked table.

Per (dataset, method) over the bank (:func:`correlations`): weighted Kendall's tau and Pearson's r
between score and Dice (Table 1; :func:`mlflow_ccfv.estimators.weighted_tau`, ``pearson``), and the
**top-1 regret**: best Dice in the bank minus the Dice of the model the method ranks first (0 = it
picked the best model). Then the Table-1-style table (methods x datasets + average, tau and
Pearson), the Table-2-style ablation table (CC-FV variants, tau), and a Fig.-2-style scatter of the
standardised score against Dice, one panel per method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.estimators.catalogue import method_labels, method_names
from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING, needed_estimators
from mlflow_ccfv.study.correlation import pearson, weighted_tau
from mlflow_ccfv.study.evidence import (
    PLATEAU_TOLERANCE,
    Evidence,
    dice_score_plot,
    evidence,
    evidence_table,
    pretraining_curve_plot,
    pretraining_plateau,
    source_dice_table,
)
from mlflow_ccfv.study.goal import goal_markdown, goal_table
from mlflow_ccfv.study.sanity import choose_default, sanity_markdown, sanity_table
from mlflow_ccfv.study.tables import to_markdown
from mlflow_ccfv.study.variants import AUTO_RANK, VARIANTS, add_variants

__all__ = [
    "METHOD_LABELS",
    "REPORT_METHODS",
    "REQUIRED_COLUMNS",
    "TABLE1_METHODS",
    "TABLE2_METHODS",
    "Report",
    "architecture_correlations",
    "architecture_table",
    "correlations",
    "discrimination_table",
    "evidence_markdown",
    "ranked_table",
    "regret_table",
    "scatter_plot",
    "standardise",
    "table1",
    "table2",
    "write_report",
]


#: Table 1's rows: CC-FV and the baselines (the paper: LogME, TransRate, LEEP, GBC, CC-FV).
TABLE1_METHODS = method_names(table="table1")
#: Table 2's rows: CC-FV and its ablations.
TABLE2_METHODS = method_names(table="table2")
#: Display names, as in the paper where it has one.
METHOD_LABELS = method_labels()
#: Every method a report may hold: the estimators and the report-level variants.
REPORT_METHODS = (*METHODS, *VARIANTS)
REQUIRED_COLUMNS = ("dataset", "model", "method", "score", "dice")


def _check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"The scores table lacks column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}."
        )
    unknown = sorted(set(frame["method"]) - set(REPORT_METHODS))
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; known: {', '.join(REPORT_METHODS)}.")
    dup = frame.duplicated(["dataset", "model", "method"])
    if dup.any():
        first = frame.loc[dup, ["dataset", "model", "method"]].iloc[0].tolist()
        raise ValueError(f"Two scores for the same (dataset, model, method) {first}.")
    return frame


def correlations(frame: pd.DataFrame, min_models: int = 3) -> pd.DataFrame:
    """Per (dataset, method): ``weighted_tau``, ``pearson``, ``top1_regret``, ``top1_model``, ``n_models``.

    Models with a non-finite score or Dice are left out of that method's correlation; with fewer than
    ``min_models`` left (or constant scores or Dice) the correlations are NaN.
    """
    _check_frame(frame)
    rows = []
    best_dice = frame["dice"].astype(float).groupby(frame["dataset"]).max()
    for (dataset, method), g in frame.groupby(["dataset", "method"], sort=True):
        g = g[np.isfinite(g["score"].astype(float)) & np.isfinite(g["dice"].astype(float))]
        scores, dice = g["score"].to_numpy(float), g["dice"].to_numpy(float)
        tau = rho = regret = float("nan")
        top = None
        if len(g) >= 1:
            i = int(np.argmax(scores))
            top = str(g["model"].iloc[i])
            regret = float(best_dice[dataset] - dice[i])
        if len(g) >= min_models and np.ptp(scores) > 0 and np.ptp(dice) > 0:
            tau, rho = float(weighted_tau(scores, dice)), float(pearson(scores, dice))
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "weighted_tau": tau,
                "pearson": rho,
                "top1_regret": regret,
                "top1_model": top,
                "n_models": int(len(g)),
            }
        )
    return pd.DataFrame(
        rows, columns=["dataset", "method", "weighted_tau", "pearson", "top1_regret", "top1_model", "n_models"]
    )


def _ordered(methods: Sequence[str], present: Sequence[str]) -> list[str]:
    return [m for m in methods if m in set(present)]


def _metric_row(corr: pd.DataFrame, method: str, column: str, datasets: Sequence[str]) -> list[float]:
    """``method``'s ``column`` per dataset, then their NaN-skipping mean (the ``Avg`` column)."""
    sub = corr[corr["method"] == method].set_index("dataset")[column]
    values = [float(sub.get(d, float("nan"))) for d in datasets]
    return values + [_nanmean(values)]


def _metric_table(corr: pd.DataFrame, methods: Sequence[str], column: str) -> pd.DataFrame:
    """Methods x datasets (+ ``Avg``) of one ``corr`` column, indexed by the methods' labels."""
    datasets = sorted(corr["dataset"].unique())
    present = _ordered(methods, corr["method"].unique())
    return pd.DataFrame(
        [_metric_row(corr, m, column, datasets) for m in present],
        index=pd.Index([METHOD_LABELS.get(m, m) for m in present], name="method"),
        columns=datasets + ["Avg"],
    )


def table1(corr: pd.DataFrame, methods: Sequence[str] = TABLE1_METHODS) -> pd.DataFrame:
    """Methods x datasets (+ ``Avg``) of weighted tau and Pearson, indexed by (method, metric)."""
    datasets = sorted(corr["dataset"].unique())
    rows, index = [], []
    for m in _ordered(methods, corr["method"].unique()):
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


def architecture_correlations(frame: pd.DataFrame, min_models: int = 3) -> pd.DataFrame:
    """:func:`correlations` within each architecture's part of the bank (column ``architecture`` added).

    A mixed bank ranks models of different architectures against each other; this asks the narrower
    question a user with one architecture in mind asks (regret is then relative to that architecture's
    best model). Needs the ``architecture`` column.
    """
    _check_frame(frame)
    if "architecture" not in frame.columns:
        raise ValueError("The scores table has no 'architecture' column; per-architecture correlations need it.")
    parts = [
        correlations(g, min_models).assign(architecture=str(arch))
        for arch, g in frame.groupby("architecture", sort=True)
    ]
    return pd.concat(parts, ignore_index=True) if parts else correlations(frame, min_models).assign(architecture="")


def architecture_table(
    arch_corr: pd.DataFrame, methods: Sequence[str] = TABLE1_METHODS + TABLE2_METHODS[1:]
) -> pd.DataFrame:
    """Methods x architectures: the within-architecture weighted tau (:func:`architecture_correlations`)
    averaged over the datasets."""
    archs = sorted(arch_corr["architecture"].unique())
    present = _ordered(methods, arch_corr["method"].unique())
    rows = []
    for m in present:
        sub = arch_corr[arch_corr["method"] == m]
        rows.append([_nanmean(sub[sub["architecture"] == a]["weighted_tau"].tolist()) for a in archs])
    return pd.DataFrame(
        rows,
        index=pd.Index([METHOD_LABELS.get(m, m) for m in present], name="method"),
        columns=[f"{a} (avg tau)" for a in archs],
    )


def discrimination_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, can the study tell models apart? ``n_models``, the Dice ``min``/``max``/``spread``
    (best minus worst), the best model, and (with a ``source_dataset`` column) the best random-init
    control's Dice against the best pre-trained model's, and whether pre-training won."""
    _check_frame(frame)
    models = frame.drop_duplicates(["dataset", "model"])
    rows = []
    for dataset, g in models.groupby("dataset", sort=True):
        dice = g["dice"].astype(float)
        row = {
            "dataset": dataset,
            "n_models": int(len(g)),
            "dice_min": float(dice.min()),
            "dice_max": float(dice.max()),
            "dice_spread": float(dice.max() - dice.min()),
            "best_model": str(g["model"].iloc[int(np.argmax(dice.to_numpy()))]),
        }
        if "source_dataset" in g.columns:
            control = g["source_dataset"].astype(str).eq("random-init")
            best_control = float(dice[control].max()) if control.any() else float("nan")
            best_pretrained = float(dice[~control].max()) if (~control).any() else float("nan")
            row.update(
                {
                    "best_control_dice": best_control,
                    "best_pretrained_dice": best_pretrained,
                    "pretraining_wins": bool(best_pretrained > best_control),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("dataset")


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def ranked_table(
    frame: pd.DataFrame,
    dataset: str,
    by: str = "ccfv",
    methods: Sequence[str] = ("ccfv", "logme", "leep", "gbc", "transrate"),
) -> pd.DataFrame:
    """One row per bank model for ``dataset``, ranked by ``by`` (1 = best), with the chosen methods'
    scores, the measured Dice and its rank within the bank."""
    _check_frame(frame)
    sub = frame[frame["dataset"] == dataset]
    if sub.empty:
        raise ValueError(
            f"No scores for dataset {dataset!r}; datasets present: {', '.join(sorted(frame['dataset'].unique()))}."
        )
    wide = sub.pivot(index="model", columns="method", values="score")
    meta = sub.drop_duplicates("model").set_index("model")
    out = pd.DataFrame(index=wide.index)
    for col in ("architecture", "source_dataset"):
        if col in meta.columns:
            out[col] = meta[col]
    for m in methods:
        if m in wide.columns:
            out[m] = wide[m]
    out["dice"] = meta["dice"].astype(float)
    out["dice_rank"] = out["dice"].rank(ascending=False, method="min").astype("Int64")
    if by not in wide.columns:
        raise ValueError(f"No {by!r} scores for {dataset!r}; methods present: {', '.join(wide.columns)}.")
    out = out.assign(_key=wide[by]).sort_values("_key", ascending=False, na_position="last").drop(columns="_key")
    out.insert(0, "rank", range(1, len(out) + 1))
    return out.reset_index()


def standardise(scores: np.ndarray) -> np.ndarray:
    """z-scores over the bank (Fig. 2 "standardised the various metrics"); constant -> zeros."""
    scores = np.asarray(scores, float)
    sd = scores.std()
    return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)


def scatter_plot(
    frame: pd.DataFrame, corr: pd.DataFrame, dataset: str, path: str | Path, methods: Sequence[str] = REPORT_METHODS
) -> Path:
    """Fig.-2-style figure for ``dataset``: per method, standardised score (x) vs fine-tune Dice (y),
    with a least-squares line and the method's tau and Pearson in the panel title. Saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    sub = frame[frame["dataset"] == dataset]
    present = _ordered(methods, sub["method"].unique())
    if not present:
        raise ValueError(f"No scores for dataset {dataset!r}.")
    ncols = min(4, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    c = corr[corr["dataset"] == dataset].set_index("method")
    for ax, m in zip(axes.flat, present):
        g = sub[(sub["method"] == m) & np.isfinite(sub["score"].astype(float))]
        x, y = standardise(g["score"].to_numpy(float)), g["dice"].to_numpy(float)
        control = (
            g.get("source_dataset", pd.Series([""] * len(g), index=g.index)).astype(str).eq("random-init").to_numpy()
        )
        ax.scatter(x[~control], y[~control], s=22, color="tab:blue", label="pre-trained")
        if control.any():
            ax.scatter(x[control], y[control], s=30, marker="x", color="tab:red", label="random init")
        if len(x) >= 2 and np.ptp(x) > 0:
            k, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 10)
            ax.plot(xs, k * xs + b, color="gray", lw=1)
        tau = c["weighted_tau"].get(m, float("nan")) if m in c.index else float("nan")
        rho = c["pearson"].get(m, float("nan")) if m in c.index else float("nan")
        ax.set_title(f"{METHOD_LABELS.get(m, m)}\nτ={tau:.2f}  r={rho:.2f}", fontsize=9)
        ax.set_xlabel("standardised score", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("fine-tune Dice", fontsize=8)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Transferability vs fine-tune Dice on {dataset}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def evidence_markdown(ev: Evidence, methods: Sequence[str], labels: Mapping[str, str] | None = None) -> str:
    """The evidence as Markdown: the noise ceilings, one table per target (and the average), the variants."""
    table = evidence_table(ev, methods, labels)
    text = "## Noise ceiling (weighted tau between fine-tuning replicates; no estimator can be expected to beat it)\n\n"
    text += to_markdown(ev.noise.set_index("dataset"))
    for scope, g in table.groupby("dataset", sort=False):
        text += (
            f"\n## {scope}: figures with bootstrap 95% intervals (noise ceiling {g['noise_ceiling'].iloc[0]}; "
            f"random pick {g['random_dice'].iloc[0]}, best model {g['best_dice'].iloc[0]})\n\n"
        )
        text += to_markdown(g.drop(columns=["dataset", "noise_ceiling", "random_dice", "best_dice"]))
    if not ev.differences.empty:
        text += "\n## Pre-registered variants minus CC-FV (paired bootstrap, same resamples)\n\n"
        text += to_markdown(ev.differences)
    return text


@dataclass
class Report:
    """What :func:`write_report` produced: the scores it was given, the correlation rows, the tables
    and the files."""

    correlations: pd.DataFrame
    table1: pd.DataFrame
    table2: pd.DataFrame
    regret: pd.DataFrame
    discrimination: pd.DataFrame = field(default_factory=pd.DataFrame)
    by_architecture: pd.DataFrame = field(default_factory=pd.DataFrame)
    architecture_correlations: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    goal: pd.DataFrame = field(default_factory=pd.DataFrame)
    goal_method: str = "ccfv"
    files: dict[str, Path] = field(default_factory=dict)
    evidence: Evidence | None = None
    source_dice: pd.DataFrame = field(default_factory=pd.DataFrame)
    plateau: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the sanity properties per (target, method) (:func:`~mlflow_ccfv.study.sanity.sanity_table`)
    sanity: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the pre-registered rule's table over the candidate rankings and its choice
    default_rule: pd.DataFrame = field(default_factory=pd.DataFrame)
    default_choice: str | None = None

    def markdown(self) -> str:
        text = (
            "## Table 1: weighted Kendall's tau and Pearson vs fine-tune Dice\n\n"
            + to_markdown(self.table1)
            + "\n## Table 2: ablations (weighted Kendall's tau)\n\n"
            + to_markdown(self.table2)
            + "\n## Top-1 regret (best Dice in the bank minus Dice of the top-ranked model)\n\n"
            + to_markdown(self.regret)
        )
        if not self.discrimination.empty:
            text += (
                "\n## Does the bank discriminate? (fine-tune Dice spread; best control vs best pre-trained)\n\n"
                + to_markdown(self.discrimination)
            )
        if not self.by_architecture.empty:
            text += (
                "\n## Within one architecture (weighted tau over that architecture's models, averaged "
                "over datasets)\n\n" + to_markdown(self.by_architecture)
            )
        if not self.source_dice.empty:
            text += "\n## Did the bank learn its sources? (Dice on each source's own held-out 20%)\n\n" + to_markdown(
                self.source_dice
            )
        if not self.plateau.empty:
            text += (
                "\n## Did pre-training stop improving? (best source Dice in the second half of the budget "
                f"minus the first half's; flattened: at most {PLATEAU_TOLERANCE})\n\n"
                + to_markdown(self.plateau.set_index(["architecture", "source_dataset"]))
            )
        if not self.sanity.empty:
            text += "\n" + sanity_markdown(self.sanity, self.goal_method)
        if not self.default_rule.empty:
            text += (
                "\n## The pre-registered rule for the default ranking (docs/preregistration.md)\n\n"
                f"Chosen over these targets: `{self.default_choice}`.\n\n"
                + to_markdown(self.default_rule.set_index("method"))
            )
        if self.evidence is not None:
            text += "\n" + evidence_markdown(self.evidence, REPORT_METHODS, METHOD_LABELS)
        if not self.goal.empty:
            text += "\n" + goal_markdown(self.goal, self.goal_method)
        return text


def write_report(
    frame: pd.DataFrame,
    out_dir: str | Path,
    dice_tables: Mapping[tuple[str, str], pd.DataFrame] | None = None,
    *,
    rank_by: str = "auto",
    n_resamples: int = 1000,
    n_permutations: int = 1999,
    curves: pd.DataFrame | None = None,
    in_domain: Mapping[str, Sequence[str]] | None = None,
    other_targets: pd.DataFrame | None = None,
) -> Report:
    """Compute the correlations and write ``correlations.csv``, ``table1.{md,csv}``, ``table2.{md,csv}``,
    ``regret.{md,csv}``, ``discrimination.{md,csv}``, ``scores.csv``, ``report.md`` and
    ``scatter_<dataset>.png`` under ``out_dir``; with more than one architecture in the bank also
    ``by_architecture.{md,csv}`` and ``architecture_correlations.csv``.

    The pre-registered variants (:mod:`mlflow_ccfv.study.variants`) are added to ``frame`` first.
    The evidence (:mod:`mlflow_ccfv.study.evidence`; ``dice_tables``: ``(dataset, model)`` -> the
    per-case, per-seed Dice table) goes to ``evidence.{md,csv}`` (figures with 95% intervals),
    ``noise_ceiling.csv``, ``permutation.csv``, ``variants.csv`` (variant minus ``ccfv``), per
    target ``dice_vs_<rank_by>_<dataset>.png``, and whether ``rank_by`` (``auto``, the default ranking of
    ``score``: ``ccfv_twin`` where the bank has its random-init controls, else ``ccfv``) met the ranking goal
    (:mod:`mlflow_ccfv.study.goal`: ``goal.{md,csv}``); every bank model's source Dice to ``source_dice.{md,csv}``;
    ``curves`` (``architecture``, ``source_dataset``, ``step``, ``source_dice``: the pre-training
    curves) to ``pretraining_curves.{csv,png}`` and whether each flattened to ``pretraining_plateau.{md,csv}``;
    the sanity properties of every method (:mod:`mlflow_ccfv.study.sanity`; ``in_domain``: target -> the
    sources of its own task) to ``sanity.{md,csv}`` and the pre-registered rule's choice of the default
    ranking to ``default_rule.{md,csv}``. ``other_targets``: the long tables of targets measured elsewhere
    (e.g. a stored study's ``scores.csv``), added to the sanity table and the rule only (their intervals
    need their per-case Dice, which such a table does not hold).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = add_variants(_check_frame(frame))
    if rank_by == AUTO_RANK:  # the default ranking where the bank has what it needs, else its estimator
        rank_by = DEFAULT_RANKING if (frame["method"] == DEFAULT_RANKING).any() else needed_estimators(AUTO_RANK)[-1]
    corr = correlations(frame)
    t1, t2, rg = table1(corr), table2(corr), regret_table(corr)
    report = Report(corr, t1, t2, rg, discrimination=discrimination_table(frame), scores=frame)
    if "architecture" in frame.columns and frame["architecture"].nunique() > 1:
        report.architecture_correlations = architecture_correlations(frame)
        report.by_architecture = architecture_table(report.architecture_correlations)
    report.source_dice = source_dice_table(frame)
    report.evidence = evidence(frame, dice_tables, n_resamples=n_resamples, n_permutations=n_permutations)
    files = report.files
    frame.to_csv(files.setdefault("scores.csv", out / "scores.csv"), index=False)
    corr.to_csv(files.setdefault("correlations.csv", out / "correlations.csv"), index=False)
    tables = [("table1", t1), ("table2", t2), ("regret", rg), ("discrimination", report.discrimination)]
    if not report.by_architecture.empty:
        tables.append(("by_architecture", report.by_architecture))
        report.architecture_correlations.to_csv(
            files.setdefault("architecture_correlations.csv", out / "architecture_correlations.csv"), index=False
        )
    if not report.source_dice.empty:
        tables.append(("source_dice", report.source_dice.set_index("model")))
    for name, table in tables:
        table.to_csv(files.setdefault(f"{name}.csv", out / f"{name}.csv"))
        files.setdefault(f"{name}.md", out / f"{name}.md").write_text(to_markdown(table))
    ev = report.evidence
    ev.figures.to_csv(files.setdefault("evidence.csv", out / "evidence.csv"), index=False)
    files.setdefault("evidence.md", out / "evidence.md").write_text(
        evidence_markdown(ev, REPORT_METHODS, METHOD_LABELS)
    )
    ev.noise.to_csv(files.setdefault("noise_ceiling.csv", out / "noise_ceiling.csv"), index=False)
    ev.pvalues.to_csv(files.setdefault("permutation.csv", out / "permutation.csv"), index=False)
    ev.differences.to_csv(files.setdefault("variants.csv", out / "variants.csv"), index=False)
    if (frame["method"] == rank_by).any():
        report.goal, report.goal_method = goal_table(ev.figures, ev.noise, frame, rank_by), rank_by
        report.goal.to_csv(files.setdefault("goal.csv", out / "goal.csv"), index=False)
        files.setdefault("goal.md", out / "goal.md").write_text(goal_markdown(report.goal, rank_by))
    if "source_dataset" in frame.columns and "dice" in frame.columns:
        ruled, ruled_corr = frame, corr
        if other_targets is not None and not other_targets.empty:
            extra = add_variants(_check_frame(other_targets[~other_targets["method"].isin(VARIANTS)]))
            ruled = pd.concat([frame, extra[~extra["dataset"].isin(frame["dataset"])]], ignore_index=True)
            ruled_corr = correlations(ruled)
        report.sanity = sanity_table(ruled, in_domain=in_domain)
        report.sanity.to_csv(files.setdefault("sanity.csv", out / "sanity.csv"), index=False)
        files.setdefault("sanity.md", out / "sanity.md").write_text(
            "\n".join(sanity_markdown(report.sanity, m) for m in sorted(report.sanity["method"].unique()))
        )
        report.default_choice, report.default_rule = choose_default(report.sanity, ruled_corr)
        report.default_rule.to_csv(files.setdefault("default_rule.csv", out / "default_rule.csv"), index=False)
        files.setdefault("default_rule.md", out / "default_rule.md").write_text(
            f"Chosen: `{report.default_choice}`\n\n" + to_markdown(report.default_rule.set_index("method"))
        )
    if curves is not None and not curves.empty:
        curves.to_csv(files.setdefault("pretraining_curves.csv", out / "pretraining_curves.csv"), index=False)
        files["pretraining_curves.png"] = pretraining_curve_plot(curves, out / "pretraining_curves.png")
        report.plateau = pretraining_plateau(curves)
        report.plateau.to_csv(files.setdefault("pretraining_plateau.csv", out / "pretraining_plateau.csv"), index=False)
        files.setdefault("pretraining_plateau.md", out / "pretraining_plateau.md").write_text(
            to_markdown(report.plateau.set_index(["architecture", "source_dataset"]))
        )
    files.setdefault("report.md", out / "report.md").write_text(report.markdown())
    for dataset in sorted(frame["dataset"].unique()):
        files[f"scatter_{dataset}.png"] = scatter_plot(frame, corr, dataset, out / f"scatter_{dataset}.png")
        if ((frame["dataset"] == dataset) & (frame["method"] == rank_by)).any():
            name = f"dice_vs_{rank_by}_{dataset}.png"
            files[name] = dice_score_plot(frame, dataset, rank_by, out / name, METHOD_LABELS.get(rank_by, rank_by))
    return report
