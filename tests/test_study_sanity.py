"""The sanity properties (a)-(c) of a ranking and the pre-registered rule for the default (study.sanity)."""

from __future__ import annotations

import pandas as pd

from mlflow_ccfv.scoring.ranking import FROM_SCRATCH_WARNING
from mlflow_ccfv.study.report import write_report
from mlflow_ccfv.study.sanity import CANDIDATES, FALLBACK_DEFAULT, choose_default, sanity_table

# one target, four models: an in-domain model (best), a far-domain model, an early checkpoint, a control
MODELS = [
    # model, source, dice, sd, ccfv, gbc
    ("in/1", "Task41", 0.85, 0.01, 0.2, 3.0),
    ("far/1", "Task03", 0.70, 0.02, 0.1, 2.0),
    ("early/1", "Task41", 0.80, 0.01, -0.3, 2.5),
    ("twin/1", "random-init", 0.60, 0.02, 0.5, 1.0),  # ccfv puts the random network first
]


def frame(target: str = "Task42") -> pd.DataFrame:
    rows = []
    for model, source, dice, sd, ccfv, gbc in MODELS:
        for method, score in (("ccfv", ccfv), ("gbc", gbc)):
            rows.append(
                {
                    "dataset": target,
                    "model": model,
                    "method": method,
                    "score": score,
                    "dice": dice,
                    "dice_sd": sd,
                    "architecture": "UNet",
                    "source_dataset": source,
                    "network": "n1",
                }
            )
    return pd.DataFrame(rows)


def test_a_control_above_a_clearly_better_model_fails_a_and_is_flagged():
    table = sanity_table(frame(), in_domain={"Task42": ["Task41"]}).set_index("method")
    assert not table.loc["ccfv", "a_pass"]
    assert table.loc["ccfv", "a_violations"] == "twin/1 > in/1; twin/1 > far/1; twin/1 > early/1"
    assert table.loc["ccfv", "top_is_control"] and table.loc["ccfv", "top_pick"] == "twin/1"
    assert table.loc["ccfv", "in_domain_rank"] == 2 and table.loc["ccfv", "b_pass"]  # in/1 second
    assert table.loc["gbc", "a_pass"] and table.loc["gbc", "b_pass"] and not table.loc["gbc", "top_is_control"]


def test_a_gap_within_two_seed_sd_is_not_a_violation():
    f = frame()
    f.loc[f["model"] == "far/1", "dice"] = 0.62  # 0.02 above the control, within 2 x 0.02
    table = sanity_table(f[f["model"].isin(["far/1", "twin/1"])]).set_index("method")
    assert table.loc["ccfv", "a_pass"] and pd.isna(table.loc["ccfv", "b_pass"])  # no in-domain model: n/a


def test_the_rule_takes_the_best_average_tau_among_candidates_that_pass():
    sanity = sanity_table(frame(), in_domain={"Task42": ["Task41"]})
    corr = pd.DataFrame(
        [
            {"dataset": "Task42", "method": "ccfv", "weighted_tau": 0.9},
            {"dataset": "Task42", "method": "gbc", "weighted_tau": 0.5},
        ]
    )
    choice, table = choose_default(sanity, corr)
    assert choice == "gbc"  # ccfv's higher tau does not count: it fails (a)
    assert list(table[table["chosen"]]["method"]) == ["gbc"]
    none_pass = sanity.assign(a_pass=False)
    assert choose_default(none_pass, corr)[0] == FALLBACK_DEFAULT
    assert CANDIDATES[0] == "ccfv" and "ccfv_twin" in CANDIDATES


def test_the_report_flags_a_random_init_top_pick(tmp_path):
    rep = write_report(
        frame(), tmp_path, rank_by="ccfv", n_resamples=20, n_permutations=19, in_domain={"Task42": ["Task41"]}
    )
    text = (tmp_path / "report.md").read_text()
    assert "Sanity properties of `ccfv`" in text
    assert f"**Task42**: the top pick is a random-init network: {FROM_SCRATCH_WARNING}." in text
    assert (tmp_path / "sanity.csv").is_file() and (tmp_path / "default_rule.md").is_file()
    assert rep.default_choice in CANDIDATES
    # the twin-calibrated variant joins the table: the control scores 0, above every model here
    twin = rep.sanity.set_index("method").loc["ccfv_twin"]
    assert twin["top_pick"] == "twin/1" and twin["top_is_control"] and twin["in_domain_rank"] == 2


def test_targets_measured_elsewhere_join_the_sanity_table_and_the_rule(tmp_path):
    rep = write_report(
        frame(),
        tmp_path,
        rank_by="ccfv",
        n_resamples=20,
        n_permutations=19,
        in_domain={"Task42": ["Task41"]},
        other_targets=frame("Task99"),
    )
    assert set(rep.sanity["dataset"]) == {"Task42", "Task99"}
    assert set(rep.correlations["dataset"]) == {"Task42"}  # the figures stay those of this report's data
    gbc = rep.default_rule.set_index("method").loc["gbc"]
    assert gbc["targets"] == 2 and gbc["passes"]
    # (b) applies where an in-domain source is named, not on the other target
    assert rep.sanity.set_index(["dataset", "method"]).loc[("Task99", "gbc"), "b_pass"] is pd.NA
