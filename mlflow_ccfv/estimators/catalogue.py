"""One catalogue of every method the project scores or reports: its name, label, kind, whether it is
scored by default, and where the report and the demo show it. Every list of methods derives from it.

Kinds: ``ccfv`` (Eq. 5 and its Table 2 ablations, from decoder features), ``feature`` (baselines on
features and labels), ``probability`` (baselines on the source head's probabilities) and ``variant``
(report-level rankings computed from other models' stored scores, ``study.variants``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOGUE", "Method", "method_names", "method_labels"]


@dataclass(frozen=True)
class Method:
    """``table1``/``table2``: the row's position in the report's Table 1 (CC-FV vs the baselines) or
    Table 2 (the ablations), None when absent; ``default``: scored when no method is asked for;
    ``demo``: shown in the demo's evidence table."""

    name: str
    label: str
    kind: str
    default: bool = False
    table1: int | None = None
    table2: int | None = None
    demo: bool = False


CATALOGUE: tuple[Method, ...] = (
    Method("ccfv", "CC-FV", "ccfv", default=True, table1=0, table2=0, demo=True),
    Method("ccfv_no_consistency", "CC-FV w/o C_cons", "ccfv", table2=1),
    Method("ccfv_no_variety", "CC-FV w/o F_v", "ccfv", table2=2),
    Method("ccfv_single_scale", "Single-scale", "ccfv", table2=3),
    Method("ccfv_kl", "KL-divergence", "ccfv", table2=4),
    Method("ccfv_bhattacharyya", "Bha-distance", "ccfv", table2=5),
    Method("ccfv_unit_sphere", "CC-FV, unit-sphere C_cons (not in the paper)", "ccfv", table2=6),
    Method("logme", "LogME", "feature", default=True, table1=1, demo=True),
    Method("leep", "LEEP", "probability", default=True, table1=3, demo=True),
    Method("gbc", "GBC", "feature", default=True, table1=4, demo=True),
    Method("transrate", "TransRate", "feature", default=True, table1=2, demo=True),
    Method("nleep", "N-LEEP", "feature", default=True, table1=5),
    Method("nce", "NCE", "probability", default=True, table1=6),
    Method("hscore", "H-score", "feature", default=True, table1=7),
    Method("ccfv_twin", "CC-FV minus random twin (pre-registered variant)", "variant", demo=True),
    Method("ccfv_no_variety_twin", "CC-FV w/o F_v minus random twin (pre-registered variant)", "variant"),
    Method("ccfv_single_scale_twin", "Single-scale minus random twin (pre-registered variant)", "variant"),
    Method("rank_aggregate", "Rank aggregate (pre-registered variant)", "variant", demo=True),
)


def method_names(
    *,
    kinds: tuple[str, ...] | None = None,
    default: bool | None = None,
    table: str | None = None,
    demo: bool | None = None,
) -> tuple[str, ...]:
    """The names of the catalogue's methods that match every filter given, in catalogue order (in the
    table's row order with ``table="table1"`` or ``"table2"``)."""
    chosen = [
        m
        for m in CATALOGUE
        if (kinds is None or m.kind in kinds)
        and (default is None or m.default == default)
        and (demo is None or m.demo == demo)
        and (table is None or getattr(m, table) is not None)
    ]
    if table is not None:
        chosen.sort(key=lambda m: getattr(m, table))
    return tuple(m.name for m in chosen)


def method_labels() -> dict[str, str]:
    """Name -> display label (as in the paper where it has one)."""
    return {m.name: m.label for m in CATALOGUE}
