"""Markdown tables for the study's reports (no MLflow)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["to_markdown"]


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table (index included when it is named), numbers to ``digits`` decimals."""
    table = df.reset_index() if any(n is not None for n in df.index.names) else df

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
