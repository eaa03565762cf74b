"""What ``select`` buys against its compute: regret of its winner, as a function of the fine-tuning steps
it spends, next to the ranking alone and a random shortlist of the same size (no MLflow).

The input is a **unit table**: one row per (candidate, round length ``steps``, fine-tuning ``seed``) with
the validation Dice of that short fine-tune (``select``'s race unit). A unit does not depend on the
shortlist it runs in, so every policy is replayed exactly from the table:

- **select, top k**: the ``k`` best-ranked candidates race by successive halving
  (:func:`~mlflow_ccfv.training.selection.halving_schedule`, :func:`~mlflow_ccfv.training.selection.keep_best`,
  the rules ``select`` runs); ``k = 1`` is the **ranking alone** (its top-1, no fine-tuning);
- **random, k**: the same race over a shortlist drawn uniformly among the candidates, in a random order
  (its tie order), averaged over every ordered shortlist (or ``max_draws`` seeded draws when there are
  more); ``k = 1`` is a random pick.

Per race seed ``t`` (the seed of every unit of the race): **regret** = the best candidate's held-out Dice
minus the winner's, both the mean over the study's fine-tuning seeds of a full fine-tune (the truth the
race tries to find); **fraction** = the race's fine-tuning steps / (number of candidates x the full
fine-tune's steps), the cost of fine-tuning every candidate once. The summary gives the mean over race
seeds with the min-max range and sd (a few seeds: the range, not a confidence interval).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_ccfv.options import MAX_DRAWS
from mlflow_ccfv.training.selection import halving_schedule, keep_best, schedule_steps

__all__ = [
    "UNIT_COLUMNS",
    "Policy",
    "budget_within_sd",
    "plot_regret",
    "race_steps",
    "race_winner",
    "random_shortlists",
    "regret_markdown",
    "regret_per_seed",
    "round_prefixes",
    "summarize_regret",
]

#: The unit table's columns: candidate label, round length, race seed, validation Dice, seconds spent.
UNIT_COLUMNS = ("model", "steps", "seed", "val_dice", "seconds")


class Policy(StrEnum):
    """How the shortlist is drawn: the ranking's top ``k`` (``select``) or ``k`` candidates at random."""

    SELECT = "select"
    RANDOM = "random"


def round_prefixes(rounds: Sequence[int]) -> list[tuple[int, ...]]:
    """The schedules replayed: every prefix of ``rounds`` (``(25,), (25, 50), (25, 50, 100)``)."""
    return [tuple(int(s) for s in rounds[: i + 1]) for i in range(len(rounds))]


def race_winner(val_dice: Mapping[tuple[str, int], float], shortlist: Sequence[str], rounds: Sequence[int]) -> str:
    """The winner of successive halving over ``shortlist`` (tie order: its order) with ``rounds`` steps per
    round; ``val_dice[(label, steps)]``: a candidate's validation Dice after a fine-tune of ``steps`` steps.
    One candidate wins without a race."""
    in_race = list(shortlist)
    if len(in_race) == 1:
        return in_race[0]
    for rnd in halving_schedule(len(in_race), rounds):
        in_race = keep_best({label: val_dice[(label, rnd.steps)] for label in in_race}, rnd.n_kept, shortlist)
    return in_race[0]


def race_steps(k: int, rounds: Sequence[int]) -> int:
    """Fine-tuning steps of a race over ``k`` candidates (0 for one candidate: no race)."""
    return 0 if k == 1 else schedule_steps(halving_schedule(k, rounds))


def random_shortlists(
    candidates: Sequence[str], k: int, max_draws: int = MAX_DRAWS, seed: int = 0
) -> Iterator[tuple[str, ...]]:
    """Every ordered ``k``-shortlist of ``candidates`` (the order is a race's tie order: a random shortlist
    knows no ranking), or ``max_draws`` of them drawn uniformly with ``numpy.random.default_rng(seed)``
    when there are more."""
    if math.perm(len(candidates), k) <= max_draws:
        yield from itertools.permutations(candidates, k)
        return
    rng = np.random.default_rng(seed)
    for _ in range(max_draws):
        yield tuple(candidates[i] for i in rng.choice(len(candidates), size=k, replace=False))


def _unit_dice(units: pd.DataFrame, seed: int) -> dict[tuple[str, int], float]:
    rows = units[units["seed"] == seed]
    return {(str(m), int(s)): float(d) for m, s, d in zip(rows["model"], rows["steps"], rows["val_dice"])}


