"""The study's long table and what is computed over it per (dataset, method): correlations, regret.

Input: a long table ``frame`` (pandas) with one row per (target dataset, bank model, method):

=================  ==============================================================================
``dataset``        target task (e.g. ``Task03``)
``model``          bank model id (e.g. ``bank-unet-Task06/2``)
``method``         estimator name from :data:`mlflow_ccfv.estimators.METHODS`
``score``          its transferability score (higher = expected to transfer better); NaN if failed
``dice``           the model's mean foreground Dice after fine-tuning on the dataset
=================  ==============================================================================

plus optional descriptive columns (``architecture``, ``source_dataset``) carried into the ranked table.

Per (dataset, method) over the bank (:func:`correlations`): weighted Kendall's tau and Pearson's r
between score and Dice (Table 1; :func:`mlflow_ccfv.study.correlation.weighted_tau`, ``pearson``), and
the **top-1 regret**: best Dice in the bank minus the Dice of the model the method ranks first (0 =
it picked the best model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.estimators.catalogue import method_labels, method_names
from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE
from mlflow_ccfv.study.correlation import pearson, weighted_tau
from mlflow_ccfv.study.variants import VARIANTS

__all__ = [
    "METHOD_LABELS",
    "REPORT_METHODS",
    "REQUIRED_COLUMNS",
    "TABLE1_METHODS",
    "TABLE2_METHODS",
    "architecture_correlations",
    "check_frame",
    "correlations",
    "discrimination_table",
    "ordered_methods",
    "ranked_table",
]


#: Table 1's rows: CC-FV and the baselines (the paper: LogME, TransRate, LEEP, GBC, CC-FV).
TABLE1_METHODS = method_names(table="table1")
#: Table 2's rows: CC-FV and its ablations.
TABLE2_METHODS = method_names(table="table2")
#: Display names, as in the paper where it has one.
METHOD_LABELS = method_labels()
#: Every method a report may hold: the estimators and the report-level variants.
REPORT_METHODS = (*METHODS, *VARIANTS)
REQUIRED_COLUMNS = ("dataset", "model", "method", "score", "dice")


def check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` itself after checking its columns, its methods and that no (dataset, model, method) repeats."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"The scores table lacks column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}."
        )
    unknown = sorted(set(frame["method"]) - set(REPORT_METHODS))
    if unknown:
        raise ValueError(f"Unknown method(s) {', '.join(unknown)}; known: {', '.join(REPORT_METHODS)}.")
    dup = frame.duplicated(["dataset", "model", "method"])
    if dup.any():
        first = frame.loc[dup, ["dataset", "model", "method"]].iloc[0].tolist()
        raise ValueError(f"Two scores for the same (dataset, model, method) {first}.")
    return frame


def correlations(frame: pd.DataFrame, min_models: int = 3) -> pd.DataFrame:
    """Per (dataset, method): ``weighted_tau``, ``pearson``, ``top1_regret``, ``top1_model``, ``n_models``.

    Models with a non-finite score or Dice are left out of that method's correlation; with fewer than
    ``min_models`` left (or constant scores or Dice) the correlations are NaN.
    """
    check_frame(frame)
    rows = []
    best_dice = frame["dice"].astype(float).groupby(frame["dataset"]).max()
    for (dataset, method), g in frame.groupby(["dataset", "method"], sort=True):
        g = g[np.isfinite(g["score"].astype(float)) & np.isfinite(g["dice"].astype(float))]
        scores, dice = g["score"].to_numpy(float), g["dice"].to_numpy(float)
        tau = rho = regret = float("nan")
        top = None
        if len(g) >= 1:
            i = int(np.argmax(scores))
            top = str(g["model"].iloc[i])
            regret = float(best_dice[dataset] - dice[i])
        if len(g) >= min_models and np.ptp(scores) > 0 and np.ptp(dice) > 0:
            tau, rho = float(weighted_tau(scores, dice)), float(pearson(scores, dice))
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "weighted_tau": tau,
                "pearson": rho,
                "top1_regret": regret,
                "top1_model": top,
                "n_models": int(len(g)),
            }
        )
    return pd.DataFrame(
        rows, columns=["dataset", "method", "weighted_tau", "pearson", "top1_regret", "top1_model", "n_models"]
    )


def ordered_methods(methods: Sequence[str], present: Sequence[str]) -> list[str]:
    """The ``methods`` that are ``present``, in the order of ``methods``."""
    return [m for m in methods if m in set(present)]


def architecture_correlations(frame: pd.DataFrame, min_models: int = 3) -> pd.DataFrame:
    """:func:`correlations` within each architecture's part of the bank (column ``architecture`` added).

    A mixed bank ranks models of different architectures against each other; this asks the narrower
    question a user with one architecture in mind asks (regret is then relative to that architecture's
    best model). Needs the ``architecture`` column.
    """
    check_frame(frame)
    if "architecture" not in frame.columns:
        raise ValueError("The scores table has no 'architecture' column; per-architecture correlations need it.")
    parts = [
        correlations(g, min_models).assign(architecture=str(arch))
        for arch, g in frame.groupby("architecture", sort=True)
    ]
    return pd.concat(parts, ignore_index=True) if parts else correlations(frame, min_models).assign(architecture="")


def discrimination_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, can the study tell models apart? ``n_models``, the Dice ``min``/``max``/``spread``
    (best minus worst), the best model, and (with a ``source_dataset`` column) the best random-init
    control's Dice against the best pre-trained model's, and whether pre-training won."""
    check_frame(frame)
    models = frame.drop_duplicates(["dataset", "model"])
    rows = []
    for dataset, g in models.groupby("dataset", sort=True):
        dice = g["dice"].astype(float)
        row = {
            "dataset": dataset,
            "n_models": int(len(g)),
            "dice_min": float(dice.min()),
            "dice_max": float(dice.max()),
            "dice_spread": float(dice.max() - dice.min()),
            "best_model": str(g["model"].iloc[int(np.argmax(dice.to_numpy()))]),
        }
        if "source_dataset" in g.columns:
            control = g["source_dataset"].astype(str).eq(CONTROL_SOURCE)
            best_control = float(dice[control].max()) if control.any() else float("nan")
            best_pretrained = float(dice[~control].max()) if (~control).any() else float("nan")
            row.update(
                {
                    "best_control_dice": best_control,
                    "best_pretrained_dice": best_pretrained,
                    "pretraining_wins": bool(best_pretrained > best_control),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("dataset")


def ranked_table(
    frame: pd.DataFrame,
    dataset: str,
    by: str = "ccfv",
    methods: Sequence[str] = ("ccfv", "logme", "leep", "gbc", "transrate"),
) -> pd.DataFrame:
    """One row per bank model for ``dataset``, ranked by ``by`` (1 = best), with the chosen methods'
    scores, the measured Dice and its rank within the bank."""
    check_frame(frame)
    sub = frame[frame["dataset"] == dataset]
    if sub.empty:
        raise ValueError(
            f"No scores for dataset {dataset!r}; datasets present: {', '.join(sorted(frame['dataset'].unique()))}."
        )
    wide = sub.pivot(index="model", columns="method", values="score")
    meta = sub.drop_duplicates("model").set_index("model")
    out = pd.DataFrame(index=wide.index)
    for col in ("architecture", "source_dataset"):
        if col in meta.columns:
            out[col] = meta[col]
    for m in methods:
        if m in wide.columns:
            out[m] = wide[m]
    out["dice"] = meta["dice"].astype(float)
    out["dice_rank"] = out["dice"].rank(ascending=False, method="min").astype("Int64")
    if by not in wide.columns:
        raise ValueError(f"No {by!r} scores for {dataset!r}; methods present: {', '.join(wide.columns)}.")
    out = out.assign(_key=wide[by]).sort_values("_key", ascending=False, na_position="last").drop(columns="_key")
    out.insert(0, "rank", range(1, len(out) + 1))
    return out.reset_index()
