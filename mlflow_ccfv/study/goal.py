"""Did the ranking meet its goal, and does the pre-registered confirmation support a variant?
Pure pandas over the report's evidence, no MLflow.

- :func:`goal_table`: per target, the default ranking's weighted tau against 0.8 x that target's noise
  ceiling, and its top-1 regret against one Dice standard deviation (the mean over the target's bank
  of each model's standard deviation over fine-tuning seeds: a typical run's seed noise); for the
  average over targets, whether the 95% interval of the weighted tau excludes 0. A target whose noise
  ceiling is not above 0 cannot meet the first criterion (its replicates do not agree on any ranking,
  so "0.8 x the ceiling" would be met by chance): it counts as not met and says why.
- :func:`compare_studies`: the development and the confirmation run side by side (per method the
  average weighted tau and top-1 regret with intervals, from each run's ``evidence.csv``), the paired
  variant-minus-CC-FV differences (``variants.csv``), and the decision the pre-registration fixed
  (docs/preregistration.md): a variant replaces ``ccfv`` as the default only if, on the confirmation
  run, its average weighted tau is higher and the interval of the paired difference excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_ccfv.study.evidence import figure_of, interval_text
from mlflow_ccfv.study.statistics import AVERAGE
from mlflow_ccfv.study.tables import to_markdown

__all__ = ["GOAL_FRACTION", "StudyComparison", "compare_studies", "goal_markdown", "goal_table", "read_evidence"]

#: The issue's goal: weighted tau of at least this fraction of the target's noise ceiling ...
GOAL_FRACTION = 0.8
#: ... on at least this share of the targets (4 of 5).
GOAL_SHARE = 0.8


def goal_table(figures: pd.DataFrame, noise: pd.DataFrame, scores: pd.DataFrame, method: str = "ccfv") -> pd.DataFrame:
    """One row per target and one for the average (see the module docstring).

    ``figures``/``noise``: the evidence's long tables (``evidence.csv``, ``noise_ceiling.csv``);
    ``scores``: the study's long table (``dataset``, ``model``, ``dice_sd``).
    """
    rows = []
    ceilings = noise.set_index("dataset")
    for dataset in sorted(ceilings.index):
        tau = figure_of(figures, dataset, method, "weighted_tau")
        regret = figure_of(figures, dataset, method, "top1_regret")
        ceiling = float(ceilings.loc[dataset, "estimate"])
        models = scores[scores["dataset"] == dataset].drop_duplicates("model")
        sd = float(np.nanmean(models["dice_sd"].astype(float))) if "dice_sd" in models and len(models) else np.nan
        if not ceiling > 0:
            tau_ok, why = False, "noise ceiling not above 0: the replicates agree on no ranking"
        else:
            tau_ok = tau[0] >= GOAL_FRACTION * ceiling
            why = "" if tau_ok else f"tau below {GOAL_FRACTION} x ceiling"
        regret_ok = bool(regret[0] <= sd) if sd == sd else False
        if not regret_ok:
            why = "; ".join(filter(None, [why, "top-1 regret above one Dice sd" if sd == sd else "no Dice sd"]))
        rows.append(
            {
                "dataset": dataset,
                "noise_ceiling": ceiling,
                "target_tau": GOAL_FRACTION * ceiling,
                "weighted_tau": tau[0],
                "tau_low": tau[1],
                "tau_high": tau[2],
                "tau_met": bool(tau_ok),
                "top1_regret": regret[0],
                "regret_low": regret[1],
                "regret_high": regret[2],
                "dice_sd": sd,
                "regret_met": regret_ok,
                "met": bool(tau_ok and regret_ok),
                "why_not": why,
            }
        )
    tau = figure_of(figures, AVERAGE, method, "weighted_tau")
    rows.append(
        {
            "dataset": AVERAGE,
            "weighted_tau": tau[0],
            "tau_low": tau[1],
            "tau_high": tau[2],
            "met": bool(tau[1] > 0 or tau[2] < 0),
            "why_not": "" if (tau[1] > 0 or tau[2] < 0) else "the 95% interval of the average tau includes 0",
        }
    )
    return pd.DataFrame(rows)


def goal_markdown(table: pd.DataFrame, method: str = "ccfv") -> str:
    """The goal table as Markdown with the verdict first."""
    targets = table[table["dataset"] != AVERAGE]
    avg = table[table["dataset"] == AVERAGE].iloc[0]
    n_met, n = int(targets["met"].sum()), len(targets)
    needed = int(np.ceil(GOAL_SHARE * n))
    verdict = "MET" if n_met >= needed and bool(avg["met"]) else "NOT MET"
    lines = [
        f"## The ranking goal for `{method}`: {verdict}\n",
        f"- targets where weighted tau >= {GOAL_FRACTION} x noise ceiling and top-1 regret <= one Dice sd: "
        f"**{n_met} of {n}** (needed: {needed})",
        f"- average weighted tau {interval_text(avg['weighted_tau'], avg['tau_low'], avg['tau_high'])}: "
        + ("the interval excludes 0" if avg["met"] else "the interval includes 0"),
        "",
        "| target | noise ceiling | 0.8 x ceiling | weighted tau [95%] | tau met | top-1 regret [95%] | Dice sd | "
        "regret met | why not |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in targets.itertuples():
        lines.append(
            f"| {r.dataset} | {interval_text(r.noise_ceiling)} | {interval_text(r.target_tau)} | "
            f"{interval_text(r.weighted_tau, r.tau_low, r.tau_high)} | {'yes' if r.tau_met else 'no'} | "
            f"{interval_text(r.top1_regret, r.regret_low, r.regret_high)} | {interval_text(r.dice_sd)} | "
            f"{'yes' if r.regret_met else 'no'} | {r.why_not or '–'} |"
        )
    return "\n".join(lines) + "\n"


def read_evidence(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``evidence.csv``, ``variants.csv`` and ``noise_ceiling.csv`` of a report folder (clear error if absent)."""
    folder = Path(folder)
    out = []
    for name in ("evidence.csv", "variants.csv", "noise_ceiling.csv"):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: give the --out-dir of a finished `mlflow-ccfv study` or `report` run."
            )
        out.append(pd.read_csv(path, keep_default_na=False, na_values=[""]))
    out[0]["method"] = out[0]["method"].fillna("")
    return out[0], out[1], out[2]


