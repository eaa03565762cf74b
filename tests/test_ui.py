"""The ranking in the MLflow UI as a first-time user sees it, proven in headless Chromium against a
real `mlflow server`.

The view: the link `score` logs (``tracking/views.py``: the experiment's shared Runs-tab view of one
dataset, opened in the "Model training" UI): one row per scored version, sorted by the ranking score
``ccfv_twin``, with ``ccfv``, ``ccfv_twin`` and ``finetune_dice`` on screen. The browser starts with
an empty profile; the test sets no local storage, rewrites no CSS and clicks nothing. The second page
is a registered version, whose description opens with the summary of its scores and fine-tune Dice.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import urllib.parse

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import REPO, TARGET_TASK, Chromium, require_chromium  # noqa: E402

ROWS_JS = (
    "Array.from(document.querySelectorAll('[role=row]')).map(r => r.innerText)"
    ".map(t => (t.match(/(\\S+\\/\\d+) on " + TARGET_TASK + "/) || [])[1]).filter(Boolean)"
)
#: Every grid cell as [row index, column id, text] (the pinned name column and the metric columns
#: live in different row elements with the same row index).
CELLS_JS = (
    "Array.from(document.querySelectorAll('[role=gridcell][col-id]')).map(c => "
    "[(c.closest('[row-index]') || {getAttribute: () => null}).getAttribute('row-index'), "
    "c.getAttribute('col-id'), c.innerText.trim()])"
)
#: Whether a cell's right edge is inside the window: on screen, not behind a horizontal scroll.
VISIBLE_COLUMNS_JS = (
    "Array.from(document.querySelectorAll('[role=columnheader][col-id]'))"
    ".filter(h => h.getBoundingClientRect().right <= window.innerWidth && h.getBoundingClientRect().width > 0)"
    ".map(h => h.getAttribute('col-id'))"
)
SHOWN_METRICS = ("ccfv", "ccfv_twin", "finetune_dice")


def _table(browser: Chromium) -> list[dict[str, str]]:
    """The grid's rows in display order: ``{"model": "name/version", "<metric>": "<shown text>"}``."""
    rows: dict[int, dict[str, str]] = {}
    for index, col, text in browser.js(CELLS_JS):
        if index is None:
            continue
        row = rows.setdefault(int(index), {})
        match = re.search(r"(\S+/\d+) on " + TARGET_TASK, text)
        if match:
            row["model"] = match.group(1)
        for metric in SHOWN_METRICS:
            if col.replace("`", "") == f"metrics.{metric}":
                row[metric] = text
    return [rows[i] for i in sorted(rows)]


def _finetune_bank(remote_bank) -> None:
    """Fine-tune each bank version on the target (a tiny budget): ``finetune.dice.*`` tags, the
    version's description, and the measured Dice logged on the version's score runs."""
    from mlflow_ccfv.pipelines.finetune import finetune_version
    from mlflow_ccfv.pipelines.finetune_setup import FinetuneRequest
    from mlflow_ccfv.training import TrainConfig

    # a budget for a test: the Dice of these random networks stays near 0, but is measured and distinct
    config = TrainConfig(steps=3, patch_size=(24, 24, 24), learning_rate=3e-3, seed=0)
    for v in remote_bank["versions"]:
        finetune_version(
            FinetuneRequest(
                f"models:/{v.name}/{v.version}", remote_bank["target"], config, progress=False, device="cpu"
            )
        )


def _score_with_twin(remote_bank, monkeypatch, caplog) -> str:
    """`score` the bank again ranked by ``ccfv_twin`` (its random-init twin registered and scored); returns
    the UI link it logged."""
    from mlflow_ccfv.cli import main

    work = remote_bank["work"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", remote_bank["server"].url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ccfv-remote")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    args = ["score", "--dataset", TARGET_TASK, "--data-root", str(work / "data"), "--bank", "ui"]
    args += ["--methods", "ccfv,logme", "--cache-dir", str(work / "cache"), "--rank-by", "ccfv_twin"]
    with caplog.at_level(logging.INFO, logger="mlflow_ccfv.pipelines.score"):
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    links = [r.getMessage().rpartition(": ")[2] for r in caplog.records if "ranking in the MLflow UI" in r.getMessage()]
    assert len(links) == 1, caplog.text
    return links[0]


