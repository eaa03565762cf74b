"""mlflow_ccfv.study.statistics against small hand-computed cases, and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_ccfv.study.statistics import (
    AVERAGE,
    TargetData,
    bank_statistics,
    bootstrap,
    model_dice,
    noise_ceiling,
    permutation_pvalue,
    ranking_statistics,
    seed_dice,
)

nan = float("nan")


def table(per_model: list[list[list[list[float]]]]) -> np.ndarray:
    """[model][seed][case][class]."""
    return np.asarray(per_model, dtype=float)


def test_model_dice_is_the_class_mean_of_case_means_then_the_seed_mean():
    # model 0, seed 0: class A over cases (0.5, 0.7) -> 0.6; class B only in case 1 -> 0.2; mean 0.4
    # model 0, seed 1: A (0.3, 0.3) -> 0.3, B 0.6 -> 0.45; seeds' mean 0.425
    dice = table(
        [
            [[[0.5, nan], [0.7, 0.2]], [[0.3, nan], [0.3, 0.6]]],
            [[[1.0, nan], [0.0, 1.0]], [[0.0, nan], [0.0, 0.0]]],
        ]
    )
    np.testing.assert_allclose(seed_dice(dice), [[0.4, 0.45], [0.75, 0.0]])
    np.testing.assert_allclose(model_dice(dice), [0.425, 0.375])
    # case 0 only: class B is absent, so each seed's Dice is class A's
    np.testing.assert_allclose(model_dice(dice, cases=[0]), [0.4, 0.5])
    # case 1 twice, seed 1 only
    np.testing.assert_allclose(model_dice(dice, cases=[1, 1], seeds=[1]), [0.45, 0.0])


def test_model_dice_rejects_a_table_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"n_models, n_seeds, n_cases, n_classes"):
        model_dice(np.zeros((3, 2)))


def test_ranking_statistics_by_hand():
    # ranked first: model 0 (Dice 0.5); best 0.9 -> regret 0.4; top-3 = all three: 0.5
    out = ranking_statistics([3.0, 2.0, 1.0], [0.5, 0.9, 0.1])
    assert out["top1_regret"] == pytest.approx(0.4)
    assert out["top1_dice"] == pytest.approx(0.5)
    assert out["top3_dice"] == pytest.approx(0.5)
    # Pearson of (3, 2, 1) with (0.5, 0.9, 0.1): deviations (1, 0, -1), (0, 0.4, -0.4) -> 0.4 / sqrt(2 * 0.32)
    assert out["pearson"] == pytest.approx(0.4 / math.sqrt(2 * 0.32))
    four = ranking_statistics([4.0, 3.0, 2.0, 1.0], [0.2, 0.4, 0.6, 0.8])
    assert four["top3_dice"] == pytest.approx(0.4)  # models 0, 1, 2
    assert four["weighted_tau"] == pytest.approx(-1.0)
    assert four["top1_regret"] == pytest.approx(0.6)


def test_ranking_statistics_leave_out_non_finite_models_and_need_three_for_tau():
    out = ranking_statistics([nan, 2.0, 1.0], [0.9, 0.5, 0.1])
    assert out["top1_dice"] == pytest.approx(0.5)
    assert out["top1_regret"] == 0.0  # the NaN-scored model is not in the comparison
    assert math.isnan(out["weighted_tau"]) and math.isnan(out["pearson"])


def test_bank_statistics():
    assert bank_statistics([0.2, 0.4, 0.9]) == {"random_dice": pytest.approx(0.5), "best_dice": 0.9}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_a_perfect_ranking_has_tau_one_and_no_regret(dice, random):
    d = np.asarray(dice)
    out = ranking_statistics(np.argsort(np.argsort(d)).astype(float), d)  # scores: the Dice's ranks
    assert out["weighted_tau"] == pytest.approx(1.0)
    assert out["top1_regret"] == 0.0
    assert out["top3_dice"] == pytest.approx(np.sort(d)[-3:].mean())
    # and the statistics do not depend on the order the models are listed in
    perm = np.asarray(random.sample(range(len(d)), len(d)))
    scores = np.sin(np.arange(len(d)) * 1.7)  # another ranking, no ties
    a, b = ranking_statistics(scores, d), ranking_statistics(scores[perm], d[perm])
    for key in a:
        assert a[key] == pytest.approx(b[key])


def _target(dice: np.ndarray, **scores) -> TargetData:
    return TargetData(
        [f"m{i}" for i in range(dice.shape[0])], dice, {k: np.asarray(v, float) for k, v in scores.items()}
    )


def test_bootstrap_of_identical_cases_and_seeds_is_the_point_estimate():
    # every case and seed has the same Dice: resampling changes nothing
    per_model = [0.1, 0.5, 0.3, 0.9]
    dice = np.broadcast_to(np.asarray(per_model)[:, None, None, None], (4, 3, 5, 1)).copy()
    targets = {"A": _target(dice, good=[1, 2, 3, 4], bad=[4, 3, 2, 1])}
    result = bootstrap(targets, n_resamples=50)
    good = ranking_statistics([1, 2, 3, 4], per_model)
    for stat, value in good.items():
        interval = result.interval("A", "good", stat)
        assert interval.estimate == pytest.approx(value)
        assert interval.low == pytest.approx(value) and interval.high == pytest.approx(value)
    assert result.interval("A", "", "random_dice").estimate == pytest.approx(np.mean(per_model))
    assert result.interval("A", "", "best_dice").estimate == pytest.approx(0.9)
    # a paired difference of a method with itself is exactly 0
    same = result.difference("A", "weighted_tau", "good", "good")
    assert same.estimate == 0 and same.low == 0 and same.high == 0


def test_bootstrap_average_is_the_mean_over_targets_and_intervals_contain_the_estimate():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (5, 3, 10, 2))
    b = rng.uniform(0, 1, (5, 2, 6, 1))
    scores = {"x": rng.normal(size=5), "y": rng.normal(size=5)}
    result = bootstrap({"A": _target(a, **scores), "B": _target(b, **scores)}, n_resamples=200, seed=3)
    for stat in ("weighted_tau", "top1_regret", "top3_dice"):
        avg = result.interval(AVERAGE, "x", stat)
        per = [result.interval(t, "x", stat).estimate for t in ("A", "B")]
        assert avg.estimate == pytest.approx(np.mean(per))
        assert avg.low <= avg.estimate + 1e-12 and avg.estimate - 1e-12 <= avg.high
    # noisy Dice: the tau interval has width
    tau = result.interval("A", "x", "weighted_tau")
    assert tau.high - tau.low > 0.05
    # the same seed gives the same intervals
    again = bootstrap({"A": _target(a, **scores), "B": _target(b, **scores)}, n_resamples=200, seed=3)
    assert again.interval("A", "x", "weighted_tau") == tau
    with pytest.raises(KeyError, match="nope"):
        result.interval("A", "nope", "weighted_tau")


def test_permutation_pvalue_of_a_perfect_ranking_of_three_is_one_in_six():
    # 3! = 6 pairings, exact; only the identity reaches tau = 1
    assert permutation_pvalue([1.0, 2.0, 3.0], [0.1, 0.2, 0.3]) == pytest.approx(1 / 6)
    # the reversed ranking: every pairing reaches tau >= -1
    assert permutation_pvalue([3.0, 2.0, 1.0], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert math.isnan(permutation_pvalue([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))


def test_permutation_pvalue_is_small_for_a_good_ranking_of_a_large_bank():
    dice = np.linspace(0.1, 0.9, 12)
    assert permutation_pvalue(dice + 0.01 * np.sin(np.arange(12)), dice, n_resamples=999) < 0.01


def test_noise_ceiling_between_seeds_by_hand():
    # 4 models, 3 seeds, 2 cases, 1 class; seeds 0 and 1 rank the models the same way, seed 2 reversed:
    # pairs (0,1) tau 1, (0,2) -1, (1,2) -1 -> -1/3
    up = np.array([0.1, 0.2, 0.3, 0.4])
    seeds = np.stack([up, up + 0.05, up[::-1]], axis=1)  # [4, 3]
    dice = np.repeat(seeds[:, :, None, None], 2, axis=2)
    ceiling = noise_ceiling(dice, n_resamples=50)
    assert ceiling.kind == "seeds" and ceiling.n_pairs == 3
    assert ceiling.interval.estimate == pytest.approx(-1 / 3)
    # identical cases: resampling them changes nothing
    assert ceiling.interval.low == pytest.approx(-1 / 3) and ceiling.interval.high == pytest.approx(-1 / 3)
    agreeing = noise_ceiling(np.repeat(np.stack([up, up * 2], 1)[:, :, None, None], 3, axis=2), n_resamples=20)
    assert agreeing.interval.estimate == pytest.approx(1.0)


def test_noise_ceiling_split_half_with_one_seed():
    up = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    dice = np.repeat(up[:, None, None, None], 6, axis=2)  # 6 identical cases, one seed
    ceiling = noise_ceiling(dice, n_resamples=20)
    assert ceiling.kind == "split-half"
    assert ceiling.interval.estimate == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 or more"):
        noise_ceiling(dice[:, :, :1])