@dataclass
class StudyComparison:
    """``table``: per method, development and confirmation figures side by side; ``variants``: the
    paired differences in both runs; ``decision``: one sentence per variant, by the pre-registered rule."""

    table: pd.DataFrame
    variants: pd.DataFrame
    decision: dict[str, str]

    def markdown(self) -> str:
        text = "## Development and confirmation side by side (average over targets, 95% intervals)\n\n"
        text += to_markdown(self.table.set_index("method"))
        text += "\n\n## Pre-registered variants minus CC-FV (paired bootstrap)\n\n"
        text += to_markdown(self.variants.set_index(["method", "statistic"]))
        text += "\n\n## Decision (rule fixed in docs/preregistration.md)\n\n"
        text += "\n".join(f"- `{m}`: {d}" for m, d in self.decision.items()) + "\n"
        return text


def compare_studies(
    development: str | Path,
    confirmation: str | Path,
    methods: Sequence[str] | None = None,
    scope: str = AVERAGE,
) -> StudyComparison:
    """Compare two report folders (see the module docstring); ``methods`` default: every method in both."""
    dev_fig, dev_var, _ = read_evidence(development)
    con_fig, con_var, _ = read_evidence(confirmation)
    both = sorted((set(dev_fig["method"]) & set(con_fig["method"])) - {""})
    chosen = [m for m in (methods or both) if m in both]
    rows = []
    for m in chosen:
        row = {"method": m}
        for label, fig in (("development", dev_fig), ("confirmation", con_fig)):
            row[f"{label} tau"] = interval_text(*figure_of(fig, scope, m, "weighted_tau"))
            row[f"{label} top-1 regret"] = interval_text(*figure_of(fig, scope, m, "top1_regret"))
        rows.append(row)
    var_rows, decision = [], {}
    for variant in sorted(set(dev_var["method"]) | set(con_var["method"])):
        for statistic in ("weighted_tau", "top1_regret"):
            row = {"method": variant, "statistic": statistic}
            for label, table in (("development", dev_var), ("confirmation", con_var)):
                row[label] = interval_text(*figure_of(table, scope, variant, statistic))
            var_rows.append(row)
        diff = figure_of(con_var, scope, variant, "weighted_tau")
        if diff[0] != diff[0]:
            decision[variant] = "no confirmation figure: the default stays `ccfv`."
        elif diff[0] > 0 and diff[1] > 0:
            decision[variant] = (
                f"confirmation tau difference {interval_text(*diff)} excludes 0: the evidence supports it over `ccfv`."
            )
        else:
            decision[variant] = (
                f"confirmation tau difference {interval_text(*diff)} "
                + ("is not above 0" if diff[0] <= 0 else "has an interval that includes 0")
                + ": the default stays `ccfv`."
            )
    return StudyComparison(
        pd.DataFrame(rows),
        pd.DataFrame(var_rows, columns=["method", "statistic", "development", "confirmation"]),
        decision,
    )
