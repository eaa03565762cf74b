"""The ranking as the MLflow UI opens it: a shared Runs-tab view with the scores already on screen.

MLflow 3.17.2's Runs tab shows a metric column only when it is in the view's ``selectedColumns``
(the **Columns** menu; a first visit selects none), and that choice lives in the browser's local
storage, except for a *shared view*: the experiment tag ``mlflow.sharedViewState.<key>`` holds the
view (filter, sort, visible columns) as JSON, and ``#/experiments/<id>/runs?viewStateShareKey=<key>``
opens it in any browser. :func:`save_ranking_view` writes one such view per dataset (the version
runs of ``score`` and of the ``ccfv`` evaluator, sorted by the ranking score, with ``ccfv``, the
ranking score and ``finetune_dice`` shown); :func:`ranking_view_url` is its link. ``workflowType=
machine_learning`` in the link opens the "Model training" side of the UI (the UI's default for a
browser that never chose is the GenAI side; the experiment's ``mlflow.experimentKind`` tag does not
change that in 3.17.2).
"""

from __future__ import annotations

import json

import mlflow

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.tracking.retry import retrying

__all__ = ["DEFAULT_UI", "ranking_view_state", "ranking_view_url", "save_ranking_view", "ui_base"]

#: Where ``mlflow ui`` serves by default: the link's base when the tracking URI is not a server.
DEFAULT_UI = "http://127.0.0.1:5000"


def ranking_view_state(dataset: str, ranked_by: str) -> dict:
    """The shared view of ``dataset``'s ranking: its version runs (tags ``ccfv.stage=score`` and
    ``ccfv.dataset=<dataset>``), sorted by ``ranked_by`` descending, with the ranking score, ``ccfv``
    and ``finetune_dice`` as visible columns."""
    shown = list(dict.fromkeys([ranked_by, "ccfv", T.FINETUNE_DICE]))
    return {
        "searchFilter": f"tags.`{T.RUN_DATASET}` = '{dataset}' AND tags.`{T.RUN_STAGE}` = 'score'",
        "orderByKey": f"metrics.`{ranked_by}`",
        "orderByAsc": False,
        "selectedColumns": [f"metrics.`{m}`" for m in shown],
    }


def save_ranking_view(experiment_id: str, dataset: str, ranked_by: str) -> str:
    """Store :func:`ranking_view_state` on the experiment (tag ``mlflow.sharedViewState.ccfv-<dataset>``,
    replaced by each ``score`` of the dataset); returns the share key."""
    key = T.ranking_view_key(dataset)
    value = json.dumps(ranking_view_state(dataset, ranked_by))
    retrying(mlflow.MlflowClient().set_experiment_tag, experiment_id, T.shared_view_tag(key), value, what=f"view {key}")
    return key


def ui_base(tracking_uri: str | None = None) -> str:
    """The UI's address: the tracking URI when it is an ``http(s)://`` server, else :data:`DEFAULT_UI`."""
    uri = tracking_uri if tracking_uri is not None else mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI


def ranking_view_url(experiment_id: str, dataset: str, base: str | None = None) -> str:
    """The link that opens :func:`save_ranking_view`'s view of ``dataset`` in the "Model training" UI."""
    key = T.ranking_view_key(dataset)
    return (
        f"{base or ui_base()}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}&workflowType=machine_learning"
    )