def regret_per_seed(
    units: pd.DataFrame,
    heldout: Mapping[str, float],
    ranking: Sequence[str],
    rounds: Sequence[int],
    full_steps: int,
    max_draws: int = MAX_DRAWS,
) -> pd.DataFrame:
    """One row per (policy, schedule, k, race seed): ``steps``, ``fraction``, ``regret`` and, for
    ``select``, the ``winner``.

    ``units``: the unit table (:data:`UNIT_COLUMNS`) over every candidate, every prefix of ``rounds`` and
    each seed; ``heldout``: candidate -> mean held-out Dice of the full fine-tune; ``ranking``: the
    candidates, best-ranked first (also the tie order of every race); ``full_steps``: the full fine-tune's
    steps. ``k = 1`` rows (no race, fraction 0) have the schedule ``"none"``.
    """
    candidates = list(ranking)
    if set(candidates) != set(heldout):
        raise ValueError(f"the ranking {sorted(candidates)} and the held-out Dice {sorted(heldout)} differ.")
    best = max(heldout.values())
    cost = len(candidates) * int(full_steps)
    rows: list[dict[str, object]] = []
    seeds = sorted(int(s) for s in units["seed"].unique())
    for seed in seeds:
        dice = _unit_dice(units, seed)
        rows.append(_row(Policy.SELECT, "none", 1, 0, cost, seed, best - heldout[candidates[0]], candidates[0]))
        random_pick = float(np.mean([best - heldout[c] for c in candidates]))
        rows.append(_row(Policy.RANDOM, "none", 1, 0, cost, seed, random_pick, ""))
        for schedule in round_prefixes(rounds):
            label = ",".join(map(str, schedule))
            for k in range(2, len(candidates) + 1):
                steps = race_steps(k, schedule)
                winner = race_winner(dice, candidates[:k], schedule)
                rows.append(_row(Policy.SELECT, label, k, steps, cost, seed, best - heldout[winner], winner))
                regrets = [
                    best - heldout[race_winner(dice, subset, schedule)]
                    for subset in random_shortlists(candidates, k, max_draws)
                ]
                rows.append(_row(Policy.RANDOM, label, k, steps, cost, seed, float(np.mean(regrets)), ""))
    return pd.DataFrame(rows)


def _row(
    policy: Policy, schedule: str, k: int, steps: int, cost: int, seed: int, regret: float, winner: str
) -> dict[str, object]:
    return {
        "policy": str(policy),
        "schedule": schedule,
        "k": k,
        "steps": steps,
        "fraction": steps / cost,
        "seed": seed,
        "regret": float(regret),
        "winner": winner,
    }


