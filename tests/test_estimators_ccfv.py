"""CC-FV estimators (Eq. 1-5): invariants, oracles and bad input, on real computation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_ccfv.estimators import (
    LayerScore,
    ccfv,
    ccfv_layers,
    class_consistency,
    feature_variety,
    gaussian_w2,
    hyperspherical_energy,
    pairwise_bhattacharyya,
    pairwise_kl,
    pairwise_w2,
    per_class_consistency,
)


def scipy_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Independent per-pair oracle: np.cov + scipy.linalg.sqrtm of the d x d product (Eq. 1)."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    w2_sq = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    return float(np.sqrt(max(w2_sq, 0.0)))


def correlated(rng: np.random.Generator, n: int, d: int, shift: float = 0.0, scale: float = 1.0):
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return scale * rng.standard_normal((n, d)) @ mixing + shift


# ---------------------------------------------------------------- Eq. 1: W2
def test_w2_zero_for_identical_samples():
    x = correlated(np.random.default_rng(0), 40, 12)
    assert gaussian_w2(x, x.copy()) == pytest.approx(0.0, abs=1e-6)


def test_w2_symmetric():
    rng = np.random.default_rng(1)
    x, y = correlated(rng, 30, 10), correlated(rng, 45, 10, shift=0.5, scale=2.0)
    assert gaussian_w2(x, y) == pytest.approx(gaussian_w2(y, x), rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 60), d=st.integers(1, 40))
def test_w2_pure_translation_is_norm_of_shift(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    t = rng.standard_normal(d) * 3
    assert gaussian_w2(x, x + t) == pytest.approx(np.linalg.norm(t), rel=1e-6, abs=1e-9)


def test_w2_diagonal_covariances_match_closed_form():
    # Commuting (diagonal) covariances: W2^2 = |dmu|^2 + sum (sqrt(a_k) - sqrt(b_k))^2. Build samples
    # with exactly diagonal sample covariance: orthogonal centred columns scaled per dimension.
    rng = np.random.default_rng(2)
    n, d = 50, 6
    q, _ = np.linalg.qr(rng.standard_normal((n, d + 1)))
    basis = q[:, 1:] - q[:, 1:].mean(axis=0)  # centred
    basis, _ = np.linalg.qr(basis)
    a, b = rng.uniform(0.5, 4.0, d), rng.uniform(0.5, 4.0, d)
    mu_x, mu_y = rng.standard_normal(d), rng.standard_normal(d)
    x = basis * np.sqrt(a * (n - 1)) + mu_x
    y = basis * np.sqrt(b * (n - 1)) + mu_y
    assert np.allclose(np.cov(x, rowvar=False), np.diag(a))
    expected = np.sqrt(np.sum((mu_x - mu_y) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert gaussian_w2(x, y) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n1,n2,d", [(80, 70, 16), (20, 25, 48), (10, 12, 64)])
def test_w2_matches_scipy_oracle_for_n_above_and_below_d(n1, n2, d):
    rng = np.random.default_rng(n1 * d)
    x, y = correlated(rng, n1, d), correlated(rng, n2, d, shift=0.2, scale=1.5)
    assert gaussian_w2(x, y) == pytest.approx(scipy_w2(x, y), rel=1e-6)


def test_w2_matches_monai_frechet_distance():
    from monai.metrics.fid import get_fid_score

    rng = np.random.default_rng(5)
    x, y = correlated(rng, 90, 20), correlated(rng, 70, 20, shift=0.3, scale=0.7)
    fid = float(get_fid_score(torch.from_numpy(x), torch.from_numpy(y)))
    assert gaussian_w2(x, y) == pytest.approx(np.sqrt(fid), rel=1e-6)


def test_w2_of_zero_variance_samples():
    # constant samples are a point mass: W2 to another point mass is the distance of the points,
    # W2 to a Gaussian is sqrt(|dmu|^2 + Tr(S))
    rng = np.random.default_rng(26)
    a, b = np.ones((5, 3)), np.full((4, 3), 2.0)
    assert gaussian_w2(a, b) == pytest.approx(np.sqrt(3.0), rel=1e-12)
    y = rng.standard_normal((6, 3))
    expected = np.sqrt(np.sum((1 - y.mean(0)) ** 2) + np.trace(np.cov(y, rowvar=False)))
    assert gaussian_w2(a, y) == pytest.approx(expected, rel=1e-9)
    dist = pairwise_w2([a, b, 3 * a])
    assert dist[0, 2] == pytest.approx(np.sqrt(12.0), rel=1e-12)


def test_w2_accepts_torch_tensors():
    rng = np.random.default_rng(6)
    x, y = correlated(rng, 30, 8), correlated(rng, 30, 8, shift=1.0)
    assert gaussian_w2(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(
        gaussian_w2(x.astype(np.float32), y), rel=1e-9
    )


@pytest.mark.parametrize("n_threads", [1, 2])
def test_pairwise_w2_matches_oracle_on_every_pair(n_threads):
    rng = np.random.default_rng(7)
    # ragged sample counts, some below and some above d
    sets = [correlated(rng, n, 24, shift=0.1 * i, scale=1 + 0.1 * i) for i, n in enumerate([10, 30, 18, 50, 25, 12])]
    dist = pairwise_w2(sets, n_threads=n_threads)
    assert dist.shape == (6, 6)
    assert np.allclose(dist, dist.T) and np.all(np.diag(dist) == 0)
    for i in range(6):
        for j in range(i + 1, 6):
            assert dist[i, j] == pytest.approx(scipy_w2(sets[i], sets[j]), rel=1e-6)


# ------------------------------------------------ KL / Bhattacharyya (Table 2)
def dense_divergences(sets, reg=1e-3):
    """Direct d x d re-computation of the regularised KL and Bhattacharyya matrices."""
    covs = [np.cov(x, rowvar=False) for x in sets]
    d = sets[0].shape[1]
    lam = reg * np.mean([np.trace(c) for c in covs]) / d
    covs = [c + lam * np.eye(d) for c in covs]
    means = [x.mean(0) for x in sets]
    logdet = [np.linalg.slogdet(c)[1] for c in covs]
    kl = np.zeros((len(sets),) * 2)
    bh = np.zeros_like(kl)
    for i in range(len(sets)):
        for j in range(len(sets)):
            dm = means[j] - means[i]
            pj = np.linalg.inv(covs[j])
            kl[i, j] = 0.5 * (np.trace(pj @ covs[i]) + dm @ pj @ dm - d + logdet[j] - logdet[i])
            mid = (covs[i] + covs[j]) / 2
            bh[i, j] = dm @ np.linalg.solve(mid, dm) / 8 + 0.5 * (
                np.linalg.slogdet(mid)[1] - 0.5 * (logdet[i] + logdet[j])
            )
    return kl, bh


@pytest.mark.parametrize("n,d", [(8, 30), (40, 6)])
def test_kl_and_bhattacharyya_match_dense_formula(n, d):
    rng = np.random.default_rng(n + d)
    sets = [correlated(rng, n + i, d, shift=0.2 * i, scale=1 + 0.3 * i) for i in range(4)]
    kl, bh = dense_divergences(sets)
    assert np.allclose(pairwise_kl(sets), kl, rtol=1e-8, atol=1e-10)
    assert np.allclose(pairwise_bhattacharyya(sets), bh, rtol=1e-8, atol=1e-10)


def test_divergence_variants_finite_on_rank_deficient_covariances():
    rng = np.random.default_rng(11)
    # 5 samples in 64 dimensions: covariances of rank 4, singular without regularisation
    cases = [{1: correlated(rng, 5, 64, shift=0.1 * i), 2: correlated(rng, 6, 64)} for i in range(4)]
    for distance in ("kl", "bhattacharyya"):
        value = class_consistency(cases, distance=distance)
        assert np.isfinite(value) and value > 0


# ----------------------------------------------------- Eq. 2: class consistency
def make_class_cases(rng, n_cases=5, d=16, spread=0.0, classes=(1, 2)):
    """Per case {class: [n_k, d]}; ``spread`` moves each case's class mean apart."""
    centres = {k: rng.standard_normal(d) * 3 for k in classes}
    return [
        {k: rng.standard_normal((12 + 3 * i, d)) + centres[k] + spread * rng.standard_normal(d) for k in classes}
        for i in range(n_cases)
    ]


