"""Successive halving over fine-tuning budgets: the schedule, who stays in the race, and the validation
part of a target's training cases the race is measured on (no MLflow).

A shortlist of ``n`` candidates runs ``len(rounds)`` rounds. Round ``r`` fine-tunes every candidate still
in the race for ``rounds[r]`` steps (from its pre-trained weights) and measures Dice on the validation
cases; every round but the last keeps the better half, rounded up (``ceil(n / 2)``); the last keeps one,
the winner. The steps spent are ``sum(n_r * rounds[r])`` (Jamieson & Talwalkar, "Non-stochastic best
arm identification and hyperparameter optimization", AISTATS 2016; Li et al., "Hyperband", JMLR 2018).

The validation cases are carved out of the target's training part (``MSDDataset.split(...).train``),
never out of its held-out part, on which a final Dice is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlflow_ccfv.errors import OptionError

__all__ = [
    "HalvingRound",
    "check_budget",
    "halving_schedule",
    "keep_best",
    "schedule_steps",
    "validation_split",
]


@dataclass(frozen=True)
class HalvingRound:
    """One round of successive halving: ``round`` (0 first), ``steps`` fine-tuning steps per candidate,
    ``n_candidates`` in the race, ``n_kept`` after it (1 in the last round: the winner)."""

    round: int
    steps: int
    n_candidates: int
    n_kept: int

    @property
    def steps_spent(self) -> int:
        """Fine-tuning steps of the round, over its candidates."""
        return self.steps * self.n_candidates


def halving_schedule(n_candidates: int, rounds: Sequence[int]) -> list[HalvingRound]:
    """The rounds of successive halving over ``n_candidates`` with ``rounds`` steps per round.

    >>> [(r.round, r.steps, r.n_candidates, r.n_kept) for r in halving_schedule(4, (50, 100, 200))]
    [(0, 50, 4, 2), (1, 100, 2, 1), (2, 200, 1, 1)]
    """
    if int(n_candidates) < 1:
        raise ValueError(f"successive halving needs at least one candidate, got {n_candidates}.")
    steps = [int(s) for s in rounds]
    if not steps or min(steps) < 1:
        raise ValueError(f"rounds must be at least one step count, each >= 1; got {list(rounds)}.")
    schedule, n = [], int(n_candidates)
    for i, s in enumerate(steps):
        kept = 1 if i == len(steps) - 1 else math.ceil(n / 2)
        schedule.append(HalvingRound(i, s, n, kept))
        n = kept
    return schedule


def schedule_steps(schedule: Sequence[HalvingRound]) -> int:
    """Fine-tuning steps of a whole schedule, summed over rounds and candidates."""
    return sum(r.steps_spent for r in schedule)


def check_budget(schedule: Sequence[HalvingRound], budget: int | None) -> int:
    """The schedule's steps; an :class:`~mlflow_ccfv.errors.OptionError` naming both numbers when they
    exceed ``budget`` (None: no limit)."""
    needed = schedule_steps(schedule)
    if budget is not None and needed > int(budget):
        plan = " + ".join(f"{r.n_candidates}x{r.steps}" for r in schedule)
        raise OptionError(
            f"the schedule needs {needed} fine-tuning steps ({plan}), more than the budget of {int(budget)}; "
            f"raise --budget to at least {needed}, or shorten --rounds or lower --top-k."
        )
    return needed


def keep_best(dice: Mapping[str, float], n_kept: int, order: Sequence[str]) -> list[str]:
    """The ``n_kept`` candidates of ``order`` (the shortlist, best-ranked first) with the highest
    ``dice``; a missing or NaN Dice counts as the lowest, ties go to the better-ranked candidate."""

    def key(label: str) -> tuple[float, int]:
        value = dice.get(label, math.nan)
        return (-value if value == value else math.inf, order.index(label))

    return sorted((label for label in order if label in dice), key=key)[: int(n_kept)]


def validation_split(train_ids: Sequence[str], fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(fit, validation)``: a ``fraction`` of the training case ids (at least one, at most all but one)
    drawn with ``numpy.random.default_rng(seed)`` from the sorted ids; depends only on the ids, the
    fraction and the seed. Needs at least two training cases."""
    ids = sorted(str(c) for c in train_ids)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be within (0, 1), got {fraction}.")
    if len(ids) < 2:
        raise ValueError(
            f"carving a validation part needs at least 2 training cases, the target has {len(ids)}; add cases."
        )
    n_val = min(max(int(round(fraction * len(ids))), 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    validation = sorted(ids[i] for i in order[:n_val])
    fit = sorted(ids[i] for i in order[n_val:])
    return fit, validation
