"""Baselines (LogME, LEEP, GBC, TransRate, N-LEEP, NCE, H-score), correlations and score_methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from mlflow_ccfv.estimators import (
    METHODS,
    EstimatorError,
    gbc,
    hscore,
    leep,
    logme,
    nce,
    nleep,
    score_methods,
    transrate,
)
from mlflow_ccfv.study import pearson, weighted_tau


def toy(seed: int = 0, n_per_class: int = 60, d: int = 12, n_classes: int = 3):
    """Features of well separated classes, their labels, and a shuffled copy of the labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * 4
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + rng.standard_normal((labels.size, d))
    return features, labels, rng.permutation(labels)


def source_heads(labels: np.ndarray, seed: int = 0, n_source: int = 5):
    """A perfect source head (target class c -> source class 2c, confident) and an uninformative
    one (random probabilities unrelated to the labels)."""
    rng = np.random.default_rng(seed)
    perfect = np.full((labels.size, n_source), 0.02)
    perfect[np.arange(labels.size), (2 * labels) % n_source] = 1.0
    perfect /= perfect.sum(axis=1, keepdims=True)
    random = rng.dirichlet(np.ones(n_source), size=labels.size)
    return perfect, random


# ------------------------------------------------------------- known orderings
@pytest.mark.parametrize("method", [logme, gbc, transrate, hscore, nleep])
def test_feature_baselines_prefer_separable_over_shuffled_labels(method):
    features, labels, shuffled = toy()
    good, bad = method(features, labels), method(features, shuffled)
    assert np.isfinite(good) and np.isfinite(bad)
    assert good > bad


@pytest.mark.parametrize("method", [leep, nce])
def test_probability_baselines_prefer_a_perfect_source_head(method):
    _, labels, _ = toy()
    perfect, random = source_heads(labels)
    assert method(perfect, labels) > method(random, labels)
    assert method(perfect, labels) <= 0


# ------------------------------------------------- direct re-computation of formulas
def dense_logme(f: np.ndarray, labels: np.ndarray, max_iter=11, tol=1e-3) -> float:
    """LogME from its definition with d x d matrices (You et al. 2021)."""
    n, d = f.shape
    ftf = f.T @ f
    eig = np.linalg.eigvalsh(ftf)
    out = []
    for k in np.unique(labels):
        y = (labels == k).astype(float)

        def at(alpha, beta):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, f.T @ y)
            return a, m

        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            _, m = at(alpha, beta)
            gamma = np.sum(beta * eig / (alpha + beta * eig))
            new_alpha = gamma / (m @ m + 1e-5)
            new_beta = (n - gamma) / (np.sum((y - f @ m) ** 2) + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < tol
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a, m = at(alpha, beta)
        ev = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.linalg.slogdet(a)[1]
            - beta / 2 * np.sum((y - f @ m) ** 2)
            - alpha / 2 * m @ m
            - n / 2 * np.log(2 * np.pi)
        )
        out.append(ev / n)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d", [(40, 6), (15, 30)])
def test_logme_matches_dense_formula(n, d):
    rng = np.random.default_rng(n)
    f = rng.standard_normal((n, d))
    labels = rng.integers(0, 3, n)
    assert logme(f, labels) == pytest.approx(dense_logme(f, labels), rel=1e-8)


def test_leep_matches_formula():
    rng = np.random.default_rng(1)
    theta = rng.dirichlet(np.ones(4), size=25)
    y = rng.integers(0, 3, 25)
    n = y.size
    joint = np.zeros((3, 4))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(axis=0)
    expected = np.mean([math.log(sum(cond[y[i], z] * theta[i, z] for z in range(4))) for i in range(n)])
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)
    assert leep(torch.from_numpy(theta), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-12)


def test_nce_matches_formula():
    rng = np.random.default_rng(2)
    theta = rng.dirichlet(np.ones(4), size=30)
    y = rng.integers(0, 3, 30)
    z = theta.argmax(axis=1)
    expected = 0.0
    for a in np.unique(y):
        for b in np.unique(z):
            p_ab = np.mean((y == a) & (z == b))
            if p_ab > 0:
                expected += p_ab * math.log(p_ab / np.mean(z == b))
    assert nce(theta, y) == pytest.approx(expected, rel=1e-12)
    assert nce(z, y) == pytest.approx(expected, rel=1e-12)  # hard predictions too


def test_hscore_matches_formula():
    features, labels, _ = toy(3, n_per_class=20, d=5)
    g = np.zeros_like(features)
    for k in np.unique(labels):
        g[labels == k] = features[labels == k].mean(axis=0)
    expected = np.trace(np.linalg.pinv(np.cov(features, rowvar=False)) @ np.cov(g, rowvar=False))
    assert hscore(features, labels) == pytest.approx(expected, rel=1e-9)
    shrunk = hscore(features, labels, shrinkage=True)
    assert np.isfinite(shrunk) and shrunk > hscore(
        features, np.random.default_rng(0).permutation(labels), shrinkage=True
    )


def test_hscore_shrinkage_matches_sklearn_ledoit_wolf():
    from sklearn.covariance import ledoit_wolf

    features, labels, _ = toy(4, n_per_class=10, d=20)  # n = 30 close to d = 20
    g = np.zeros_like(features)
    centred = features - features.mean(axis=0)
    for k in np.unique(labels):
        g[labels == k] = centred[labels == k].mean(axis=0)
    cov_f, _ = ledoit_wolf(features)
    expected = np.trace(np.linalg.solve(cov_f, g.T @ g / features.shape[0]))
    assert hscore(features, labels, shrinkage=True) == pytest.approx(expected, rel=1e-8)