def test_class_consistency_is_eq2_sum_of_mean_pairwise_w2():
    rng = np.random.default_rng(12)
    cases = make_class_cases(rng, n_cases=4)
    n = len(cases)
    expected = sum(
        gaussian_w2(cases[i][k], cases[j][k]) for k in (1, 2) for i in range(n) for j in range(n) if i != j
    ) / (n * (n - 1))
    assert class_consistency(cases) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("distance", ["wasserstein", "kl", "bhattacharyya"])
def test_class_consistency_invariant_to_case_order(distance):
    rng = np.random.default_rng(13)
    cases = make_class_cases(rng, n_cases=5, spread=1.0)
    order = rng.permutation(len(cases))
    assert class_consistency([cases[i] for i in order], distance) == pytest.approx(
        class_consistency(cases, distance), rel=1e-9
    )


def test_class_missing_from_some_cases_averages_over_pairs_that_hold_it(caplog):
    rng = np.random.default_rng(14)
    cases = make_class_cases(rng, n_cases=4, classes=(1, 2))
    del cases[0][2], cases[3][2]  # class 2 only in cases 1 and 2; class 3 only in case 0
    cases[0][3] = rng.standard_normal((10, 16))
    with caplog.at_level(logging.WARNING):
        per_class = per_class_consistency(cases)
    assert set(per_class) == {1, 2}
    assert per_class[2] == pytest.approx(gaussian_w2(cases[1][2], cases[2][2]), rel=1e-9)
    assert "class 3" in caplog.text and "skipped" in caplog.text