@pytest.mark.slow
def test_first_visit_shows_each_versions_scores_and_dice_and_the_version_summary(
    remote_bank, tmp_path, monkeypatch, caplog
):
    require_chromium()
    assert remote_bank["score"].returncode == 0, remote_bank["score"].stderr[-3000:]
    server = remote_bank["server"]
    # the bank lives on the server; earlier tests in the same process may have pointed mlflow elsewhere
    mlflow.set_tracking_uri(server.url)
    link = _score_with_twin(remote_bank, monkeypatch, caplog)
    _finetune_bank(remote_bank)
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("ccfv-remote")
    assert link == (
        f"{server.url}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=ccfv-{TARGET_TASK}"
        "&workflowType=machine_learning"
    )
    twin_key = f"transferability.ccfv_twin.{TARGET_TASK}"
    tags = {
        f"{mv.name}/{mv.version}": mv.tags
        for mv in client.search_model_versions("tags.`ccfv.bank` = 'ui'")
        if twin_key in mv.tags
    }
    bank = [f"{v.name}/{v.version}" for v in remote_bank["versions"]]
    assert set(bank) < set(tags)  # the bank and its random-init twin (a control: scored, never ranked)
    expected = sorted(tags, key=lambda k: -float(tags[k][twin_key]))

    browser = Chromium(tmp_path / "profile", height=900)  # an empty profile: a first-time user
    try:
        browser.goto(link)
        browser.wait_for(f"({ROWS_JS}).length >= {len(expected)}", timeout=60)
        browser.wait_for("document.body.innerText.includes('finetune_dice')", timeout=30)
        time.sleep(1.0)
        table = _table(browser)
        on_screen = browser.js(VISIBLE_COLUMNS_JS)
        page_text = browser.js("document.body.innerText")
        shot = browser.screenshot(tmp_path / "ui_sorted_by_ccfv.png")
        # The opposite direction (the filter and sort as URL parameters) reverses the rows: the order
        # comes from the metric, not from creation time.
        query = urllib.parse.urlencode(
            {
                "searchFilter": f"tags.`ccfv.dataset` = '{TARGET_TASK}' AND tags.`ccfv.stage` = 'score'",
                "orderByKey": "metrics.`ccfv_twin`",
                "orderByAsc": "true",
                "workflowType": "machine_learning",
            }
        )
        browser.goto("about:blank")
        browser.goto(f"{server.url}/#/experiments/{exp.experiment_id}/runs?{query}")
        browser.wait_for("document.body.innerText.includes('Sort: ccfv_twin')", timeout=60)
        browser.wait_for(f"({ROWS_JS}).length >= {len(expected)}", timeout=60)
        time.sleep(1.0)
        reversed_on_page = browser.js(ROWS_JS)

        best = next(k for k in expected if k in bank)  # the top pre-trained version (controls are not ranked)
        name, version = best.split("/")
        browser.goto("about:blank")
        browser.goto(f"{server.url}/#/models/{name}/versions/{version}")
        browser.wait_for("document.body.innerText.includes('Transferability (mlflow-ccfv)')", timeout=60)
        time.sleep(1.0)
        version_text = browser.js("document.body.innerText")
        version_shot = browser.screenshot(tmp_path / "ui_version_summary.png")
    finally:
        browser.close()

    # the "Model training" side of the UI: its navigation (runs, models, registry), not the GenAI one
    assert "Model registry" in page_text and "Evaluation runs" not in page_text and "Sessions" not in page_text
    # every scored version once, in ranking-score order (ties, e.g. the twin and the seed-0 network that
    # has its weights, in either order), the shown values those of the version's tags
    assert sorted(row.get("model") for row in table) == sorted(expected), (table, tags)
    shown_twin = [float(row["ccfv_twin"]) for row in table]
    assert shown_twin == sorted(shown_twin, reverse=True), table
    for metric in SHOWN_METRICS:  # the three columns are on screen, no Columns menu, no scrolling
        assert f"metrics.`{metric}`" in on_screen, on_screen
    for row in table:  # the values are visible, next to their model, as stored
        stored = tags[row["model"]]
        assert float(row["ccfv"]) == pytest.approx(float(stored[f"transferability.ccfv.{TARGET_TASK}"]), abs=1e-3)
        assert float(row["ccfv_twin"]) == pytest.approx(float(stored[twin_key]), abs=1e-3)
        if row["model"] in bank:
            assert float(row["finetune_dice"]) == pytest.approx(float(stored[f"finetune.dice.{TARGET_TASK}"]), abs=1e-3)
    assert "Sort: ccfv_twin" in page_text
    ascending = [float(tags[m][twin_key]) for m in reversed_on_page]
    assert sorted(reversed_on_page) == sorted(expected) and ascending == sorted(ascending), reversed_on_page

    final = client.get_model_version(name, version).tags
    row = next(line for line in version_text.splitlines() if line.startswith(TARGET_TASK))
    cells = [c.strip() for c in row.split("\t")]
    assert cells[:3] == [
        TARGET_TASK,
        final[f"transferability.rank.{TARGET_TASK}"],
        f"{float(final[f'transferability.ccfv.{TARGET_TASK}']):.4f}",
    ]
    assert cells[3] == f"{float(final[twin_key]):.4f} (ccfv_twin)"
    assert cells[4] == f"{float(final[f'finetune.dice.{TARGET_TASK}']):.4f}"
    for png in (shot, version_shot):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MLFLOW_CCFV_UPDATE_DOCS"):  # refresh the README's screenshots from these pages
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "img" / "ui_sorted_by_ccfv.png")
        shutil.copy(version_shot, REPO / "docs" / "img" / "ui_version_summary.png")


def test_without_chromium_the_browser_test_skips_except_in_ci(monkeypatch):
    import mlflow_server

    monkeypatch.setattr(mlflow_server, "find_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium installed.*apt install chromium"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test"):
        require_chromium()
