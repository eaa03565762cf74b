"""The paper's evaluation written out: every table, plot and figure of a study's report.

:func:`write_report` takes the study's long table (:mod:`mlflow_ccfv.study.long_table`), adds the
pre-registered variants, computes the correlations, the Table-1-style table (methods x datasets +
average, tau and Pearson), the Table-2-style ablation table (CC-FV variants, tau), the regret table
(:mod:`mlflow_ccfv.study.paper_tables`), the evidence with its intervals, and a Fig.-2-style scatter of
the standardised score against Dice, one panel per method (:mod:`mlflow_ccfv.study.scatter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING, needed_estimators
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
from mlflow_ccfv.study.long_table import (
    METHOD_LABELS,
    REPORT_METHODS,
    architecture_correlations,
    check_frame,
    correlations,
    discrimination_table,
)
from mlflow_ccfv.study.paper_tables import architecture_table, regret_table, table1, table2
from mlflow_ccfv.study.sanity import choose_default, sanity_markdown, sanity_table
from mlflow_ccfv.study.scatter import scatter_plot
from mlflow_ccfv.study.tables import to_markdown
from mlflow_ccfv.study.variants import AUTO_RANK, VARIANTS, add_variants

__all__ = ["Report", "evidence_markdown", "write_report"]


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
    frame = add_variants(check_frame(frame))
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
            extra = add_variants(check_frame(other_targets[~other_targets["method"].isin(VARIANTS)]))
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
