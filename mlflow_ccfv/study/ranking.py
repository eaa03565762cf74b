"""The ranked table of a bank on one target, as a DataFrame, Markdown and a bar plot (no MLflow)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["PLOT_TOP", "rank_table", "ranking_plot", "table_markdown"]


def rank_table(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    dataset_name: str,
    rank_method: str = "ccfv",
    ranks: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """One row per model, best ``rank_method`` first (``rank`` 1); failed models last with their ``error``.
    ``ranks`` (model label without ``models:/`` -> rank): the ranks as stored, instead of the order of
    ``rank_method``; models without one (random-init controls) have no rank and follow the ranked ones.

    ``rows``: per model ``model``, ``name``, ``version``, ``model_id``, ``architecture``,
    ``source_dataset``, a score per method, ``cached``, ``seconds`` and ``error`` (None when scored).
    """
    columns = [
        "model",
        "name",
        "version",
        "model_id",
        "architecture",
        "source_dataset",
        *methods,
        "cached",
        "seconds",
        "error",
    ]
    df = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    ok = df["error"].isna()
    df["rank"] = pd.array([pd.NA] * len(df), dtype="Int64")
    if ranks is not None:
        for i, model in enumerate(df["model"]):
            rank = ranks.get(str(model).removeprefix("models:/"))
            if rank is not None and ok.iloc[i]:
                df.loc[i, "rank"] = int(rank)
    else:
        df.loc[ok, "rank"] = (
            pd.to_numeric(df.loc[ok, rank_method]).rank(ascending=False, method="first", na_option="bottom").astype(int)
        )
    df = df.sort_values(["rank", "model"], na_position="last").reset_index(drop=True)
    df.insert(0, "dataset", dataset_name)
    return df[["rank"] + [c for c in df.columns if c != "rank"]]


#: Bars drawn by :func:`ranking_plot` at most: the figure's height (and the memory to render it, about
#: 0.3 MB a bar at 110 dpi) would otherwise grow with the bank; the whole ranking is in the table.
PLOT_TOP = 30


def ranking_plot(table: pd.DataFrame, path: str | os.PathLike, method: str = "ccfv", top: int = PLOT_TOP) -> Path:
    """Horizontal bars of ``method`` for the ``top`` best-ranked models, best at the top, rank in the
    label (PNG); the title says how many of the scored models are shown."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    scored = table[table["error"].isna()]
    ok = scored.sort_values("rank").head(top).sort_values("rank", ascending=False, na_position="first")
    fig = Figure(figsize=(7, 0.5 * max(len(ok), 2) + 1.2))
    ax = fig.subplots()
    # models without a rank are the random-init controls: drawn in grey, as references
    labels = [
        f"{'control' if pd.isna(r) else f'#{int(r)}'}  {m} ({s})"
        for r, m, s in zip(ok["rank"], ok["model"], ok["source_dataset"])
    ]
    colors = ["tab:gray" if pd.isna(r) else "tab:blue" for r in ok["rank"]]
    ax.barh(labels, ok[method].astype(float), color=colors)
    ax.set_xlabel(f"{method} (higher = expected to transfer better)")
    shown = f" (top {len(ok)} of {len(scored)})" if len(ok) < len(scored) else ""
    ax.set_title(f"Transferability to {table['dataset'].iloc[0]}{shown}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def table_markdown(table: pd.DataFrame, methods: Sequence[str]) -> str:
    """The ranked table as Markdown (rank, model, source, scores, errors)."""
    cols = ["rank", "model", "architecture", "source_dataset"] + list(methods) + ["cached", "error"]
    shown = table[cols].copy()
    for m in methods:
        shown[m] = [("" if pd.isna(v) else f"{v:.4f}") for v in shown[m]]
    shown["rank"] = ["" if pd.isna(v) else str(int(v)) for v in shown["rank"]]
    shown["error"] = ["" if (e is None or (isinstance(e, float) and math.isnan(e))) else str(e) for e in shown["error"]]
    header = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in shown.itertuples(index=False))
    return header + body
