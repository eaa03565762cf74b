"""Ranking in the MLflow UI, proven in headless Chromium against a real `mlflow server`.

The ranking view: the experiment's Runs tab filtered to one dataset's scoring runs and sorted by the
``ccfv`` metric (MLflow 3.17's OSS Models tab shows the per-dataset metric columns but has metric
sorting switched off). The URL encodes filter and sort, so a user can bookmark it.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse

import pytest
from mlflow import MlflowClient

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import REPO, TARGET_TASK, Chromium  # noqa: E402

ROWS_JS = (
    "Array.from(document.querySelectorAll('[role=row]')).map(r => r.innerText)"
    ".map(t => (t.match(/(\\S+\\/\\d+) on " + TARGET_TASK + "/) || [])[1]).filter(Boolean)"
)


def ranking_url(base: str, experiment_id: str, dataset: str, ascending: bool = False) -> str:
    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.`ccfv.dataset` = '{dataset}'",
            "orderByKey": "metrics.`ccfv`",
            "orderByAsc": str(ascending).lower(),
        }
    )
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def test_runs_sorted_by_ccfv_in_headless_chromium(remote_bank, tmp_path):
    assert remote_bank["score"].returncode == 0, remote_bank["score"].stderr[-3000:]
    server = remote_bank["server"]
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("ccfv-remote")
    scores = {}
    for v in remote_bank["versions"]:
        tags = client.get_model_version(v.name, v.version).tags
        scores[f"{v.name}/{v.version}"] = float(tags[f"transferability.ccfv.{TARGET_TASK}"])
    expected = sorted(scores, key=scores.get, reverse=True)

    url = ranking_url(server.url, exp.experiment_id, TARGET_TASK)
    browser = Chromium(tmp_path / "profile")
    try:
        browser.goto(url)
        try:
            browser.wait_for(f"({ROWS_JS}).length >= {len(expected)}", timeout=30)
        except TimeoutError:  # a fresh profile may open in GenAI mode: switch to "Model training"
            browser.js("""(() => { const el = Array.from(document.querySelectorAll('button,[role=radio],label,span'))
                .find(e => e.innerText && e.innerText.trim() === 'Model training'); if (el) el.click(); })()""")
            time.sleep(1)
            browser.goto(url)
            browser.wait_for(f"({ROWS_JS}).length >= {len(expected)}", timeout=60)
        browser.wait_for("document.body.innerText.includes('Sort: ccfv')", timeout=30)
        browser.js("(() => { const b = document.querySelector('button[aria-label=Close]'); if (b) b.click(); })()")
        time.sleep(1.0)
        on_page = browser.js(ROWS_JS)
        shot = browser.screenshot(tmp_path / "ui_sorted_by_ccfv.png")
        # The opposite direction reverses the rows: the order comes from the metric, not creation time.
        browser.goto("about:blank")
        browser.goto(ranking_url(server.url, exp.experiment_id, TARGET_TASK, ascending=True))
        browser.wait_for("document.body.innerText.includes('Sort: ccfv')", timeout=60)
        browser.wait_for(f"({ROWS_JS}).length >= {len(expected)}", timeout=60)
        time.sleep(1.0)
        reversed_on_page = browser.js(ROWS_JS)
    finally:
        browser.close()
    assert on_page == expected, (on_page, scores)
    assert reversed_on_page == expected[::-1], (reversed_on_page, scores)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MLFLOW_CCFV_UPDATE_DOCS"):  # refresh the README's screenshot
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "img" / "ui_sorted_by_ccfv.png")
