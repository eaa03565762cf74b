"""Did pre-training stop improving? The second half of each curve's budget against the first."""

from __future__ import annotations

import pandas as pd
import pytest

from mlflow_ccfv.study.evidence import pretraining_plateau


def test_plateau_compares_the_best_source_dice_of_each_half_of_the_budget():
    rows = [("UNet", "TaskA", s, d) for s, d in zip((250, 500, 750, 1000), (0.5, 0.8, 0.81, 0.815))]
    rows += [("UNet", "TaskB", s, d) for s, d in zip((250, 500, 750, 1000), (0.3, 0.4, 0.5, 0.6))]
    rows += [("UNETR", "TaskA", 1000, 0.7)]  # one point: no first half to compare with
    rows += [("UNETR", "TaskB", s, d) for s, d in zip((1000, 2000, 3000, 4000), (0.6, 0.9, 0.7, 0.915))]
    curves = pd.DataFrame(rows, columns=["architecture", "source_dataset", "step", "source_dice"])
    table = pretraining_plateau(curves).set_index(["architecture", "source_dataset"])
    assert table.loc[("UNet", "TaskA"), "gain"] == pytest.approx(0.815 - 0.8)
    assert table.loc[("UNet", "TaskA"), "verdict"] == "flattened"
    assert table.loc[("UNet", "TaskB"), "gain"] == pytest.approx(0.2)
    assert table.loc[("UNet", "TaskB"), "verdict"] == "still rising"
    assert table.loc[("UNETR", "TaskA"), "verdict"] == "unknown"
    # the best of each half, not the last point: a dip late in the run does not hide a plateau
    assert table.loc[("UNETR", "TaskB"), "first_half"] == pytest.approx(0.9)
    assert table.loc[("UNETR", "TaskB"), "verdict"] == "flattened" and table.loc[("UNETR", "TaskB"), "steps"] == 4000
