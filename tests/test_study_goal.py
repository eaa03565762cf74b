"""mlflow_ccfv.study.goal: the ranking goal and the pre-registered decision, on hand-made evidence tables."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from mlflow_ccfv.cli import main
from mlflow_ccfv.study.goal import compare_studies, goal_markdown, goal_table


def _figures(rows: list[tuple[str, str, str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["scope", "method", "statistic", "estimate", "low", "high"])


def _evidence():
    figures = _figures(
        [
            # A: tau 0.5 >= 0.8 x 0.6 = 0.48, regret 0.02 <= sd 0.03 -> met
            ("A", "ccfv", "weighted_tau", 0.5, 0.1, 0.8),
            ("A", "ccfv", "top1_regret", 0.02, 0.0, 0.05),
            # B: tau 0.3 < 0.8 x 0.5 = 0.4 -> not met; regret 0.01 <= 0.02
            ("B", "ccfv", "weighted_tau", 0.3, -0.1, 0.6),
            ("B", "ccfv", "top1_regret", 0.01, 0.0, 0.04),
            # C: noise ceiling -0.1: cannot be met, whatever tau is
            ("C", "ccfv", "weighted_tau", 0.9, 0.5, 1.0),
            ("C", "ccfv", "top1_regret", 0.0, 0.0, 0.0),
            ("avg", "ccfv", "weighted_tau", 0.57, 0.05, 0.8),
        ]
    )
    noise = pd.DataFrame(
        {"dataset": ["A", "B", "C"], "estimate": [0.6, 0.5, -0.1], "low": [0.4, 0.2, -0.3], "high": [0.8, 0.7, 0.2]}
    )
    scores = pd.DataFrame(
        {
            "dataset": ["A", "A", "A", "B", "B", "C"],
            "model": ["m1", "m1", "m2", "m1", "m2", "m1"],  # m1 twice on A (two methods): counted once
            "dice_sd": [0.02, 0.02, 0.04, 0.01, 0.03, 0.05],
        }
    )
    return figures, noise, scores


def test_goal_table_by_hand():
    table = goal_table(*_evidence()).set_index("dataset")
    assert table.loc["A", "target_tau"] == pytest.approx(0.48)
    assert table.loc["A", "dice_sd"] == pytest.approx(0.03)  # mean of m1's 0.02 and m2's 0.04
    assert bool(table.loc["A", "met"])
    assert not bool(table.loc["B", "tau_met"]) and bool(table.loc["B", "regret_met"])
    assert not bool(table.loc["C", "met"]) and "noise ceiling not above 0" in table.loc["C", "why_not"]
    assert bool(table.loc["avg", "met"])  # [0.05, 0.8] excludes 0
    text = goal_markdown(table.reset_index())
    assert "NOT MET" in text and "**1 of 3** (needed: 3)" in text
    assert text.startswith("## The ranking goal for `ccfv`: NOT MET") and "Issue" not in text


def _write(folder, tau_diff: tuple[float, float, float]) -> None:
    folder.mkdir()
    figures, noise, _ = _evidence()
    figures.to_csv(folder / "evidence.csv", index=False)
    noise.assign(kind="seeds").to_csv(folder / "noise_ceiling.csv", index=False)
    _figures([("avg", "ccfv_twin", "weighted_tau", *tau_diff)]).to_csv(folder / "variants.csv", index=False)


def test_compare_studies_applies_the_preregistered_rule_to_the_confirmation_only(tmp_path):
    _write(tmp_path / "dev", (0.3, 0.1, 0.5))  # development supports the variant ...
    _write(tmp_path / "confirm", (0.2, -0.05, 0.4))  # ... the confirmation interval includes 0
    result = compare_studies(tmp_path / "dev", tmp_path / "confirm")
    assert "the default stays `ccfv`" in result.decision["ccfv_twin"]
    row = result.table.set_index("method").loc["ccfv"]
    assert row["development tau"] == "0.570 [0.050, 0.800]"
    (tmp_path / "confirm" / "variants.csv").unlink()
    _write(tmp_path / "confirm2", (0.2, 0.05, 0.4))
    assert "supports it" in compare_studies(tmp_path / "dev", tmp_path / "confirm2").decision["ccfv_twin"]


def test_compare_studies_cli_names_a_missing_report(tmp_path):
    _write(tmp_path / "dev", (0.3, 0.1, 0.5))
    out = CliRunner().invoke(
        main, ["compare-studies", "--development", str(tmp_path / "dev"), "--confirmation", str(tmp_path / "nope")]
    )
    assert out.exit_code != 0
    assert "nope/evidence.csv is missing" in out.output and "--out-dir" in out.output
    ok = CliRunner().invoke(
        main,
        [
            "compare-studies",
            "--development",
            str(tmp_path / "dev"),
            "--confirmation",
            str(tmp_path / "dev"),
            "--out",
            str(tmp_path / "c.md"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "Decision" in (tmp_path / "c.md").read_text()
