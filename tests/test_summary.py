"""A version's description summary (tracking/summary.py): what it says, and that it follows the tags
written by score (write_version_scores, rerank) and by hand-written notes, under concurrent writers."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.tracking.ranking_writes import rerank, write_version_scores
from mlflow_ccfv.tracking.summary import (
    SUMMARY_HEADING,
    refresh_version_summary,
    version_description,
    version_summary,
)

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import register_tiny_bank  # noqa: E402

TAGS = {
    T.score_tag("ccfv", "Task07"): "-0.125",
    T.score_tag("ccfv_twin", "Task07"): "0.0512",
    T.score_tag("logme", "Task07"): "1.5",
    T.ranked_by_tag("Task07"): "logme",
    T.rank_tag("Task07"): "2",
    T.scored_tag("Task07"): "default/abc",
    T.dice_tag("Task07"): "0.812345",
    T.dice_sd_tag("Task07"): "0.0101",
    T.finetune_seeds_tag("Task07"): "0,1,2",
    T.dice_tag("Task04"): "0.5",
    T.ARCHITECTURE: "UNet",
}


def test_summary_rows_say_rank_ccfv_ranking_score_and_dice_per_dataset():
    text = version_summary(TAGS)
    lines = text.splitlines()
    assert lines[0] == SUMMARY_HEADING
    assert "| Task07 | 2 | -0.1250 | 1.5000 (logme) | 0.8123 ± 0.0101 (3 seeds) |" in lines  # what it ranks by
    by_twin = {**TAGS, T.ranked_by_tag("Task07"): "ccfv_twin"}
    assert "| Task07 | 2 | -0.1250 | 0.0512 (ccfv_twin) | 0.8123 ± 0.0101 (3 seeds) |" in version_summary(by_twin)
    assert "| Task04 | – | – | – | 0.5000 |" in lines  # fine-tuned, never scored
    without_twin = {k: v for k, v in TAGS.items() if "ccfv_twin" not in k and "logme" not in k and "ranked_by" not in k}
    assert "| Task07 | 2 | -0.1250 | -0.1250 (ccfv) |" in version_summary(without_twin)
    assert version_summary({T.ARCHITECTURE: "UNet"}) == ""


def test_description_keeps_the_users_text_above_the_heading_and_regenerates_below():
    first = version_description("Trained by Ana on 3 sites.", TAGS)
    assert first.startswith("Trained by Ana on 3 sites.\n\n" + SUMMARY_HEADING)
    changed = {**TAGS, T.rank_tag("Task07"): "1"}
    second = version_description(first, changed)
    assert second.startswith("Trained by Ana on 3 sites.\n\n" + SUMMARY_HEADING)
    assert "| Task07 | 1 |" in second and "| Task07 | 2 |" not in second
    assert second.count(SUMMARY_HEADING) == 1
    assert version_description(second, changed) == second  # idempotent: nothing to write
    assert version_description(second, {}) == "Trained by Ana on 3 sites."  # tags gone: the summary too
    assert version_description(None, TAGS) == version_summary(TAGS)


def test_score_tags_and_ranks_rewrite_the_descriptions(tracking_uri):
    a, b = register_tiny_bank("sum", seeds=(0, 1))
    client = MlflowClient()
    client.update_model_version(a.name, a.version, description="Hand-written note.")
    write_version_scores(a.name, a.version, "Task07", {"ccfv": 0.5}, data_digest="d1")
    desc = client.get_model_version(a.name, a.version).description
    assert desc.startswith("Hand-written note.\n\n" + SUMMARY_HEADING) and "| Task07 | – | 0.5000 |" in desc

    write_version_scores(b.name, b.version, "Task07", {"ccfv": 0.9}, data_digest="d1")
    ranking = rerank("Task07", data_digest="d1", method="ccfv", bank="sum")
    assert [r[:2] for r in ranking.ranked] == [(b.name, str(b.version)), (a.name, str(a.version))]
    desc_a = client.get_model_version(a.name, a.version).description
    desc_b = client.get_model_version(b.name, b.version).description
    assert desc_a.startswith("Hand-written note.") and "| Task07 | 2 | 0.5000 | 0.5000 (ccfv) |" in desc_a
    assert "| Task07 | 1 | 0.9000 | 0.9000 (ccfv) |" in desc_b

    # a rescoring that changes the order rewrites both rows; the user's note survives
    write_version_scores(a.name, a.version, "Task07", {"ccfv": 1.5}, data_digest="d1")
    rerank("Task07", data_digest="d1", method="ccfv", bank="sum")
    assert "| Task07 | 1 | 1.5000 |" in client.get_model_version(a.name, a.version).description
    assert "| Task07 | 2 | 0.9000 |" in client.get_model_version(b.name, b.version).description
    assert client.get_model_version(a.name, a.version).description.startswith("Hand-written note.")


def test_concurrent_writers_leave_a_description_that_matches_every_tag(tracking_uri):
    (mv,) = register_tiny_bank("race", seeds=(2,))
    client = MlflowClient()
    datasets = [f"Task{i:02d}" for i in range(1, 7)]
    errors: list[BaseException] = []

    def writer(dataset: str, value: float) -> None:
        try:  # what finetune does: its tags, then the refresh
            client.set_model_version_tag(mv.name, mv.version, T.dice_tag(dataset), f"{value:.6f}")
            refresh_version_summary(mv.name, mv.version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(d, 0.1 * i)) for i, d in enumerate(datasets, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    final = client.get_model_version(mv.name, mv.version)
    assert final.description == version_description(None, final.tags)
    for i, dataset in enumerate(datasets, 1):
        assert f"| {dataset} | – | – | – | {0.1 * i:.4f} |" in final.description
