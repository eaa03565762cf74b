"""Correlation tables and plots (mlflow_ccfv.study: long_table, paper_tables, scatter, report) on hand-built score tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING
from mlflow_ccfv.study.long_table import (
    architecture_correlations,
    correlations,
    discrimination_table,
    ranked_table,
)
from mlflow_ccfv.study.paper_tables import architecture_table, regret_table, table1, table2
from mlflow_ccfv.study.report import write_report
from mlflow_ccfv.study.scatter import standardise
from mlflow_ccfv.study.tables import to_markdown


def frame_for(dice_by_dataset: dict[str, list[float]], scorers: dict[str, callable]) -> pd.DataFrame:
    rows = []
    for dataset, dice in dice_by_dataset.items():
        for i, d in enumerate(dice):
            for method, f in scorers.items():
                rows.append(
                    {
                        "dataset": dataset,
                        "model": f"m{i}",
                        "method": method,
                        "score": f(d, i),
                        "dice": d,
                        "architecture": "UNet",
                        "source_dataset": "random-init" if i == 0 else f"T{i}",
                    }
                )
    return pd.DataFrame(rows)


DICE = {"TaskA": [0.2, 0.5, 0.7, 0.4, 0.9], "TaskB": [0.1, 0.3, 0.35, 0.6, 0.55]}
SCORERS = {
    "ccfv": lambda d, i: 3 * d + 1,  # perfectly ordered, linear
    "logme": lambda d, i: -d,  # reversed
    "gbc": lambda d, i: float(np.exp(5 * d)),  # ordered, non-linear
    "ccfv_kl": lambda d, i: float("nan") if i == 1 else d,
}


def test_correlations_perfect_reversed_and_regret():
    corr = correlations(frame_for(DICE, SCORERS)).set_index(["dataset", "method"])
    assert corr.loc[("TaskA", "ccfv"), "weighted_tau"] == pytest.approx(1.0)
    assert corr.loc[("TaskA", "ccfv"), "pearson"] == pytest.approx(1.0)
    assert corr.loc[("TaskA", "ccfv"), "top1_regret"] == pytest.approx(0.0)
    assert corr.loc[("TaskA", "logme"), "weighted_tau"] == pytest.approx(-1.0)
    assert corr.loc[("TaskA", "logme"), "top1_regret"] == pytest.approx(0.9 - 0.2)
    assert corr.loc[("TaskB", "logme"), "top1_model"] == "m0"
    # rank-based tau ignores the non-linearity; Pearson does not
    assert corr.loc[("TaskB", "gbc"), "weighted_tau"] == pytest.approx(1.0)
    assert corr.loc[("TaskB", "gbc"), "pearson"] < 0.999
    # a failed score leaves that model out of that method only
    assert corr.loc[("TaskA", "ccfv_kl"), "n_models"] == 4
    assert corr.loc[("TaskA", "ccfv"), "n_models"] == 5


def test_tables_have_methods_by_datasets_with_average():
    corr = correlations(frame_for(DICE, SCORERS))
    t1 = table1(corr)
    assert list(t1.columns) == ["TaskA", "TaskB", "Avg"]
    assert ("CC-FV", "tau") in t1.index and ("LogME", "pearson") in t1.index
    assert ("KL-divergence", "tau") not in t1.index  # ablations go to Table 2
    row = t1.loc[("LogME", "tau")]
    assert row["Avg"] == pytest.approx((row["TaskA"] + row["TaskB"]) / 2)
    t2 = table2(corr)
    assert list(t2.index) == ["CC-FV", "KL-divergence"]
    assert regret_table(corr).loc["CC-FV", "Avg"] == pytest.approx((0.0 + (0.6 - 0.6)) / 2)


def test_ranked_table_orders_by_ccfv():
    frame = frame_for(DICE, SCORERS)
    ranked = ranked_table(frame, "TaskB")
    assert ranked["rank"].tolist() == [1, 2, 3, 4, 5]
    assert ranked["model"].iloc[0] == "m3" and ranked["dice_rank"].iloc[0] == 1
    assert ranked["ccfv"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="No scores for dataset"):
        ranked_table(frame, "TaskZ")


def test_bad_frames_are_rejected():
    frame = frame_for(DICE, SCORERS)
    with pytest.raises(ValueError, match="lacks column"):
        correlations(frame.drop(columns="dice"))
    with pytest.raises(ValueError, match="Unknown method"):
        correlations(frame.assign(method="cc-fv"))
    with pytest.raises(ValueError, match="Two scores"):
        correlations(pd.concat([frame, frame.iloc[:1]]))


def test_too_few_models_gives_nan_not_an_error():
    corr = correlations(frame_for({"T": [0.1, 0.2]}, {"ccfv": lambda d, i: d}))
    assert math.isnan(corr["weighted_tau"].iloc[0]) and corr["top1_regret"].iloc[0] == 0.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_correlations_invariant_to_model_order(dice, rnd):
    scores = [d**2 + 0.1 * math.sin(7 * d) for d in dice]
    rows = [
        {"dataset": "T", "model": f"m{i}", "method": "ccfv", "score": s, "dice": d}
        for i, (s, d) in enumerate(zip(scores, dice))
    ]
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    a, b = correlations(pd.DataFrame(rows)), correlations(pd.DataFrame(shuffled))
    for col in ("weighted_tau", "pearson", "top1_regret"):
        assert a[col].iloc[0] == pytest.approx(b[col].iloc[0], nan_ok=True)


def test_standardise():
    z = standardise(np.array([1.0, 2.0, 3.0, 6.0]))
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    assert (standardise(np.ones(3)) == 0).all()


@pytest.fixture(scope="module")
def plain_report(tmp_path_factory):
    """The report of ``frame_for(DICE, SCORERS)`` and its folder, written once for the tests that read it."""
    folder = tmp_path_factory.mktemp("report")
    return write_report(frame_for(DICE, SCORERS), folder), folder


def test_write_report_files(plain_report):
    report, tmp_path = plain_report
    for name in (
        "table1.md",
        "table1.csv",
        "table2.md",
        "correlations.csv",
        "report.md",
        "scatter_TaskA.png",
        "scatter_TaskB.png",
        "regret.csv",
    ):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "scatter_TaskA.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "table1.md").read_text()
    assert md.startswith("| method | metric | TaskA | TaskB | Avg |") and "| CC-FV | tau | 1.0000 |" in md
    assert "Table 2" in report.markdown()
    assert "–" in to_markdown(pd.DataFrame({"a": [float("nan")]}))


def test_discrimination_table_spread_and_control_vs_pretrained():
    frame = frame_for(DICE, SCORERS)
    table = discrimination_table(frame)
    assert table.loc["TaskA", "dice_spread"] == pytest.approx(0.9 - 0.2)
    assert table.loc["TaskA", "best_model"] == "m4" and table.loc["TaskA", "n_models"] == 5
    # model m0 is the random-init control: Dice 0.2 on TaskA, 0.1 on TaskB; pre-training wins on both
    assert table.loc["TaskB", "best_control_dice"] == pytest.approx(0.1)
    assert table.loc["TaskB", "best_pretrained_dice"] == pytest.approx(0.6)
    assert bool(table.loc["TaskB", "pretraining_wins"])
    control_best = frame.assign(dice=np.where(frame["model"] == "m0", 0.95, frame["dice"]))
    assert not bool(discrimination_table(control_best).loc["TaskA", "pretraining_wins"])


def test_architecture_correlations_rank_within_each_architecture():
    # two architectures whose scores are offset: ordered within each, but the offset reverses the
    # mixed ranking (the UNETR scores are all higher while its Dice is lower)
    rows = []
    for arch, offset, dice in (("UNet", 0.0, [0.5, 0.6, 0.7, 0.8]), ("UNETR", 10.0, [0.1, 0.2, 0.3, 0.4])):
        for i, d in enumerate(dice):
            rows.append(
                {
                    "dataset": "TaskA",
                    "model": f"{arch}-{i}",
                    "method": "ccfv",
                    "score": offset + d,
                    "dice": d,
                    "architecture": arch,
                    "source_dataset": f"T{i}",
                }
            )
    frame = pd.DataFrame(rows)
    mixed = correlations(frame).set_index("method")
    assert mixed.loc["ccfv", "top1_model"] == "UNETR-3" and mixed.loc["ccfv", "top1_regret"] == pytest.approx(0.4)
    within = architecture_correlations(frame).set_index(["architecture", "method"])
    assert within.loc[("UNet", "ccfv"), "weighted_tau"] == pytest.approx(1.0)
    assert within.loc[("UNETR", "ccfv"), "weighted_tau"] == pytest.approx(1.0)
    assert within.loc[("UNETR", "ccfv"), "top1_regret"] == pytest.approx(0.0)
    table = architecture_table(architecture_correlations(frame))
    assert sorted(table.columns) == ["UNETR (avg tau)", "UNet (avg tau)"]
    assert table.loc["CC-FV"].tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="architecture"):
        architecture_correlations(frame.drop(columns="architecture"))


def test_write_report_adds_architecture_and_discrimination_tables(tmp_path, plain_report):
    frame = frame_for(DICE, SCORERS)
    frame.loc[frame["model"].isin(["m1", "m3"]), "architecture"] = "UNETR"
    report = write_report(frame, tmp_path)
    for name in ("discrimination.md", "by_architecture.md", "architecture_correlations.csv"):
        assert (tmp_path / name).is_file(), name
    assert "Within one architecture" in report.markdown() and "dice_spread" in report.markdown()
    single, folder = plain_report
    assert single.by_architecture.empty and not (folder / "by_architecture.md").exists()


def _seeded_tables(dice_by_dataset: dict[str, list[float]], n_seeds: int = 3, n_cases: int = 10, noise: float = 0.05):
    """Per (dataset, model) a per-case, per-seed Dice table around the model's Dice."""
    rng = np.random.default_rng(1)
    tables, means, sds = {}, {}, {}
    for dataset, dice in dice_by_dataset.items():
        for i, d in enumerate(dice):
            rows = [
                {"case_id": f"c{c}", "seed": s, "organ": float(np.clip(d + rng.normal(0, noise), 0, 1))}
                for s in range(n_seeds)
                for c in range(n_cases)
            ]
            table = pd.DataFrame(rows)
            per_seed = table.groupby("seed")["organ"].mean()
            tables[(dataset, f"m{i}")] = table
            means[(dataset, f"m{i}")] = float(per_seed.mean())
            sds[(dataset, f"m{i}")] = float(per_seed.std(ddof=1))
    return tables, means, sds


