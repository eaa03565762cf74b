"""The ranking plot of ``score``: its size (and the memory to draw it) does not grow with the bank.

Before, one bar per scored version made a 500-version bank's PNG 27,000 pixels tall, and drawing it
raised the scoring process's peak RSS by ~0.3 MB per version (bench/bench_scale.py)."""

from __future__ import annotations

import matplotlib.image
import pytest

from mlflow_ccfv.study.ranking import PLOT_TOP, rank_table, ranking_plot


def _table(n: int, failed: int = 0):
    rows = [
        {"model": f"bank-{i}/1", "source_dataset": "none", "ccfv": float(i), "error": None} for i in range(n - failed)
    ] + [{"model": f"broken-{i}/1", "source_dataset": "none", "error": "ValueError: x"} for i in range(failed)]
    return rank_table(rows, ["ccfv"], "Task07")


def test_the_plot_shows_the_top_versions_and_its_size_is_bounded(tmp_path):
    small = matplotlib.image.imread(ranking_plot(_table(PLOT_TOP), tmp_path / "small.png"))
    large_path = ranking_plot(_table(4 * PLOT_TOP, failed=3), tmp_path / "large.png")
    large = matplotlib.image.imread(large_path)
    assert large.shape == small.shape  # same pixels for 30 or 120 versions
    few = matplotlib.image.imread(ranking_plot(_table(3), tmp_path / "few.png"))
    assert few.shape[0] < small.shape[0]  # a small bank still gets a small figure
    with pytest.raises(ValueError, match="top must be at least 1"):
        ranking_plot(_table(3), tmp_path / "none.png", top=0)