def test_single_sample_class_is_treated_as_absent_in_that_case(caplog):
    rng = np.random.default_rng(25)
    cases = make_class_cases(rng, n_cases=3)
    with_single = [dict(c) for c in cases] + [{1: cases[0][1][:1], 2: cases[0][2]}]
    expected = class_consistency(cases + [{2: cases[0][2]}])
    with caplog.at_level(logging.WARNING):
        assert class_consistency(with_single) == pytest.approx(expected, rel=1e-12)
    assert "single sample" in caplog.text and "cases[3][1]" in caplog.text


def test_features_that_separate_cases_are_less_consistent():
    rng = np.random.default_rng(15)
    agree = class_consistency(make_class_cases(rng, spread=0.0))
    separate = class_consistency(make_class_cases(rng, spread=5.0))
    assert separate > 2 * agree


# ------------------------------------------------------ Eq. 3-4: feature variety
def test_feature_variety_invariant_to_rotation_and_scaling():
    rng = np.random.default_rng(16)
    cases = [rng.standard_normal((40, 10)) + 0.5 for _ in range(3)]
    rot, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    base = feature_variety(cases)
    assert feature_variety([c @ rot for c in cases]) == pytest.approx(base, rel=1e-10)
    assert feature_variety([7.5 * c for c in cases]) == pytest.approx(base, rel=1e-10)


def test_feature_variety_prefers_dispersed_points():
    rng = np.random.default_rng(17)
    dispersed = [rng.standard_normal((60, 8)) for _ in range(3)]
    clustered = [np.ones(8) + 0.05 * rng.standard_normal((60, 8)) for _ in range(3)]
    assert feature_variety(dispersed) > 5 * feature_variety(clustered)