def test_gbc_matches_formula_without_pca():
    features, labels, _ = toy(5, n_per_class=15, d=4)
    stats = []
    for k in np.unique(labels):
        fk = features[labels == k]
        stats.append((fk.mean(axis=0), np.diag(fk.var(axis=0, ddof=1))))
    expected = 0.0
    for a, (mu_a, s_a) in enumerate(stats):
        for b, (mu_b, s_b) in enumerate(stats):
            if a != b:
                s = (s_a + s_b) / 2
                dm = mu_a - mu_b
                db = dm @ np.linalg.solve(s, dm) / 8 + 0.5 * np.log(
                    np.linalg.det(s) / np.sqrt(np.linalg.det(s_a) * np.linalg.det(s_b))
                )
                expected -= np.exp(-db)
    assert gbc(features, labels, pca_dim=None) == pytest.approx(expected, rel=1e-10)
    # PCA keeping every dimension only rotates the features; diagonal covariances are not
    # rotation invariant, so compare with PCA done independently by sklearn
    from sklearn.decomposition import PCA

    z = PCA(n_components=4, svd_solver="full").fit_transform(features)
    assert gbc(features, labels, pca_dim=4) == pytest.approx(gbc(z, labels, pca_dim=None), rel=1e-8)


def test_transrate_matches_formula():
    rng = np.random.default_rng(6)
    f = rng.standard_normal((40, 7))
    y = rng.integers(0, 3, 40)
    eps = 1e-4
    z = f / np.linalg.norm(f, axis=1, keepdims=True)
    z -= z.mean(axis=0)

    def rate(m):
        return 0.5 * np.linalg.slogdet(np.eye(7) + m.T @ m / (m.shape[0] * eps))[1]

    expected = rate(z) - sum(np.mean(y == c) * rate(z[y == c]) for c in np.unique(y))
    assert transrate(f, y) == pytest.approx(expected, rel=1e-10)


def test_nleep_is_leep_on_mixture_posteriors():
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    features, labels, _ = toy(7, n_per_class=30, d=10)
    z = PCA(n_components=0.8, svd_solver="full").fit_transform(features)
    post = GaussianMixture(3, covariance_type="full", random_state=3, reg_covar=1e-6).fit(z).predict_proba(z)
    assert nleep(features, labels, seed=3) == pytest.approx(leep(post, labels), rel=1e-6)


# --------------------------------------------------------------- correlations
def test_weighted_tau_and_pearson_match_scipy():
    rng = np.random.default_rng(8)
    scores, dice = rng.standard_normal(7), rng.uniform(0.5, 0.9, 7)
    assert weighted_tau(scores, dice) == pytest.approx(scipy.stats.weightedtau(scores, dice).statistic)
    assert pearson(scores, dice) == pytest.approx(scipy.stats.pearsonr(scores, dice).statistic)
    assert weighted_tau(dice * 3 + 1, dice) == pytest.approx(1.0)
    assert pearson(dice * 3 + 1, dice) == pytest.approx(1.0)
    assert weighted_tau(-dice, dice) == pytest.approx(-1.0)


def test_correlations_reject_bad_input():
    with pytest.raises(ValueError, match="scores has 3 entries but dice has 2"):
        weighted_tau([1, 2, 3], [0.1, 0.2])
    with pytest.raises(ValueError, match="constant"):
        pearson([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        weighted_tau([1, np.nan, 3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2"):
        pearson([1], [0.5])


# -------------------------------------------------------------- bad input
def test_baselines_reject_bad_input():
    features, labels, _ = toy(9, n_per_class=10, d=4)
    perfect, _ = source_heads(labels)
    with pytest.raises(ValueError, match="labels has 29 entries but the features have 30"):
        logme(features, labels[:-1])
    bad = features.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        transrate(bad, labels)
    with pytest.raises(ValueError, match="softmax"):
        leep(np.log(perfect), labels)
    with pytest.raises(ValueError, match="at least 2 classes"):
        gbc(features, np.zeros_like(labels))
    one_sample = labels.copy()
    one_sample[0] = 7  # class 7 has one sample: left out, the score is that of the other classes
    assert gbc(features, one_sample, pca_dim=None) == pytest.approx(
        gbc(features[1:], labels[1:], pca_dim=None), rel=1e-12
    )
    with pytest.raises(ValueError, match="empty"):
        hscore(np.zeros((0, 4)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="integer class ids"):
        nce(perfect, labels + 0.5)


# -------------------------------------------------------------- score_methods
def test_score_methods_returns_every_method_finite():
    rng = np.random.default_rng(10)
    layers = []
    for d in (8, 16):
        cases = [{1: rng.standard_normal((20, d)) + 2, 2: rng.standard_normal((25, d)) - 2} for _ in range(3)]
        layers.append((cases, [rng.standard_normal((30, d)) for _ in range(3)]))
    features, labels, _ = toy(11)
    perfect, _ = source_heads(labels)
    scores = score_methods(layers, features, labels, perfect)
    assert list(scores) == list(METHODS)
    assert all(np.isfinite(v) for v in scores.values())
    with pytest.raises(EstimatorError, match="^leep: "):
        score_methods(layers, features, labels, None, methods=["logme", "leep"])
    with pytest.raises(EstimatorError, match="^gbc: "):
        score_methods(None, features, np.zeros_like(labels), None, methods=["gbc"])
    with pytest.raises(ValueError, match="unknown method"):
        score_methods(layers, methods=["ccfv", "fid"])
