"""Sanity properties of a ranking on a target, and the pre-registered rule that picks the default ranking
(docs/preregistration.md, "Pre-registration 2").

Per (target, method), from the study's long table (``dataset``, ``model``, ``method``, ``score``,
``dice``, ``dice_sd``, ``source_dataset``):

- **(a)** no random-init control ranks above a pre-trained model whose mean fine-tuned Dice is higher
  by more than two seed standard deviations (the larger of the two models' sd);
- **(b)** where the bank holds models pre-trained on the target's own task (``in_domain``: target ->
  its sources), one of them ranks in the top 2 (not applicable elsewhere);
- **(c)** whether the top pick is a random-init control (then :data:`FROM_SCRATCH_WARNING` holds).

A model the method gave no finite score ranks last. :func:`choose_default` applies the rule: among the
candidates that pass (a) everywhere and (b) wherever it applies, the highest average weighted τ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE, FROM_SCRATCH_WARNING, TWIN_METHOD

__all__ = [
    "CANDIDATES",
    "FALLBACK_DEFAULT",
    "SANITY_SD",
    "choose_default",
    "sanity_markdown",
    "sanity_table",
]

#: The candidate rankings of pre-registration 2, in its order (ties go to the earlier one).
CANDIDATES = (
    "ccfv",
    "ccfv_twin",
    "ccfv_no_variety",
    "ccfv_single_scale",
    "ccfv_no_variety_twin",
    "ccfv_single_scale_twin",
    "rank_aggregate",
    "logme",
    "gbc",
    "leep",
    "nce",
    "hscore",
    "transrate",
    "nleep",
)
#: The default when no candidate passes the sanity properties.
FALLBACK_DEFAULT = TWIN_METHOD
#: (a): a Dice gap counts when it exceeds this many seed standard deviations.
SANITY_SD = 2.0


def _ordered(group: pd.DataFrame) -> pd.DataFrame:
    """One method's rows on one target, best score first (a non-finite score last, ties by model)."""
    key = group["score"].astype(float).where(np.isfinite(group["score"].astype(float)), -np.inf)
    return group.assign(_key=-key).sort_values(["_key", "model"], kind="stable").drop(columns="_key")


def _violations(group: pd.DataFrame) -> list[str]:
    """(a)'s violations: ``control > model`` where the model fine-tunes better by more than 2 seed sd."""
    rank = {m: i for i, m in enumerate(_ordered(group)["model"])}
    sd = group["dice_sd"].astype(float).fillna(0.0) if "dice_sd" in group.columns else pd.Series(0.0, group.index)
    rows = list(zip(group["model"], group["source_dataset"].astype(str), group["dice"].astype(float), sd))
    out = []
    for control, c_src, c_dice, c_sd in rows:
        if c_src != CONTROL_SOURCE:
            continue
        for model, src, dice, m_sd in rows:
            if src == CONTROL_SOURCE:
                continue
            if dice - c_dice > SANITY_SD * max(c_sd, m_sd) and rank[control] < rank[model]:
                out.append(f"{control} > {model}")
    return out


def sanity_table(
    frame: pd.DataFrame,
    methods: Sequence[str] | None = None,
    in_domain: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per (dataset, method): ``a_pass``, ``a_violations``, ``b_pass`` (NA where the target has
    no in-domain model), ``in_domain_rank`` (the best rank of an in-domain model), ``top_pick``,
    ``top_is_control``. ``in_domain``: target -> the ``source_dataset`` values of its own task."""
    own_sources: dict[str, set[str]] = {str(k): set(v) for k, v in (in_domain or {}).items()}
    rows = []
    chosen = frame if methods is None else frame[frame["method"].isin(methods)]
    for (dataset, method), group in chosen.groupby(["dataset", "method"], sort=True):
        ordered = _ordered(group)
        sources = ordered["source_dataset"].astype(str).tolist()
        own = own_sources.get(str(dataset), set())
        own_ranks = [i + 1 for i, s in enumerate(sources) if s in own]
        violations = _violations(group)
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "a_pass": not violations,
                "a_violations": "; ".join(violations),
                "b_pass": (min(own_ranks) <= 2) if own_ranks else pd.NA,
                "in_domain_rank": min(own_ranks) if own_ranks else pd.NA,
                "top_pick": ordered["model"].iloc[0],
                "top_is_control": sources[0] == CONTROL_SOURCE,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "method",
            "a_pass",
            "a_violations",
            "b_pass",
            "in_domain_rank",
            "top_pick",
            "top_is_control",
        ],
    )


def choose_default(
    sanity: pd.DataFrame, corr: pd.DataFrame, candidates: Sequence[str] = CANDIDATES
) -> tuple[str, pd.DataFrame]:
    """The rule: among ``candidates`` passing (a) on every target of ``sanity`` and (b) wherever it
    applies, the highest average weighted τ (``corr``: ``dataset``, ``method``, ``weighted_tau``), ties
    (3 decimals) to the earlier candidate; :data:`FALLBACK_DEFAULT` when none passes. Returns the
    choice and the table (``method``, ``targets``, ``a_pass``, ``b_pass``, ``passes``, ``avg_tau``,
    ``chosen``)."""
    rows = []
    datasets = sorted(sanity["dataset"].unique())
    for order, method in enumerate(candidates):
        s = sanity[sanity["method"] == method]
        c = corr[corr["method"] == method]
        if s.empty:
            continue
        a = bool(s["a_pass"].all()) and set(s["dataset"]) == set(datasets)
        b_values = [v for v in s["b_pass"] if v is not pd.NA and v == v]
        b = all(bool(v) for v in b_values)
        taus = c.set_index("dataset")["weighted_tau"].reindex(datasets).astype(float)
        avg = float(taus.mean()) if taus.notna().all() else math.nan
        rows.append(
            {
                "method": method,
                "order": order,
                "targets": len(s),
                "a_pass": a,
                "b_pass": b,
                "passes": a and b,
                "avg_tau": avg,
            }
        )
    table = pd.DataFrame(rows, columns=["method", "order", "targets", "a_pass", "b_pass", "passes", "avg_tau"])
    passing = table[table["passes"] & table["avg_tau"].notna()]
    if passing.empty:
        choice = FALLBACK_DEFAULT
    else:
        best = passing["avg_tau"].round(3).max()
        choice = str(passing[passing["avg_tau"].round(3) == best].sort_values("order")["method"].iloc[0])
    table["chosen"] = table["method"] == choice
    return choice, table.drop(columns="order")


def sanity_markdown(sanity: pd.DataFrame, method: str) -> str:
    """The sanity properties of ``method`` per target, each flagged target with the sentence users read."""
    rows = sanity[sanity["method"] == method]
    lines = [
        f"## Sanity properties of `{method}`\n",
        "| target | (a) no control above a clearly better model | (b) in-domain model in the top 2 | top pick |",
        "|---|---|---|---|",
    ]
    notes = []
    for r in rows.itertuples(index=False):
        a = "pass" if r.a_pass else f"FAIL ({r.a_violations})"
        b = "n/a" if r.b_pass is pd.NA else ("pass" if r.b_pass else f"FAIL (best in-domain rank {r.in_domain_rank})")
        lines.append(
            f"| {r.dataset} | {a} | {b} | {r.top_pick}{' (random-init control)' if r.top_is_control else ''} |"
        )
        if r.top_is_control:
            notes.append(f"- **{r.dataset}**: the top pick is a random-init network: {FROM_SCRATCH_WARNING}.")
    return "\n".join(lines + [""] + notes) + "\n"
