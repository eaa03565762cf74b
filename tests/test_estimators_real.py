"""Estimators on features of a real MONAI network run on real MRI (BRATS 2013 cases)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.estimators import (
    METHODS,
    ccfv,
    ccfv_layers,
    pairwise_w2,
    score_methods,
)
from mlflow_ccfv.features import SamplerConfig, sample_features
from mlflow_ccfv.networks import small_spec

CONFIG = dict(layer_budgets=(25, 50, 100), floor=5, cap=300, global_samples=64, sw_batch_size=4, overlap=0.0)


@pytest.fixture(scope="module")
def feature_set(real_data):
    ds = MSDDataset.load(real_data / "brats2013-6")
    # three of the six cases keep the forward passes (the cost) small
    cases = list(ds.iter_cases(ds.case_ids[:3], progress=False))
    torch.manual_seed(0)
    model = small_spec("UNet", ds.n_channels, len(ds.labels)).build().eval()
    return sample_features(model, cases, config=SamplerConfig(**CONFIG), progress=False)


def test_every_method_scores_real_features(feature_set):
    layers = feature_set.ccfv_inputs()
    feats, labels, probs = feature_set.baseline_inputs()
    scores = score_methods(layers, feats, labels, probs)
    assert list(scores) == list(METHODS)
    assert all(np.isfinite(v) for v in scores.values()), scores
    parts = ccfv_layers(layers)
    assert len(parts) == len(feature_set.layers)
    assert all(p.class_consistency > 0 and p.feature_variety > 0 for p in parts)
    assert scores["ccfv"] == pytest.approx(np.mean([p.log_ratio for p in parts]), rel=1e-12)


def test_real_ccfv_invariant_to_case_order(feature_set):
    layers = feature_set.ccfv_inputs()
    order = np.random.default_rng(0).permutation(len(feature_set.case_ids))
    shuffled = [([c[i] for i in order], [g[i] for i in order]) for c, g in layers]
    assert ccfv(shuffled) == pytest.approx(ccfv(layers), rel=1e-9)


def test_real_class_features_match_per_pair_oracle(feature_set):
    # Real decoder features are float32, low-rank and partly duplicated (upsampled layers): the
    # batched W2 must still agree with np.cov + scipy sqrtm on every pair.
    layers = feature_set.ccfv_inputs()
    for class_cases, _ in layers:
        classes = sorted({k for case in class_cases for k in case})
        k = classes[0]
        sets = [case[k].astype(np.float64) for case in class_cases if k in case and len(case[k]) > 1]
        dist = pairwise_w2(sets)
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                s1, s2 = np.cov(sets[i], rowvar=False), np.cov(sets[j], rowvar=False)
                covmean = scipy.linalg.sqrtm(s1 @ s2).real
                w2_sq = (
                    np.sum((sets[i].mean(0) - sets[j].mean(0)) ** 2)
                    + np.trace(s1)
                    + np.trace(s2)
                    - 2 * np.trace(covmean)
                )
                assert dist[i, j] == pytest.approx(np.sqrt(max(w2_sq, 0)), rel=1e-6)
