"""The team deployment: `mlflow server` on PostgreSQL with served artifacts, and every entry point
against it (register -> log-dataset -> score -> finetune -> report, and the ccfv evaluator), the target
read back from the server in a working folder that holds no copy of the data."""

from __future__ import annotations

import os
import shutil

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ccfv.cli import main
from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING
from mlflow_ccfv.tracking import tags as T

pytest_plugins = ["mlflow_server", "postgres_server"]
pytest.register_assert_rewrite("mlflow_server", "postgres_server")
from mlflow_server import TARGET_TASK, make_target_folder  # noqa: E402


def _ok(result):
    assert result.exit_code == 0, result.output + (repr(result.exception) if result.exception else "")
    return result.output


@pytest.mark.slow
def test_every_entry_point_against_the_postgres_backed_server(on_server, tmp_path, monkeypatch, one_torch_thread):
    server = on_server
    client = MlflowClient()
    assert client._tracking_client.store.__class__.__name__ == "RestStore"
    runner = CliRunner()
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ccfv-team")
    mlflow.set_experiment("ccfv-team")

    # register: three random-init UNets in the bank "team"
    for seed in (0, 1, 2):
        _ok(
            runner.invoke(
                main,
                ["register", "--name", f"team-unet-{seed}", "--source-dataset", "none", "--small-spec", "UNet:1:3"]
                + ["--random-init", "true", "--seed", str(seed), "--bank", "team"],
            )
        )
    # log-dataset: the target goes to the server's artifact store; the local copy is then removed
    folder = make_target_folder(tmp_path / "data")
    uri = _ok(runner.invoke(main, ["log-dataset", "--dataset", str(folder)])).strip().rsplit(" ", 1)[-1]
    shutil.rmtree(tmp_path / "data")
    run_id = uri.split("/")[1]
    stored = server.root / "artifacts"
    assert any(p.name == "dataset.json" for p in stored.rglob("dataset.json"))  # served artifacts, on the server
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")

    work = tmp_path / "teammate"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_CCFV_CACHE", str(work / "cache"))
    # score: from the reference
    out = _ok(runner.invoke(main, ["score", "--dataset", uri, "--bank", "team", "--methods", "ccfv,logme"]))
    assert {f"team-unet-{s}/1" for s in (0, 1, 2)} <= set(out.replace("|", " ").split())
    versions = [client.get_model_version(f"team-unet-{s}", "1") for s in (0, 1, 2)]
    # the default ranking registered the UNet's twin in the bank "team" (one per network and bank; other
    # tests sharing the session's server register theirs, so its version number is not known)
    (twin,) = [
        client.get_model_version(v.name, v.version)
        for v in client.search_model_versions("name = 'unet-random-init'")
        if v.tags.get(T.BANK) == "team" and v.tags.get(T.NETWORK) == versions[0].tags[T.NETWORK]
    ]
    assert twin.tags[T.SOURCE_DATASET] == "random-init" and twin.tags[T.BANK] == "team"
    ranks = {v.name: int(v.tags[T.rank_tag(TARGET_TASK)]) for v in versions}
    assert sorted(ranks.values()) == [1, 2, 3] and T.rank_tag(TARGET_TASK) not in twin.tags  # a control: unranked
    best = min(ranks, key=ranks.get)
    assert client.get_model_version_by_alias(best, T.best_alias(TARGET_TASK)).version == "1"
    exp = client.get_experiment_by_name("ccfv-team")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`{T.RUN_DATASET}` = '{TARGET_TASK}'")
    assert len([r for r in children if "mlflow.parentRunId" in r.data.tags]) == 4
    ranked_by = [r.data.tags.get(T.RUN_RANKED_BY) for r in client.search_runs([exp.experiment_id])]
    assert DEFAULT_RANKING in ranked_by and "ccfv" not in ranked_by

    # finetune each version on the same reference (tiny budget), then the report from the stored tags
    for s in (0, 1, 2):
        _ok(
            runner.invoke(
                main,
                ["finetune", "--model", f"models:/team-unet-{s}/1", "--dataset", uri, "--steps", "3"]
                + ["--batch-size", "1", "--patch-size", "16,16,16"],
            )
        )
    dices = [float(client.get_model_version(f"team-unet-{s}", "1").tags[T.dice_tag(TARGET_TASK)]) for s in (0, 1, 2)]
    assert all(0.0 <= d <= 1.0 for d in dices)
    report = _ok(runner.invoke(main, ["report", "--bank", "team", "--out-dir", str(work / "report")]))
    assert "team-unet-" in report and any((work / "report").iterdir())
    (rep,) = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'report team'")
    assert T.report_metric(TARGET_TASK, "ccfv", "weighted_tau") in rep.data.metrics

    # the evaluator, same target reference, same score as `score` wrote (features cached)
    v0 = client.get_model_version(best, "1")
    with mlflow.start_run():
        result = mlflow.models.evaluate(
            model=f"models:/{best}/1",
            data=__import__("pandas").DataFrame({"case_id": ["unused"]}),
            model_type="segmentation",
            evaluators=["ccfv"],
            evaluator_config={"ccfv": {"dataset": uri, "methods": ["ccfv"]}},
        )
    assert result.metrics["ccfv"] == pytest.approx(float(v0.tags[T.score_tag("ccfv", TARGET_TASK)]), rel=1e-5)
    assert not os.path.exists(tmp_path / "data")  # everything came from the server
