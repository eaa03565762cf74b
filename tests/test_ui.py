"""The ranking in the MLflow UI, proven in headless Chromium against a real `mlflow server`.

The ranking view: the experiment's Runs tab, filtered to one dataset's scoring runs (one per model
version), sorted by the ``ccfv`` metric, with the ``ccfv`` and ``finetune_dice`` columns shown (the
fine-tune pipeline logs the measured Dice on the version's score runs). Filter and sort travel in the
URL (a user can bookmark it); the visible columns are the Runs tab's saved UI state (Columns menu),
set here through the page's local storage. The second view is a registered version's page with its
``transferability.*`` and ``finetune.dice.*`` tags. MLflow 3.17's Models tab shows the same metrics
per dataset but cannot sort by them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse

import mlflow
import pytest
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
SHOWN_METRICS = ("ccfv", "finetune_dice", "logme")
UNFOLD_TAGS_JS = """(() => {
  const cell = Array.from(document.querySelectorAll('td,div,span'))
    .find(e => e.children.length === 0 && e.innerText && e.innerText.startsWith('transferability.'));
  for (let el = cell; el && el !== document.body; el = el.parentElement) {
    const style = getComputedStyle(el);
    if (/(auto|scroll)/.test(style.overflowY) || style.maxHeight !== 'none') {
      el.style.maxHeight = 'none'; el.style.height = 'auto'; el.style.overflowY = 'visible';
    }
  }
})()"""


def ranking_url(base: str, experiment_id: str, dataset: str, ascending: bool = False) -> str:
    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.`ccfv.dataset` = '{dataset}' AND tags.`ccfv.stage` = 'score'",
            "orderByKey": "metrics.`ccfv`",
            "orderByAsc": str(ascending).lower(),
        }
    )
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def _open_runs(browser: Chromium, url: str, n_rows: int) -> None:
    browser.goto(url)
    try:
        browser.wait_for(f"({ROWS_JS}).length >= {n_rows}", timeout=30)
    except TimeoutError:  # a fresh profile may open in GenAI mode: switch to "Model training"
        browser.js("""(() => { const el = Array.from(document.querySelectorAll('button,[role=radio],label,span'))
            .find(e => e.innerText && e.innerText.trim() === 'Model training'); if (el) el.click(); })()""")
        time.sleep(1)
        browser.goto(url)
        browser.wait_for(f"({ROWS_JS}).length >= {n_rows}", timeout=60)
    browser.wait_for("document.body.innerText.includes('Sort: ccfv')", timeout=30)


def _show_metric_columns(browser: Chromium, experiment_id: str) -> None:
    """Select the metric columns, as the Columns menu would, in the Runs tab's saved UI state."""
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
    state = json.loads(browser.js(f"localStorage.getItem({json.dumps(key)})") or "{}")
    state["selectedColumns"] = [f"metrics.`{m}`" for m in SHOWN_METRICS]
    browser.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))})")


def _close_popups(browser: Chromium) -> None:
    browser.js("(() => { const b = document.querySelector('button[aria-label=Close]'); if (b) b.click(); })()")
    time.sleep(1.0)


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
            if col.replace("`", "").endswith(f"metrics.{metric}"):
                row[metric] = text
    return [rows[i] for i in sorted(rows)]


def _finetune_bank(remote_bank) -> None:
    """Fine-tune each bank version on the target (a tiny budget): ``finetune.dice.*`` tags, and the
    measured Dice logged on the version's score runs."""
    from mlflow_ccfv.pipelines.finetune import finetune_version
    from mlflow_ccfv.training import TrainConfig

    # a budget for a test: the Dice of these random networks stays near 0, but is measured and distinct
    config = TrainConfig(steps=3, patch_size=(24, 24, 24), learning_rate=3e-3, seed=0)
    for v in remote_bank["versions"]:
        finetune_version(f"models:/{v.name}/{v.version}", remote_bank["target"], config, progress=False, device="cpu")


