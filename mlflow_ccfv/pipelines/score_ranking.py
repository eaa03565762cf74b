"""The ranking a ``score`` writes at the end: the order of the scored versions, the ranked table, its
artifacts and the warnings it calls for.

The ranks themselves are recomputed from the registry (:func:`~mlflow_ccfv.tracking.rerank`,
bank by bank) by :func:`~mlflow_ccfv.pipelines.score.score_versions`; this module turns the banks'
rankings (or, without logging, the batch's own order) into the table the command prints and logs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.pipelines.score_task import VersionResult
from mlflow_ccfv.scoring.ranking import (
    AUTO_RANK,
    CONTROL_SOURCE,
    DEFAULT_RANKING,
    Member,
    RankOrder,
    is_twin,
    rank_members,
)
from mlflow_ccfv.study.ranking import rank_table, ranking_plot, table_markdown
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.ranking_writes import Ranking
from mlflow_ccfv.tracking.search import DEFAULT_BANK, registered_version
from mlflow_ccfv.tracking.tag_values import with_stored_digits

__all__ = [
    "log_ranking_artifacts",
    "log_ranking_metric",
    "merged_order",
    "ranked_table",
    "shown_methods",
    "version_banks",
    "warn_ranking",
]

_logger = logging.getLogger(__name__)


def _members(rows: list[dict[str, Any]]) -> list[Member]:
    """The scored ``rows`` as ranking members (failed and skipped rows left out)."""
    known = set(METHODS)
    return [
        Member(
            str(r["model"]).removeprefix("models:/"),
            r.get("network"),
            r.get("source_dataset"),
            {k: float(v) for k, v in r.items() if k in known and v is not None},
        )
        for r in rows
        if not r.get("error") and r.get("ccfv") is not None
    ]


def version_banks(versions_or_uris: Iterable, results: list[VersionResult]) -> list[str]:
    """The banks of the scored versions (ranks are written within each), also of those that failed
    before their tags were read (from the given ``ModelVersion`` or, for a URI, the registry)."""
    banks = {r.tags[T.BANK] for r in results if r.tags.get(T.BANK)}
    for item, r in zip(versions_or_uris, results):
        if r.tags.get(T.BANK):
            continue
        tags = getattr(item, "tags", None)
        if tags is None and r.name and r.version:
            try:
                tags = registered_version(f"models:/{r.name}/{r.version}").tags
            except Exception:  # not in the registry (any more): nothing of its to re-rank
                tags = None
        banks.add((tags or {}).get(T.BANK, DEFAULT_BANK))
    return sorted(banks)


def merged_order(rankings: list[Ranking], rank_by: str, rows: list[dict[str, Any]]) -> RankOrder:
    """One :class:`RankOrder` over the banks' rankings (one bank: its own); without any, the batch's."""
    orders = [r.order for r in rankings if r.order is not None]
    if not orders:
        return rank_members(_members(rows), rank_by)
    if len(orders) == 1:
        return orders[0]
    return RankOrder(
        orders[0].method if len({o.method for o in orders}) == 1 else "per bank",
        [p for o in orders for p in o.ranked],
        [p for o in orders for p in o.controls],
        [m for o in orders for m in o.without_twin],
        [m for o in orders for m in o.control_above],
    )


def shown_methods(methods: Sequence[str], chosen: str) -> list[str]:
    """The table's score columns: the ranking's column first, then the estimators."""
    return list(dict.fromkeys([chosen, *methods]))


def ranked_table(
    rows: list[dict[str, Any]],
    methods: Sequence[str],
    dataset_name: str,
    order: RankOrder,
    stored: list[Ranking] | None = None,
) -> pd.DataFrame:
    """``rows`` as the ranked table: the ranking score of each (``ccfv_twin`` from the registry's group when
    ranked by it) and its rank as stored (``stored``: the registry's ranks, which may have gaps when a
    subset was scored; else the batch's order). Controls have no rank and follow the candidates. The
    table's ``attrs["ranked_by"]`` names the ranking (what the command line prints first)."""
    values = {m.model: v for m, v in [*order.ranked, *order.controls]}
    if stored is not None:
        ranks = {f"{n}/{v}": i for r in stored for i, (n, v, _) in enumerate(r.ranked, 1)}
    else:
        ranks = {m.model: i for i, (m, _) in enumerate(order.ranked, 1)}
    out = []
    for r in rows:
        key = str(r["model"]).removeprefix("models:/")
        extra = {order.method: values.get(key, float("nan"))} if order.method not in METHODS else {}
        out.append({**r, **extra})
    table = rank_table(out, shown_methods(methods, order.method), dataset_name, ranks=ranks)
    table.attrs["ranked_by"] = order.method
    return table


def warn_ranking(requested: str, order: RankOrder) -> None:
    """Say when ``auto`` fell back from a twin-calibrated default to its estimator, when a twin ranking
    leaves versions unranked, and when a random-init control beats every pre-trained model."""
    if order.without_twin and (requested == AUTO_RANK or is_twin(order.method)):
        _logger.warning(
            "%s: no random-init twin of the same network (constructor arguments and patch size) scored on this "
            "target for %s. Score again without --add-twins false (it registers one per network, no "
            "training) or register one yourself (mlflow-ccfv register --name <arch>-random-init "
            "--source-dataset %s --spec <the model's spec> --random-init true --bank <bank>)",
            f"ranked by {order.method}, not {DEFAULT_RANKING}"
            if not is_twin(order.method)
            else f"{order.method} ranks last",
            ", ".join(order.without_twin),
            CONTROL_SOURCE,
        )
    if (text := order.warning()) is not None:
        _logger.warning("%s", text)


def log_ranking_metric(results: list[VersionResult], table: pd.DataFrame, method: str) -> None:
    """Log each scored version's ranking score ``method`` (e.g. ``ccfv_twin``, from ``table``) on its run."""
    values = dict(zip(table["model"], table[method]))
    client = mlflow.MlflowClient()
    for r in results:
        value = values.get(r.label)
        if r.run_id and value is not None and value == value:
            try:
                client.log_metric(r.run_id, method, float(value))
            except MlflowException as exc:  # a concurrent scorer's run of the same key replaced this one
                _logger.info("%s: run %s is gone (%s); its replacement logs its own", r.label, r.run_id, exc)


def log_ranking_artifacts(table: pd.DataFrame, dataset_name: str, shown: list[str], folder: Path | None) -> str:
    """The ranked table (CSV: the scores unrounded; Markdown: as stored in the tags) and plot (PNG) as
    ``ranking/`` artifacts of the active run, written in ``folder`` (None: a temporary one); returns the
    Markdown table."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"ranking_{dataset_name}"
        table.to_csv(folder / f"{stem}.csv", index=False)
        note = table_markdown(with_stored_digits(table, shown), shown)  # as `score` prints it
        (folder / f"{stem}.md").write_text(note)
        ranking_plot(table, folder / f"{stem}.png", method=table.attrs["ranked_by"])
        for suffix in ("csv", "md", "png"):
            mlflow.log_artifact(str(folder / f"{stem}.{suffix}"), artifact_path="ranking")
    return note
