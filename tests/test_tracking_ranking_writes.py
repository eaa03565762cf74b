"""Ranks and the `best-<dataset>` alias come from the registry, not from the scored batch: subsets and
second banks, sampler settings kept apart, stale tags of failed scorings removed, every search page read."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

import mlflow_ccfv.tracking.ranking_writes as ranking_writes
from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
from mlflow_ccfv.tracking.ranking_writes import rerank

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server", "reliability")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402
from reliability import assert_one_ranking, ranking_state  # noqa: E402


@pytest.mark.slow
def test_ranks_cover_every_scored_version_whatever_the_batch(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setattr(ranking_writes, "_PAGE", 2)  # every registry search spans several pages
    target = make_target(MSDDataset.load(make_target_folder(tmp_path / "data")))
    a = register_tiny_bank("bank-a", seeds=(0, 1, 2), prefix="a")
    b = register_tiny_bank("bank-b", seeds=(3, 4), prefix="b")
    client = MlflowClient()
    cache = tmp_path / "cache"

    def score(versions, **kw):
        return score_versions(versions, target, ScoreConfig(["ccfv"], cache_dir=cache, **kw))

    in_a, in_b = {f"{v.name}/1" for v in a}, {f"{v.name}/1" for v in b}
    score(a)
    score(b)  # a second bank on the same dataset: ranked within itself (a bank is a candidate set)
    table = score([a[0]])  # a subset: the table prints the ranks it stored, within the whole bank
    state_a = assert_one_ranking(client, TARGET_TASK, in_a, bank="bank-a")
    assert_one_ranking(client, TARGET_TASK, in_b, bank="bank-b")
    assert list(table["rank"]) == [state_a["ranks"][f"{a[0].name}/1"]]
    assert rerank(TARGET_TASK, bank="bank-a").rounds == 1  # already consistent: nothing to write
    assert rerank(TARGET_TASK, bank="bank-b").rounds == 1

    # Non-default sampler settings are tagged and ranked apart from the default ones.
    score([b[0]], sampler={"global_samples": 64})
    tags = client.get_model_version(b[0].name, "1").tags
    assert tags[f"transferability.sampler.{TARGET_TASK}"] not in ("", "default")
    assert_one_ranking(client, TARGET_TASK, {f"{b[0].name}/1"}, bank="bank-b")
    others = client.get_model_version(b[1].name, "1").tags
    assert others[f"transferability.sampler.{TARGET_TASK}"] == "default"  # their scores stay, unranked
    assert f"transferability.rank.{TARGET_TASK}" not in others
    assert_one_ranking(client, TARGET_TASK, in_a, bank="bank-a")  # another bank: untouched
    score([b[1]])  # a default-settings scoring ranks the default group again
    assert_one_ranking(client, TARGET_TASK, in_b - {f"{b[0].name}/1"}, bank="bank-b")

    # A version whose latest scoring failed loses its stale tags and leaves the ranking.
    best = min(state_a["ranks"], key=state_a["ranks"].get)
    name = best.split("/")[0]
    client.set_model_version_tag(name, "1", "feature_layers", "model.9.nothing")
    table = score([client.get_model_version(name, "1")])
    assert table["error"].notna().all()
    assert not [k for k in client.get_model_version(name, "1").tags if k.startswith("transferability.")]
    after = assert_one_ranking(client, TARGET_TASK, in_a - {best}, bank="bank-a")
    assert after["alias"][0][0] != name
    assert set(ranking_state(client, TARGET_TASK, "bank-a")["scores"]) == in_a - {best}