@pytest.mark.slow
def test_write_report_evidence_variants_source_dice_and_plots(tmp_path):
    from mlflow_ccfv.pipelines.report import report_metrics

    scorers = {
        "ccfv": lambda d, i: 3 * d + (5 if i == 0 else 0),  # ranks the random-init control first
        "ccfv_no_variety": lambda d, i: d,
        "gbc": lambda d, i: d + 0.01 * i,
        "logme": lambda d, i: -d,
    }
    tables, means, sds = _seeded_tables(DICE)
    frame = frame_for(DICE, scorers)
    frame["dice"] = [means[(r.dataset, r.model)] for r in frame.itertuples()]
    frame["dice_sd"] = [sds[(r.dataset, r.model)] for r in frame.itertuples()]
    frame["source_dice"] = [float("nan") if m == "m0" else 0.5 + 0.1 * int(m[1]) for m in frame["model"]]
    frame["checkpoint"] = ""
    report = write_report(frame, tmp_path, tables, n_resamples=200, n_permutations=199)
    ev = report.evidence
    # the twin-calibrated CC-FV: the control scores 0 and the others ccfv minus the control's ccfv
    scores = report.scores
    twin = scores[(scores["method"] == "ccfv_twin") & (scores["dataset"] == "TaskA")].set_index("model")["score"]
    ccfv = scores[(scores["method"] == "ccfv") & (scores["dataset"] == "TaskA")].set_index("model")["score"]
    assert twin["m0"] == 0.0 and twin["m3"] == pytest.approx(ccfv["m3"] - ccfv["m0"])
    # the rank aggregate: minus the mean rank under ccfv_no_variety, gbc, logme; m4 (Dice 0.9): ranks 1, 1, 5
    agg = scores[(scores["method"] == "rank_aggregate") & (scores["dataset"] == "TaskA")].set_index("model")["score"]
    assert agg["m4"] == pytest.approx(-(1 + 1 + 5) / 3)
    # the figures: every interval contains its estimate; the selection value by hand
    for r in ev.figures.itertuples():
        if r.low == r.low:
            assert r.low - 1e-9 <= r.estimate <= r.high + 1e-9, r
    top1, _, _ = ev.figure("TaskA", "ccfv_no_variety", "top1_dice")
    assert top1 == pytest.approx(means[("TaskA", "m4")])
    assert ev.figure("TaskA", "ccfv_no_variety", "top1_regret")[0] == pytest.approx(0.0)
    regret = ev.figure("TaskA", "ccfv", "top1_regret")
    assert regret[0] == pytest.approx(means[("TaskA", "m4")] - means[("TaskA", "m0")])
    random_dice = ev.figure("TaskA", "", "random_dice")[0]
    assert random_dice == pytest.approx(np.mean([means[("TaskA", f"m{i}")] for i in range(5)]))
    avg = ev.figure("avg", "ccfv_no_variety", "weighted_tau")[0]
    assert avg == pytest.approx(np.mean([ev.figure(d, "ccfv_no_variety", "weighted_tau")[0] for d in DICE]))
    # the noise ceiling: three seeds, well-separated models -> high agreement between replicates
    noise = ev.noise.set_index("dataset")
    assert set(noise["kind"]) == {"seeds"} and noise.loc["TaskA", "estimate"] > 0.5
    assert noise.loc["TaskA", "low"] <= noise.loc["TaskA", "estimate"] <= noise.loc["TaskA", "high"]
    p = ev.pvalues.set_index(["dataset", "method"])["permutation_p"]
    assert p[("TaskA", "ccfv_no_variety")] < 0.05 and p[("TaskA", "logme")] > 0.5
    assert set(ev.differences["method"]) == {"ccfv_twin", "ccfv_no_variety_twin", "rank_aggregate"}
    for name in ("evidence.md", "evidence.csv", "noise_ceiling.csv", "permutation.csv", "variants.csv"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / f"dice_vs_{DEFAULT_RANKING}_TaskA.png").stat().st_size > 10_000  # auto: the default
    assert report.goal_method == DEFAULT_RANKING
    source = pd.read_csv(tmp_path / "source_dice.csv")
    assert len(source) == 5 and source.set_index("model").loc["m2", "source_dice"] == pytest.approx(0.7)
    text = (tmp_path / "report.md").read_text()
    assert "Noise ceiling" in text and "source" in text and "Rank aggregate" in text
    metrics = report_metrics(report)
    assert metrics["TaskA.noise_ceiling"] == pytest.approx(noise.loc["TaskA", "estimate"])
    assert "TaskA.ccfv.weighted_tau.low" in metrics and "avg.ccfv.weighted_tau.high" in metrics
    assert metrics["TaskA.ccfv_no_variety.top1_dice"] == pytest.approx(top1)
    assert "TaskA.bank.random_dice.low" in metrics and "TaskA.logme.permutation_p" in metrics


def test_report_json_holds_the_printed_tables(plain_report):
    """``report --json``: every table ``report`` prints, as records with the same values."""
    import json

    from mlflow_ccfv.pipelines.rank import frames_json
    from mlflow_ccfv.pipelines.report import report_tables

    report, _ = plain_report
    data = json.loads(frames_json(report_tables(report)))
    assert {"table1", "table2", "regret", "correlations"} <= set(data)
    table1 = report.table1.reset_index()
    assert len(data["table1"]) == len(table1) and set(data["table1"][0]) == set(table1.columns)
    first = data["table1"][0]
    assert first["TaskA"] == pytest.approx(float(table1.iloc[0]["TaskA"]))
    corr = report.correlations
    assert [r["method"] for r in data["correlations"]] == list(corr["method"])
