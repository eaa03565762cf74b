"""Uncertainty of the study's figures: bootstrap intervals, a permutation test, the noise ceiling and
the selection value. Pure numpy/scipy, no MLflow.

The unit of resampling is the **per-case, per-seed Dice table** of each (model, target):
``dice [n_models, n_seeds, n_cases, n_classes]`` float, NaN where a foreground class is absent from a
case's ground truth (MONAI ``DiceMetric(ignore_empty=True)``). A model's Dice on a set of cases is
computed as in :mod:`mlflow_ccfv.training.dice`: per class the mean over the cases containing it,
then the mean over the classes; the study's Dice of a model is the mean of that over its fine-tuning
seeds (:func:`model_dice`). The transferability scores are not resampled: they are computed once on
the target's training split and do not depend on the held-out cases or the fine-tuning seed.

- :func:`ranking_statistics`: weighted Kendall's tau, Pearson, top-1 regret and the selection value
  (the mean Dice of the method's top-1 and top-3 picks) of one ranking;
- :func:`bootstrap`: percentile 95% intervals of all of these per target and for the average over
  targets, resampling held-out cases and fine-tuning seeds independently per target
  (``scipy.stats.bootstrap`` over case and seed indices); the same resamples serve every method, so
  paired differences between methods have intervals too (:meth:`BootstrapResult.difference`);
- :func:`permutation_pvalue`: how often a random ranking reaches the method's weighted tau
  (``scipy.stats.permutation_test``, pairings, one-sided);
- :func:`noise_ceiling`: how well one fine-tuning replicate's ranking predicts another's: the weighted
  tau between the Dice of two seeds, averaged over seed pairs (with one seed: between the Dice on two
  random halves of the held-out cases); no estimator can be expected to beat it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = [
    "BANK_STATISTICS",
    "AVERAGE",
    "RANKING_STATISTICS",
    "BootstrapResult",
    "Interval",
    "NoiseCeiling",
    "TargetData",
    "bank_statistics",
    "bootstrap",
    "model_dice",
    "noise_ceiling",
    "permutation_pvalue",
    "ranking_statistics",
    "seed_dice",
]

#: Per (target, method): the statistics of one ranking (:func:`ranking_statistics`).
RANKING_STATISTICS = ("weighted_tau", "pearson", "top1_regret", "top1_dice", "top3_dice")
#: Per target, independent of the method: a random pick's expected Dice and the best model's Dice.
BANK_STATISTICS = ("random_dice", "best_dice")
#: The scope name of the average over targets.
AVERAGE = "avg"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its ``low``/``high`` interval bounds (NaN where undefined)."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _check_table(dice: np.ndarray) -> np.ndarray:
    dice = np.asarray(dice, dtype=float)
    if dice.ndim != 4:
        raise ValueError(f"The Dice table must be [n_models, n_seeds, n_cases, n_classes]; got shape {dice.shape}.")
    if min(dice.shape) < 1:
        raise ValueError(f"The Dice table is empty (shape {dice.shape}): every model needs a seed, a case, a class.")
    return dice


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring NaN, NaN where nothing is finite (without numpy's warning)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def seed_dice(dice: np.ndarray, cases: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Each model's Dice per seed, ``[n_models, n_seeds]``: per class the mean over the (chosen, possibly
    repeated) ``cases`` that contain it, then the mean over classes."""
    dice = _check_table(dice)
    if cases is not None:
        dice = dice[:, :, np.asarray(cases, dtype=int)]
    return _nanmean(_nanmean(dice, axis=2), axis=2)