def test_energy_is_mean_inverse_distance_on_the_sphere():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((7, 4)) * rng.uniform(0.1, 5, (7, 1))
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.mean([1 / np.linalg.norm(v[i] - v[j]) for i in range(7) for j in range(7) if i != j])
    assert hyperspherical_energy(x) == pytest.approx(expected, rel=1e-10)


def test_feature_variety_coincident_points_clamped_and_logged(caplog):
    rng = np.random.default_rng(19)
    x = rng.standard_normal((5, 6))
    x = np.vstack([x, x[:1] * 3.0])  # same direction as row 0: coincident on the sphere
    with caplog.at_level(logging.WARNING):
        value = feature_variety([x])
    assert np.isfinite(value) and value > 0
    assert "coincide" in caplog.text
    # a fully collapsed case is penalised to near zero variety, not an error
    assert feature_variety([np.tile(x[:1], (10, 1))]) < 1e-5


def test_feature_variety_drops_zero_rows_with_warning(caplog):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((6, 5))
    with caplog.at_level(logging.WARNING):
        with_zero = feature_variety([np.vstack([x, np.zeros((2, 5))])])
    assert with_zero == pytest.approx(feature_variety([x]), rel=1e-12)
    assert "all zero" in caplog.text


# ------------------------------------------------------------------ Eq. 5: CC-FV
def make_layers(rng, n_layers=3, spread=0.0, n_cases=4):
    layers = []
    for depth in range(n_layers):
        d = 8 * (depth + 1)
        class_cases = make_class_cases(rng, n_cases=n_cases, d=d, spread=spread)
        global_cases = [rng.standard_normal((30, d)) for _ in range(n_cases)]
        layers.append((class_cases, global_cases))
    return layers


def test_ccfv_is_mean_over_layers_of_log_ratio():
    rng = np.random.default_rng(21)
    layers = make_layers(rng)
    terms = [np.log(feature_variety(g) / class_consistency(c)) for c, g in layers]
    assert ccfv(layers) == pytest.approx(np.mean(terms), rel=1e-10)
    parts = ccfv_layers(layers)
    assert all(isinstance(p, LayerScore) for p in parts)
    assert [p.log_ratio for p in parts] == pytest.approx(terms, rel=1e-10)
    assert parts[0].class_consistency == pytest.approx(class_consistency(layers[0][0]), rel=1e-12)
    assert parts[0].feature_variety == pytest.approx(feature_variety(layers[0][1]), rel=1e-12)
    assert set(parts[0].per_class) == {1, 2}


def test_ccfv_ablation_flags_and_single_scale():
    rng = np.random.default_rng(22)
    layers = make_layers(rng)
    cons = [class_consistency(c) for c, _ in layers]
    var = [feature_variety(g) for _, g in layers]
    assert ccfv(layers, use_consistency=False) == pytest.approx(np.mean(np.log(var)), rel=1e-10)
    assert ccfv(layers, use_variety=False) == pytest.approx(-np.mean(np.log(cons)), rel=1e-10)
    assert ccfv(layers[-1:]) == pytest.approx(np.log(var[-1] / cons[-1]), rel=1e-10)
    # a switched-off component needs no input
    no_global = [(c, None) for c, _ in layers]
    assert ccfv(no_global, use_variety=False) == pytest.approx(-np.mean(np.log(cons)), rel=1e-10)
    kl = ccfv(layers, distance="kl")
    assert np.isfinite(kl) and kl != ccfv(layers)
    with pytest.raises(ValueError, match="both False"):
        ccfv(layers, use_consistency=False, use_variety=False)


def _scaled(layers, a):
    return [([{k: a * x for k, x in case.items()} for case in c], [a * x for x in g]) for c, g in layers]