@pytest.mark.slow
def test_bank_sorted_by_ccfv_beside_the_dice_and_a_versions_tags(remote_bank, tmp_path):
    require_chromium()
    assert remote_bank["score"].returncode == 0, remote_bank["score"].stderr[-3000:]
    # the bank lives on the server; earlier tests in the same process may have pointed mlflow elsewhere
    mlflow.set_tracking_uri(remote_bank["server"].url)
    _finetune_bank(remote_bank)
    server = remote_bank["server"]
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("ccfv-remote")
    tags = {}
    for v in remote_bank["versions"]:
        tags[f"{v.name}/{v.version}"] = client.get_model_version(v.name, v.version).tags
    scores = {k: float(t[f"transferability.ccfv.{TARGET_TASK}"]) for k, t in tags.items()}
    dice = {k: float(t[f"finetune.dice.{TARGET_TASK}"]) for k, t in tags.items()}
    expected = sorted(scores, key=scores.get, reverse=True)

    url = ranking_url(server.url, exp.experiment_id, TARGET_TASK)
    browser = Chromium(tmp_path / "profile", height=900)
    try:
        _open_runs(browser, url, len(expected))
        _show_metric_columns(browser, exp.experiment_id)
        browser.goto("about:blank")
        _open_runs(browser, url, len(expected))
        browser.wait_for("document.body.innerText.includes('finetune_dice')", timeout=30)
        _close_popups(browser)
        table = _table(browser)
        page_text = browser.js("document.body.innerText")
        shot = browser.screenshot(tmp_path / "ui_sorted_by_ccfv.png")
        # The opposite direction reverses the rows: the order comes from the metric, not creation time.
        browser.goto("about:blank")
        browser.goto(ranking_url(server.url, exp.experiment_id, TARGET_TASK, ascending=True))
        browser.wait_for("document.body.innerText.includes('Sort: ccfv')", timeout=60)
        browser.wait_for(f"({ROWS_JS}).length >= {len(expected)}", timeout=60)
        time.sleep(1.0)
        reversed_on_page = browser.js(ROWS_JS)

        best = expected[0]
        name, version = best.split("/")
        browser.goto("about:blank")
        browser.goto(f"{server.url}/#/models/{name}/versions/{version}")
        browser.wait_for(f"document.body.innerText.includes('finetune.dice.{TARGET_TASK}')", timeout=60)
        _close_popups(browser)
        # one screen for every tag: a taller viewport, and the tag table's own scroll box unfolded
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1500, "height": 1250, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        browser.js(UNFOLD_TAGS_JS)
        time.sleep(1.0)
        version_text = browser.js("document.body.innerText")
        version_shot = browser.screenshot(tmp_path / "ui_version_tags.png")
    finally:
        browser.close()

    assert [row.get("model") for row in table] == expected, (table, scores)
    for row in table:  # the values are visible, next to their model, as stored
        shown_ccfv, shown_dice = float(row["ccfv"]), float(row["finetune_dice"])
        assert shown_ccfv == pytest.approx(scores[row["model"]], rel=1e-3, abs=1e-3), row
        assert shown_dice == pytest.approx(dice[row["model"]], rel=1e-3, abs=1e-3), row
    assert [float(row["ccfv"]) for row in table] == sorted((float(row["ccfv"]) for row in table), reverse=True)
    assert "finetune_dice" in page_text and "ccfv" in page_text
    assert reversed_on_page == expected[::-1], (reversed_on_page, scores)
    for key in (
        f"transferability.ccfv.{TARGET_TASK}",
        f"transferability.rank.{TARGET_TASK}",
        f"finetune.dice.{TARGET_TASK}",
    ):
        assert key in version_text and tags[best][key] in version_text, key
    for png in (shot, version_shot):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MLFLOW_CCFV_UPDATE_DOCS"):  # refresh the README's screenshots
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "img" / "ui_sorted_by_ccfv.png")
        shutil.copy(version_shot, REPO / "docs" / "img" / "ui_version_tags.png")


def test_without_chromium_the_browser_test_skips_except_in_ci(monkeypatch):
    import mlflow_server

    monkeypatch.setattr(mlflow_server, "find_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium installed.*apt install chromium"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test"):
        require_chromium()