def model_dice(
    dice: np.ndarray,
    cases: Sequence[int] | np.ndarray | None = None,
    seeds: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Each model's Dice ``[n_models]``: :func:`seed_dice` averaged over the (chosen) ``seeds``."""
    per_seed = seed_dice(dice, cases)
    if seeds is not None:
        per_seed = per_seed[:, np.asarray(seeds, dtype=int)]
    return _nanmean(per_seed, axis=1)


def _tau(scores: np.ndarray, dice: np.ndarray) -> float:
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(dice) == 0:
        return float("nan")
    return float(stats.weightedtau(scores, dice).statistic)


def _pearson(scores: np.ndarray, dice: np.ndarray) -> float:
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(dice) == 0:
        return float("nan")
    return float(np.corrcoef(scores, dice)[0, 1])


def ranking_statistics(scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray) -> dict[str, float]:
    """The statistics of one method's ranking of a bank (``scores [M]``, higher = ranked higher) against
    the models' Dice ``[M]``. Models with a non-finite score or Dice are left out.

    - ``weighted_tau``: ``scipy.stats.weightedtau`` (hyperbolic weights, the top of the ranking weighs
      most); ``pearson``: Pearson's r; both NaN with fewer than 3 models or constant values;
    - ``top1_regret``: the best Dice minus the Dice of the top-ranked model (0 = picked the best);
    - ``top1_dice``, ``top3_dice``: the Dice of the top-ranked model, the mean Dice of the 3 top-ranked
      (the selection value; ties in score are broken by the models' order).
    """
    s = np.asarray(scores, dtype=float)
    d = np.asarray(dice, dtype=float)
    if s.shape != d.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and dice {d.shape} must be 1-D arrays of the same length (one per model).")
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    if s.size == 0:
        return dict.fromkeys(RANKING_STATISTICS, float("nan"))
    order = np.argsort(-s, kind="stable")
    return {
        "weighted_tau": _tau(s, d),
        "pearson": _pearson(s, d),
        "top1_regret": float(d.max() - d[order[0]]),
        "top1_dice": float(d[order[0]]),
        "top3_dice": float(d[order[:3]].mean()),
    }


def bank_statistics(dice: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``random_dice``: the expected Dice of a uniformly random pick (the bank's mean); ``best_dice``."""
    d = np.asarray(dice, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return dict.fromkeys(BANK_STATISTICS, float("nan"))
    return {"random_dice": float(d.mean()), "best_dice": float(d.max())}


@dataclass
class TargetData:
    """One target's bank: ``models`` (ids, in the Dice table's order), ``dice`` the per-case, per-seed
    Dice table ``[n_models, n_seeds, n_cases, n_classes]`` and ``scores`` method -> ``[n_models]``."""

    models: Sequence[str]
    dice: np.ndarray
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dice = _check_table(self.dice)
        if self.dice.shape[0] != len(self.models):
            raise ValueError(f"The Dice table has {self.dice.shape[0]} models but {len(self.models)} model ids.")
        for method, s in self.scores.items():
            if np.asarray(s).shape != (len(self.models),):
                raise ValueError(f"{method}: {np.asarray(s).shape} scores for {len(self.models)} models.")


@dataclass
class BootstrapResult:
    """Point estimates and bootstrap distributions, one row per ``(scope, method, statistic)`` label;
    scope is a target or :data:`AVERAGE`; method is ``""`` for :data:`BANK_STATISTICS`."""

    labels: list[tuple[str, str, str]]
    estimate: np.ndarray
    distribution: np.ndarray  # [n_labels, n_resamples]
    confidence: float

    def _row(self, scope: str, method: str, statistic: str) -> int:
        try:
            return self.labels.index((scope, method, statistic))
        except ValueError:
            raise KeyError(f"No bootstrap statistic {statistic!r} for method {method!r} on {scope!r}.") from None

    def _bounds(self, values: np.ndarray) -> tuple[float, float]:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return float("nan"), float("nan")
        alpha = (1 - self.confidence) / 2
        low, high = np.quantile(finite, [alpha, 1 - alpha])
        return float(low), float(high)

    def interval(self, scope: str, method: str, statistic: str) -> Interval:
        """The estimate and percentile interval of ``statistic`` of ``method`` on ``scope``."""
        i = self._row(scope, method, statistic)
        return Interval(float(self.estimate[i]), *self._bounds(self.distribution[i]))

    def difference(self, scope: str, statistic: str, method: str, baseline: str) -> Interval:
        """``method`` minus ``baseline`` on the same resamples (a paired interval)."""
        i, j = self._row(scope, method, statistic), self._row(scope, baseline, statistic)
        return Interval(
            float(self.estimate[i] - self.estimate[j]), *self._bounds(self.distribution[i] - self.distribution[j])
        )


def _labels(targets: Mapping[str, TargetData], methods: Sequence[str]) -> list[tuple[str, str, str]]:
    labels = []
    for scope in [*targets, AVERAGE]:
        labels += [(scope, m, s) for m in methods for s in RANKING_STATISTICS]
        labels += [(scope, "", s) for s in BANK_STATISTICS]
    return labels


def _all_statistics(
    targets: Mapping[str, TargetData], methods: Sequence[str], resampled: Sequence[np.ndarray]
) -> np.ndarray:
    """Every label's value for one choice of case and seed indices per target (``resampled``)."""
    per_target = []
    for t, (cases, seeds) in zip(targets.values(), zip(resampled[0::2], resampled[1::2])):
        dice = model_dice(t.dice, cases, seeds)
        values = []
        for m in methods:
            scores = t.scores.get(m)
            row = (
                ranking_statistics(scores, dice) if scores is not None else dict.fromkeys(RANKING_STATISTICS, math.nan)
            )
            values += [row[s] for s in RANKING_STATISTICS]
        bank = bank_statistics(dice)
        values += [bank[s] for s in BANK_STATISTICS]
        per_target.append(values)
    table = np.asarray(per_target, dtype=float)
    average = _nanmean(table, axis=0)
    return np.concatenate([table.ravel(), average])


def bootstrap(
    targets: Mapping[str, TargetData],
    methods: Sequence[str] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile intervals of every :data:`RANKING_STATISTICS` per (target, method) and of
    :data:`BANK_STATISTICS` per target, and of their means over targets (scope :data:`AVERAGE`).

    Each resample draws, independently per target, the held-out cases and the fine-tuning seeds with
    replacement (``scipy.stats.bootstrap`` over the index samples; a target with a single seed or case
    keeps it). ``methods``: default every method with scores in any target.
    """
    if not targets:
        raise ValueError("bootstrap needs at least one target.")
    if methods is None:
        methods = sorted({m for t in targets.values() for m in t.scores})
    methods = list(methods)
    samples: list[np.ndarray] = []
    fixed: list[np.ndarray | None] = []
    for t in targets.values():
        _, n_seeds, n_cases, _ = t.dice.shape
        for n in (n_cases, n_seeds):
            index = np.arange(n, dtype=float)
            fixed.append(index if n < 2 else None)  # scipy resamples samples of 2 or more only
            if n >= 2:
                samples.append(index)

    def indices(resampled: Sequence[np.ndarray]) -> list[np.ndarray]:
        it = iter(resampled)
        return [np.asarray(f if f is not None else next(it), dtype=int) for f in fixed]

    def statistic(*resampled: np.ndarray) -> np.ndarray:
        return _all_statistics(targets, methods, indices(resampled))

    estimate = _all_statistics(targets, methods, indices(samples))
    labels = _labels(targets, methods)
    if samples:
        result = stats.bootstrap(
            tuple(samples),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=False,
            paired=False,
            rng=np.random.default_rng(seed),
        )
        distribution = np.asarray(result.bootstrap_distribution, dtype=float).reshape(len(labels), -1)
    else:  # one case, one seed everywhere: nothing to resample
        distribution = np.repeat(estimate[:, None], 1, axis=1)
    return BootstrapResult(labels, estimate, distribution, confidence)


def permutation_pvalue(
    scores: Sequence[float] | np.ndarray,
    dice: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 9999,
    seed: int = 0,
) -> float:
    """One-sided p-value of the weighted tau of ``scores`` against ``dice`` under random rankings:
    the share of random pairings of scores with models (``scipy.stats.permutation_test``, exact when
    the bank is small enough) whose weighted tau is at least the observed one. NaN when the tau is
    undefined (fewer than 3 models, constant values)."""
    s = np.asarray(scores, dtype=float)
    d = np.asarray(dice, dtype=float)
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    if math.isnan(_tau(s, d)):
        return float("nan")

    def tau(x: np.ndarray) -> float:
        return float(stats.weightedtau(x, d).statistic)

    result = stats.permutation_test(
        (s,),
        tau,
        permutation_type="pairings",
        alternative="greater",
        n_resamples=n_resamples,
        vectorized=False,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


@dataclass(frozen=True)
class NoiseCeiling:
    """``interval``: the ceiling's estimate and bootstrap interval (over held-out cases); ``kind``:
    ``"seeds"`` (weighted tau between seed replicates) or ``"split-half"`` (between case halves, one seed)."""

    interval: Interval
    kind: str
    n_pairs: int


def _finite_tau(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    return _tau(a[keep], b[keep])


def _seed_pair_tau(per_seed: np.ndarray) -> float:
    pairs = itertools.combinations(range(per_seed.shape[1]), 2)
    values = [_finite_tau(per_seed[:, i], per_seed[:, j]) for i, j in pairs]
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _split_half_tau(dice: np.ndarray, case_index: np.ndarray, rng: np.random.Generator, n_splits: int) -> float:
    values = []
    for _ in range(n_splits):
        perm = rng.permutation(case_index)
        half = len(perm) // 2
        values.append(_finite_tau(model_dice(dice, perm[:half]), model_dice(dice, perm[half : 2 * half])))
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def noise_ceiling(
    dice: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_splits: int = 20,
) -> NoiseCeiling:
    """How well one fine-tuning replicate's ranking of the bank predicts another's.

    With 2 or more seeds: the weighted tau between two seeds' Dice over the bank (all held-out cases),
    averaged over every pair of seeds. With one seed: the weighted tau between the Dice on two random
    halves of the held-out cases, averaged over ``n_splits`` splits (needs 2 or more cases). The
    interval resamples the held-out cases (``scipy.stats.bootstrap``, percentile). A single replicate
    is noisier than the seed mean the estimators are compared with, so this ceiling is conservative.
    (In the split-half case a bootstrap resample may put copies of one case in both halves, which
    widens the interval upwards; prefer 2 or more seeds.)
    """
    dice = _check_table(dice)
    _, n_seeds, n_cases, _ = dice.shape
    rng = np.random.default_rng(seed)
    if n_seeds >= 2:
        kind, n_pairs = "seeds", n_seeds * (n_seeds - 1) // 2

        def statistic(cases: np.ndarray) -> float:
            return _seed_pair_tau(seed_dice(dice, cases.astype(int)))
    elif n_cases >= 2:
        kind, n_pairs = "split-half", n_splits

        def statistic(cases: np.ndarray) -> float:
            return _split_half_tau(dice, cases.astype(int), rng, n_splits)
    else:
        raise ValueError("A noise ceiling needs 2 or more fine-tuning seeds, or 2 or more held-out cases.")
    index = np.arange(n_cases, dtype=float)
    estimate = statistic(index)
    if n_cases < 2:
        return NoiseCeiling(Interval(estimate, float("nan"), float("nan")), kind, n_pairs)
    result = stats.bootstrap(
        (index,),
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=False,
        rng=np.random.default_rng(seed + 1),
    )
    values = np.asarray(result.bootstrap_distribution, dtype=float)
    values = values[np.isfinite(values)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha]) if values.size else (math.nan, math.nan)
    return NoiseCeiling(Interval(estimate, float(low), float(high)), kind, n_pairs)
