"""The ranking rule (mlflow_ccfv.scoring.ranking) without MLflow: twin identity, auto, order, controls."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlflow_ccfv.networks import small_spec
from mlflow_ccfv.scoring.ranking import (
    CONTROL_SOURCE,
    FROM_SCRATCH_WARNING,
    TWIN_METHOD,
    Member,
    choose_ranking,
    network_identity,
    rank_members,
    twin_scores,
)

UNET = small_spec("UNet", 1, 3)


def identity(spec, patch=(32, 32, 32)):
    return network_identity(spec.architecture, spec.kwargs, patch)


def test_identity_ignores_the_output_channels_only():
    assert identity(UNET) == identity(small_spec("UNet", 1, 7))
    assert identity(UNET) != identity(small_spec("UNet", 2, 3))  # input channels
    assert identity(UNET) != identity(UNET, (64, 64, 32))  # patch size
    no_res = small_spec("UNet", 1, 3)
    no_res.kwargs["num_res_units"] = 0
    assert identity(UNET) != identity(no_res)  # residual units: another network, another twin
    wider = small_spec("UNet", 1, 3)
    wider.kwargs["channels"] = (16, 32, 64, 128)
    assert identity(UNET) != identity(wider)


def test_each_model_is_calibrated_against_the_twin_of_its_own_network():
    a, b = "net-a", "net-b"
    members = [
        Member("pre-a/1", a, "Task03", {"ccfv": 1.0}),
        Member("pre-b/1", b, "Task03", {"ccfv": 5.0}),
        Member("twin-a/1", a, CONTROL_SOURCE, {"ccfv": 0.25}),
        Member("twin-b/1", b, CONTROL_SOURCE, {"ccfv": 6.0}),
    ]
    assert twin_scores(members) == [0.75, -1.0, 0.0, 0.0]
    order = rank_members(members, TWIN_METHOD)
    assert order.method == TWIN_METHOD
    assert [(m.model, v) for m, v in order.ranked] == [("pre-a/1", 0.75), ("pre-b/1", -1.0)]
    # a twin of the same class but another configuration is no twin
    lonely = [*members[:2], members[2]]
    assert math.isnan(twin_scores(lonely)[1])
    assert choose_ranking(lonely, preferred=TWIN_METHOD) == ("ccfv", ["pre-b/1"])
    assert rank_members(lonely, TWIN_METHOD).method == TWIN_METHOD and rank_members(lonely, TWIN_METHOD).without_twin


def test_controls_are_never_ranked_and_a_control_above_every_model_is_said():
    members = [
        Member("pre/1", "n", "Task03", {"ccfv": -0.5}),
        Member("pre/2", "n", "Task09", {"ccfv": -0.2}),
        Member("twin/1", "n", CONTROL_SOURCE, {"ccfv": 0.0}),
    ]
    order = rank_members(members, TWIN_METHOD)
    assert [m.model for m, _ in order.ranked] == ["pre/2", "pre/1"]
    assert order.best.model == "pre/2"
    assert [m.model for m, _ in order.controls] == ["twin/1"]
    assert order.control_above == ["twin/1"]
    assert FROM_SCRATCH_WARNING in order.warning() and "pre/2" in order.warning()
    # by ccfv too: the control's own score is compared with the best candidate's
    assert rank_members(members, "ccfv").control_above == ["twin/1"]
    better = [Member("pre/3", "n", "Task07", {"ccfv": 0.4}), *members]
    assert rank_members(better, TWIN_METHOD).control_above == []
    assert rank_members(better, TWIN_METHOD).warning() is None


def test_a_missing_score_ranks_last_and_ties_follow_name_and_version():
    members = [
        Member("b/2", None, "x", {"ccfv": 1.0}),
        Member("b/10", None, "x", {"ccfv": 1.0}),
        Member("a/1", None, "x", {}),
        Member("c/1", None, "x", {"ccfv": 2.0}),
    ]
    assert [m.model for m, _ in rank_members(members, "ccfv").ranked] == ["c/1", "b/2", "b/10", "a/1"]


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_the_order_does_not_depend_on_the_order_of_the_members(scores, rng):
    members = [Member(f"m/{i}", "n", "src", {"ccfv": s}) for i, s in enumerate(scores)]
    members.append(Member("twin/1", "n", CONTROL_SOURCE, {"ccfv": 0.0}))
    shuffled = list(members)
    rng.shuffle(shuffled)
    first, second = rank_members(members, TWIN_METHOD), rank_members(shuffled, TWIN_METHOD)
    assert [(m.model, v) for m, v in first.ranked] == [(m.model, v) for m, v in second.ranked]
    assert first.control_above == second.control_above


def test_any_estimator_can_be_twin_calibrated_and_the_aggregate_is_a_ranking():
    from mlflow_ccfv.scoring.ranking import RANK_AGGREGATE, needed_estimators, ranking_score

    members = [
        Member("a/1", "n", "src", {"ccfv_no_variety": 2.0, "gbc": 1.0, "logme": 0.5}),
        Member("b/1", "n", "src", {"ccfv_no_variety": 1.0, "gbc": 3.0, "logme": 0.1}),
        Member("twin/1", "n", CONTROL_SOURCE, {"ccfv_no_variety": 1.5, "gbc": 0.0, "logme": 0.3}),
    ]
    assert ranking_score(members, "ccfv_no_variety_twin") == [0.5, -0.5, 0.0]
    # ranks: ccfv_no_variety a1 b3 t2; gbc a2 b1 t3; logme a1 b3 t2 -> -(4/3), -(7/3), -(7/3)
    assert ranking_score(members, RANK_AGGREGATE) == pytest.approx([-4 / 3, -7 / 3, -7 / 3])
    assert needed_estimators(RANK_AGGREGATE) == ("ccfv_no_variety", "gbc", "logme")
    assert needed_estimators("ccfv_single_scale_twin") == ("ccfv_single_scale",)
    order = rank_members(members, "ccfv_no_variety_twin")
    assert [m.model for m, _ in order.ranked] == ["a/1", "b/1"] and order.control_above == []
    assert choose_ranking(members, preferred="gbc") == ("gbc", [])  # an estimator needs no twin
    lonely = members[:2]
    assert choose_ranking(lonely, preferred="ccfv_single_scale_twin") == ("ccfv_single_scale", ["a/1", "b/1"])