def summarize_regret(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per (policy, schedule, k): ``steps``, ``fraction``, the regret's ``mean``, ``min``, ``max``, ``sd``
    (ddof 1; NaN with one seed) over race seeds, ``n_seeds`` and the ``winners`` by seed (``select``)."""
    out = []
    for (policy, schedule, k), g in per_seed.groupby(["policy", "schedule", "k"], sort=False):
        regret = g["regret"].to_numpy(float)
        out.append(
            {
                "policy": policy,
                "schedule": schedule,
                "k": int(k),
                "steps": int(g["steps"].iloc[0]),
                "fraction": float(g["fraction"].iloc[0]),
                "regret_mean": float(regret.mean()),
                "regret_min": float(regret.min()),
                "regret_max": float(regret.max()),
                "regret_sd": float(regret.std(ddof=1)) if len(regret) > 1 else math.nan,
                "n_seeds": len(regret),
                "winners": " ".join(str(w) for w in g["winner"]) if policy == Policy.SELECT else "",
            }
        )
    return pd.DataFrame(out)


def budget_within_sd(summary: pd.DataFrame, best_sd: float, *, every_seed: bool = False) -> pd.Series | None:
    """The cheapest ``select`` row (smallest fraction, then k) whose mean regret (``every_seed``: every
    seed's regret) is at most ``best_sd``, the best model's sd over fine-tuning seeds; None when no
    measured budget meets it."""
    rows = summary[summary["policy"] == str(Policy.SELECT)]
    column = "regret_max" if every_seed else "regret_mean"
    met = rows[rows[column] <= best_sd + 1e-12]
    if met.empty:
        return None
    return met.sort_values(["fraction", "k"]).iloc[0]


def _range(row: pd.Series) -> str:
    return f"{row['regret_mean']:.4f} [{row['regret_min']:.4f}, {row['regret_max']:.4f}]"


def _met(row: pd.Series | None, what: str) -> str:
    if row is None:
        return f"{what}: **not met** at any measured budget."
    where = "no fine-tuning (the ranking's top-1)" if row["k"] == 1 else f"top {row['k']}, rounds {row['schedule']}"
    return f"{what}: met at **{row['fraction']:.3f}** of the full cost ({where}, {row['steps']} steps)."


def regret_markdown(
    target: str,
    summary: pd.DataFrame,
    heldout: Mapping[str, float],
    best_sd: float,
    ranking: Sequence[str],
    ranked_by: str,
    full_steps: int,
) -> str:
    """The target's section of ``select_regret.md``: the setting, the criterion (regret within the best
    model's seed sd) met or not, and one row per (schedule, k) with select's and a random shortlist's regret."""
    best = max(heldout, key=lambda m: heldout[m])
    n_seeds = int(summary["n_seeds"].max())
    lines = [
        f"## {target}",
        "",
        f"{len(ranking)} candidates, ranked by `{ranked_by}`; full fine-tune {full_steps} steps; best by held-out "
        f"Dice {best} ({heldout[best]:.4f}, seed sd {best_sd:.4f}); the ranking's top-1 {ranking[0]} "
        f"({heldout[ranking[0]]:.4f}). Regret: mean over {n_seeds} race seeds [min, max]. Fraction: fine-tuning "
        f"steps / ({len(ranking)} x {full_steps}).",
        "",
        "- " + _met(budget_within_sd(summary, best_sd), "mean regret <= the best model's seed sd"),
        "- " + _met(budget_within_sd(summary, best_sd, every_seed=True), "every seed's regret <= that sd"),
        "",
        "| rounds | k | steps | fraction | select: regret | select: winner by seed | random shortlist: regret |",
        "|---|---|---|---|---|---|---|",
    ]
    sel = summary[summary["policy"] == str(Policy.SELECT)].set_index(["schedule", "k"])
    rnd = summary[summary["policy"] == str(Policy.RANDOM)].set_index(["schedule", "k"])
    for key, row in sel.iterrows():
        rounds = "none (k = 1: the ranking alone / a random pick)" if key[0] == "none" else key[0]
        lines.append(
            f"| {rounds} | {key[1]} | {row['steps']} | {row['fraction']:.3f} | {_range(row)} | "
            f"{row['winners']} | {_range(rnd.loc[key])} |"
        )
    return "\n".join(lines) + "\n"


def plot_regret(target: str, summary: pd.DataFrame, best_sd: float, path: str | Path) -> Path:
    """Regret against the fraction of the full cost, one line per (policy, schedule) over k, the min-max
    range over race seeds shaded, the best model's seed sd as a dashed line; written to ``path`` (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    start = summary[summary["schedule"] == "none"].set_index("policy")
    schedules = [s for s in summary["schedule"].unique() if s != "none"]
    colors = {s: f"C{i}" for i, s in enumerate(schedules)}
    for schedule in schedules:
        for policy, style in ((Policy.SELECT, "-o"), (Policy.RANDOM, "--s")):
            rows = pd.concat(
                [
                    start.loc[[str(policy)]].reset_index(),
                    summary[(summary["policy"] == str(policy)) & (summary["schedule"] == schedule)],
                ]
            ).sort_values("fraction")
            name = "select (ranking top k)" if policy == Policy.SELECT else "random shortlist"
            ax.plot(
                rows["fraction"],
                rows["regret_mean"],
                style,
                color=colors[schedule],
                ms=4,
                alpha=1.0 if policy == Policy.SELECT else 0.6,
                label=f"{name}, rounds {schedule}",
            )
            if policy == Policy.SELECT:
                ax.fill_between(
                    rows["fraction"], rows["regret_min"], rows["regret_max"], color=colors[schedule], alpha=0.15
                )
    top1 = start.loc[str(Policy.SELECT)]
    ax.plot([0], [top1["regret_mean"]], "k*", ms=12, label="ranking alone (top-1)")
    ax.axhline(best_sd, color="grey", ls=":", label=f"best model's seed sd ({best_sd:.3f})")
    ax.set_xlabel("fine-tuning steps / (candidates x full fine-tune)")
    ax.set_ylabel("regret (held-out Dice of the best - of the winner)")
    ax.set_title(f"{target}: regret against compute (mean, min-max over race seeds)")
    ax.set_ylim(bottom=-0.005)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