def test_paper_ccfv_depends_on_feature_scale_unit_sphere_variant_does_not():
    """Eq. 2 is in raw feature units, Eq. 3 on the sphere: scaling features by a lowers T by log a.
    The unit-sphere extension measures C_cons on the sphere too, so it is scale-free."""
    layers = make_layers(np.random.default_rng(25))
    assert ccfv(_scaled(layers, 10.0)) == pytest.approx(ccfv(layers) - np.log(10.0), rel=1e-9)
    sphere = ccfv(layers, unit_sphere=True)
    assert ccfv(_scaled(layers, 10.0), unit_sphere=True) == pytest.approx(sphere, rel=1e-9)
    assert ccfv(_scaled(layers, 1e-3), unit_sphere=True) == pytest.approx(sphere, rel=1e-9)
    assert sphere != pytest.approx(ccfv(layers))
    # it is Eq. 5 on the projected class features, not some other formula
    projected = [
        ([{k: x / np.linalg.norm(x, axis=1, keepdims=True) for k, x in case.items()} for case in c], g)
        for c, g in layers
    ]
    assert sphere == pytest.approx(ccfv(projected), rel=1e-10)
    # torch input gives the same value
    as_torch = [([{k: torch.as_tensor(x) for k, x in case.items()} for case in c], g) for c, g in layers]
    assert ccfv(as_torch, unit_sphere=True) == pytest.approx(sphere, rel=1e-10)


def test_variants_read_from_one_layer_pass_equal_the_direct_computation():
    from mlflow_ccfv.estimators.methods import LAYER_SCORE_METHODS, score_methods

    layers = make_layers(np.random.default_rng(26))
    direct = score_methods(layers, methods=LAYER_SCORE_METHODS)
    shared = score_methods(layers, methods=LAYER_SCORE_METHODS, layer_scores=ccfv_layers(layers))
    assert shared == direct  # the same arithmetic, bit for bit
    assert direct["ccfv_single_scale"] == ccfv(layers[-1:])
    assert direct["ccfv_no_variety"] == ccfv(layers, use_variety=False)


def test_ccfv_scores_agreeing_features_above_separating_ones():
    agree = ccfv(make_layers(np.random.default_rng(23), spread=0.0))
    separate = ccfv(make_layers(np.random.default_rng(23), spread=4.0))
    assert agree > separate


# ------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(24)
    good = rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="at least 2 cases"):
        class_consistency([{1: good}])
    with pytest.raises(ValueError, match="no class is present in at least two cases"):
        class_consistency([{1: good}, {1: good[:1]}])  # a single sample: that case lacks class 1
    with pytest.raises(ValueError, match=r"cases\[1\]\[1\] is empty"):
        class_consistency([{1: good}, {1: good[:0]}])
    with pytest.raises(ValueError, match="feature dimensions differ"):
        class_consistency([{1: good}, {1: rng.standard_normal((10, 5))}])
    bad = good.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        class_consistency([{1: good}, {1: bad}])
    with pytest.raises(ValueError, match="NaN or infinite"):
        feature_variety([good, np.where(bad == bad, bad, np.inf)])
    with pytest.raises(ValueError, match="empty"):
        gaussian_w2(np.zeros((0, 4)), good)
    with pytest.raises(ValueError, match="empty"):
        feature_variety([np.zeros((0, 4))])
    with pytest.raises(ValueError, match="at least one case"):
        feature_variety([])
    with pytest.raises(ValueError, match="x has 4 features but y has 5"):
        gaussian_w2(good, rng.standard_normal((10, 5)))
    with pytest.raises(ValueError, match="no class is present in at least two cases"):
        class_consistency([{1: good}, {2: good}])
    with pytest.raises(ValueError, match="unknown distance"):
        class_consistency([{1: good}, {1: good}], distance="euclid")
    with pytest.raises(ValueError, match="class consistency is 0"):
        ccfv([([{1: good}, {1: good.copy()}], [good])])
    with pytest.raises(ValueError, match="2-D"):
        feature_variety([good[0]])
