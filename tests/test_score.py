"""`score` on the embedded sqlite store: runs, LoggedModel metrics, tags, alias, artifacts, cache, failures."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ccfv.cli import main
from mlflow_ccfv.cli.base import DEFAULT_EXPERIMENT
from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
from mlflow_ccfv.scoring import DEFAULT_METHODS, parse_methods
from mlflow_ccfv.scoring.ranking import DEFAULT_RANKING
from mlflow_ccfv.tracking import tags as T

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402


@pytest.fixture
def scored(tracking_uri, tmp_path):
    data = tmp_path / "data"
    make_target_folder(data)
    versions = register_tiny_bank("tiny")
    runner = CliRunner()
    args = [
        "score",
        "--dataset",
        TARGET_TASK,
        "--data-root",
        str(data),
        "--bank",
        "tiny",
        "--methods",
        "ccfv,logme,leep",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--add-twins",  # no twin: `auto` falls back to ranking by ccfv (the default is tested below)
        "false",
    ]
    first = runner.invoke(main, args)
    return {"versions": versions, "data": data, "args": args, "first": first, "runner": runner, "tmp": tmp_path}


def _metric(run, key):
    return run.data.metrics[key]


def test_score_writes_runs_model_metrics_tags_alias_artifacts_and_caches(scored):
    result = scored["first"]
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    versions = [client.get_model_version(v.name, v.version) for v in scored["versions"]]
    scores = {v.name: float(v.tags[f"transferability.ccfv.{TARGET_TASK}"]) for v in versions}
    assert len(set(scores.values())) == 3, scores  # three different networks, three different scores
    by_rank = sorted(versions, key=lambda v: int(v.tags[f"transferability.rank.{TARGET_TASK}"]))
    assert [int(v.tags[f"transferability.rank.{TARGET_TASK}"]) for v in by_rank] == [1, 2, 3]
    assert [v.name for v in by_rank] == sorted(scores, key=scores.get, reverse=True)
    for v in versions:
        assert f"transferability.logme.{TARGET_TASK}" in v.tags and f"transferability.leep.{TARGET_TASK}" in v.tags
    best = by_rank[0]
    assert client.get_model_version_by_alias(best.name, f"best-{TARGET_TASK}").version == best.version
    for v in by_rank[1:]:
        assert f"best-{TARGET_TASK}" not in client.get_registered_model(v.name).aliases

    # The printed table is ranked.
    lines = [l for l in result.output.splitlines() if l.startswith("| ") and "unet-rand" in l]
    assert [l.split("|")[2].strip() for l in lines] == [f"{v.name}/{v.version}" for v in by_rank]

    # One child run per version with the metrics and the scoring params, in the command's experiment
    # (--experiment's default); the parent logs the ranking.
    exp = mlflow.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(children) == 3 and len(parents) == 1
    for run in children:
        assert {"ccfv", "logme", "leep", "ccfv.layer0.class_consistency", "ccfv.layer0.feature_variety"} <= set(
            run.data.metrics
        )
        assert run.data.params["dataset"] == TARGET_TASK and "sampler.roi_size" in run.data.params
        name = run.data.tags["ccfv.model"].split("/")[0]
        assert abs(_metric(run, "ccfv") - scores[name]) < 1e-4 * max(1, abs(scores[name]))
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == [TARGET_TASK]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "ranking")}
    assert artifacts == {f"ranking/ranking_{TARGET_TASK}.{s}" for s in ("csv", "md", "png")}
    png = mlflow.artifacts.download_artifacts(
        run_id=parents[0].info.run_id, artifact_path=f"ranking/ranking_{TARGET_TASK}.png"
    )
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # The run's note (its page's description) is the printed ranked table; the experiment holds the
    # Runs tab's shared view of this ranking (sorted by the ranking score, the scores as columns).
    note = parents[0].data.tags["mlflow.note.content"]
    table_lines = [l for l in note.splitlines() if l.startswith("|")]
    assert len(table_lines) == 5 and "\n".join(table_lines) in result.output  # header, rule, 3 versions
    view = json.loads(exp.tags[f"mlflow.sharedViewState.ccfv-{TARGET_TASK}"])
    assert view["orderByKey"] == f"metrics.`{DEFAULT_RANKING}`" and view["orderByAsc"] is False
    assert view["selectedColumns"] == [f"metrics.`{DEFAULT_RANKING}`", "metrics.`ccfv`", "metrics.`finetune_dice`"]
    assert f"tags.`ccfv.dataset` = '{TARGET_TASK}'" in view["searchFilter"]

    # The same metrics sit on each version's LoggedModel, linked to the dataset: the Models tab sorts by them.
    ordered = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_experiment_by_name("Default").experiment_id],  # registered in-process
        output_format="list",
        order_by=[{"field_name": "metrics.ccfv", "ascending": False, "dataset_name": TARGET_TASK}],
    )
    ranked_ids = [
        m.model_id for m in ordered if any(x.key == "ccfv" and x.dataset_name == TARGET_TASK for x in m.metrics or [])
    ]
    assert ranked_ids == [v.source.removeprefix("models:/") for v in by_rank]

    # Re-running reuses the cached features (same scores); force recomputes.
    runner, args = scored["runner"], scored["args"]
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    children = [
        r for r in mlflow.search_runs([exp.experiment_id], output_format="list") if "mlflow.parentRunId" in r.data.tags
    ]
    # One per-version run per (model, data, settings): the rerun's runs replace the first ones.
    cached = sorted(r.data.params["features_cached"] for r in children)
    assert cached == ["True"] * 3
    assert {r.data.tags["ccfv.model"] for r in children} == {f"{v.name}/{v.version}" for v in versions}
    for r in children:  # cached features give the same scores
        name = r.data.tags["ccfv.model"].split("/")[0]
        assert abs(_metric(r, "ccfv") - scores[name]) < 1e-4 * max(1, abs(scores[name]))
    forced = runner.invoke(main, args + ["--force", "true", "--models", "models:/unet-rand-0/1"])
    assert forced.exit_code == 0, forced.output
    newest = max(
        (
            r
            for r in mlflow.search_runs([exp.experiment_id], output_format="list")
            if "mlflow.parentRunId" in r.data.tags
        ),
        key=lambda r: r.info.start_time,
    )
    assert newest.data.params["features_cached"] == "False"
    # Scoring one version re-ranks the whole registry: the ranks and the alias stay those of all three.
    after = [client.get_model_version(v.name, v.version) for v in by_rank]
    assert [int(v.tags[f"transferability.rank.{TARGET_TASK}"]) for v in after] == [1, 2, 3]
    assert client.get_model_version_by_alias(by_rank[0].name, f"best-{TARGET_TASK}").version == by_rank[0].version


def test_failing_version_is_reported_and_gets_no_tags(tracking_uri, tmp_path):
    data = tmp_path / "data"
    make_target_folder(data)
    good = register_tiny_bank("mixed", seeds=(0,))
    bad = register_tiny_bank("mixed", seeds=(5,), prefix="unet-broken")[0]
    MlflowClient().set_model_version_tag(bad.name, bad.version, "feature_layers", "model.9.nothing")
    result = CliRunner().invoke(
        main,
        [
            "score",
            "--dataset",
            TARGET_TASK,
            "--data-root",
            str(data),
            "--bank",
            "mixed",
            "--methods",
            "ccfv",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 1
    assert "FAILED unet-broken-5/1" in result.output and "model.9.nothing" in result.output
    client = MlflowClient()
    assert not [k for k in client.get_model_version(bad.name, bad.version).tags if k.startswith("transferability.")]
    ranks = sorted(
        client.get_model_version(v.name, v.version).tags[f"transferability.rank.{TARGET_TASK}"] for v in good
    )
    assert ranks == ["1"]


def test_bad_parameters_are_rejected_before_work(tracking_uri, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["score", "--dataset", "Task07", "--methods", "ccfv,nope"])
    assert out.exit_code == 2 and "Unknown method(s) nope" in out.output
    out = runner.invoke(main, ["score", "--dataset", "Task07", "--bank", "empty-bank"])
    assert out.exit_code == 4 and "bank 'empty-bank' is empty" in out.output
    out = runner.invoke(main, ["score", "--dataset", "Task07", "--bnak", "x"])
    assert out.exit_code == 2 and "Unknown parameter '--bnak'" in out.output and "bank" in out.output
    out = runner.invoke(main, ["score", "--dataset", "Task07", "--models", "models:/ghost/3"])
    assert out.exit_code == 4 and "no registered model 'ghost'" in out.output
    assert parse_methods("logme") == ["ccfv", "logme"]
    assert parse_methods("default") == parse_methods(None) == parse_methods("") == list(DEFAULT_METHODS)
    assert len(parse_methods("all")) == len(METHODS) and "ccfv_unit_sphere" in parse_methods("all")


def test_score_versions_api_without_logging(tracking_uri, tmp_path):
    versions = register_tiny_bank("api", seeds=(0, 1))
    target = make_target(MSDDataset.load(make_target_folder(tmp_path / "data")), "train")
    table = score_versions(
        versions,
        target,
        ScoreConfig(["ccfv"], sampler={"global_samples": 64}, cache_dir=tmp_path / "cache"),
        log=False,
    )
    assert list(table["rank"]) == [1, 2] and table["ccfv"].is_monotonic_decreasing
    assert mlflow.search_runs(output_format="list") == []


@pytest.mark.slow
def test_rank_by_another_estimator_sets_the_rank_tags_and_the_alias(tracking_uri, tmp_path):
    """--rank-by gbc: the rank tags and best-<dataset> follow GBC (scored although not asked for)."""
    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("rb")
    args = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "rb", "--methods", "ccfv"]
    result = CliRunner().invoke(main, [*args, "--rank-by", "gbc", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    versions = [client.get_model_version(v.name, v.version) for v in mlflow.search_model_versions()]
    twins = [v for v in versions if v.tags["source_dataset"] == "random-init"]  # references: scored, unranked
    assert twins and all(f"transferability.rank.{TARGET_TASK}" not in v.tags for v in twins)
    versions = [v for v in versions if v not in twins]
    gbc = {v.name: float(v.tags[f"transferability.gbc.{TARGET_TASK}"]) for v in versions}
    ccfv = {v.name: float(v.tags[f"transferability.ccfv.{TARGET_TASK}"]) for v in versions}
    assert sorted(gbc, key=gbc.get) != sorted(ccfv, key=ccfv.get)  # the two rankings differ here
    rank = {v.name: int(v.tags[f"transferability.rank.{TARGET_TASK}"]) for v in versions}
    assert sorted(rank, key=rank.get) == sorted(gbc, key=gbc.get, reverse=True)
    best = max(gbc, key=gbc.get)
    assert client.get_registered_model(best).aliases.get(f"best-{TARGET_TASK}") is not None
    bad = CliRunner().invoke(main, [*args, "--rank-by", "ccfv_nothing_twin"])
    assert bad.exit_code != 0 and "not a ranking" in bad.output


@pytest.mark.slow
def test_rank_by_ccfv_twin_subtracts_the_architectures_random_twin(tracking_uri, tmp_path, caplog):
    """--rank-by ccfv_twin: ranks from ccfv minus the ccfv of the random-init control of the same
    architecture, read from the registry; an architecture without a control ranks last, with a warning."""
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.tracking import register_network

    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("tw", seeds=(0, 1))
    unet, basic = small_spec("UNet", 1, 3), small_spec("BasicUNet", 1, 3)
    register_network(unet, random_state_dict(unet, 7), "unet-random-init", "random-init", bank="tw")
    register_network(basic, random_state_dict(basic, 0), "basic-rand-0", "none", bank="tw")
    args = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "tw", "--methods", "ccfv"]
    cache = ["--cache-dir", str(tmp_path / "cache"), "--add-twins", "false"]  # a BasicUNet without its twin
    result = CliRunner().invoke(main, [*args, "--rank-by", "ccfv_twin", *cache])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    versions = [client.get_model_version(v.name, v.version) for v in mlflow.search_model_versions()]
    ccfv = {v.name: float(v.tags[f"transferability.ccfv.{TARGET_TASK}"]) for v in versions}
    rank = {
        v.name: int(v.tags[f"transferability.rank.{TARGET_TASK}"])
        for v in versions
        if f"transferability.rank.{TARGET_TASK}" in v.tags
    }
    assert "unet-random-init" not in rank  # the control is scored, never ranked
    unets = [n for n in rank if n != "basic-rand-0"]
    assert sorted(unets, key=rank.get) == sorted(unets, key=ccfv.get, reverse=True)
    assert rank["basic-rand-0"] == 3  # no twin of its network: last, whatever its ccfv
    best = min(rank, key=rank.get)
    assert client.get_registered_model(best).aliases.get(f"best-{TARGET_TASK}") is not None
    assert "no random-init twin" in caplog.text and "basic-rand-0" in caplog.text
    twin = ccfv[best] - ccfv["unet-random-init"]
    assert f"{twin:.4f}" in result.output  # the printed table shows the twin-calibrated score


@pytest.mark.slow
def test_rank_by_ccfv_twin_registers_random_twins_and_ranks_by_them(tracking_uri, tmp_path, caplog):
    """score --rank-by ccfv_twin: every network gets its random-init twin (the first version's network,
    seed-0 random weights, no training), the ranks and the alias follow ccfv minus the twin's ccfv, a
    second score reuses the twins; without twins it ranks those versions last and says why; the default
    (no --rank-by) ranks by DEFAULT_RANKING."""
    from mlflow_ccfv.networks import random_state_dict, small_spec
    from mlflow_ccfv.tracking import load_version, register_network

    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("dt", seeds=(1, 4))  # seeds where ccfv and ccfv_twin disagree
    basic = small_spec("BasicUNet", 1, 3)
    register_network(basic, random_state_dict(basic, 5), "basic-rand-5", "none", bank="dt")
    args = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "dt", "--methods", "ccfv"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--rank-by", "ccfv_twin"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    versions = {v.name: client.get_model_version(v.name, v.version) for v in mlflow.search_model_versions()}
    assert set(versions) == {"unet-rand-1", "unet-rand-4", "basic-rand-5", "unet-random-init", "basicunet-random-init"}
    for twin, first in (("unet-random-init", "unet-rand-1"), ("basicunet-random-init", "basic-rand-5")):
        tags = versions[twin].tags
        assert tags["source_dataset"] == "random-init" and tags["ccfv.bank"] == "dt" and tags["pretrain.steps"] == "0"
        spec = load_version(versions[first]).spec
        assert load_version(versions[twin]).spec == spec
        state = load_version(versions[twin]).module.state_dict()
        assert all(torch.equal(state[k], v) for k, v in random_state_dict(spec, 0).items())
    ccfv = {n: float(v.tags[f"transferability.ccfv.{TARGET_TASK}"]) for n, v in versions.items()}
    twin_of = {
        "unet-rand-1": "unet-random-init",
        "unet-rand-4": "unet-random-init",
        "basic-rand-5": "basicunet-random-init",
    }
    calibrated = {n: ccfv[n] - ccfv[twin_of.get(n, n)] for n in ccfv}  # a twin scores 0
    for n, v in versions.items():  # the ranking's own column is stored beside the estimators'
        assert float(v.tags[f"transferability.ccfv_twin.{TARGET_TASK}"]) == pytest.approx(calibrated[n], abs=1e-5)
    rank = {n: int(v.tags[f"transferability.rank.{TARGET_TASK}"]) for n, v in versions.items() if n in twin_of}
    assert all(f"transferability.rank.{TARGET_TASK}" not in versions[t].tags for t in set(twin_of.values()))
    assert sorted(rank, key=rank.get) == sorted(twin_of, key=lambda n: (-calibrated[n], n))
    assert sorted(rank, key=rank.get) != sorted(twin_of, key=lambda n: -ccfv[n])  # the two rankings differ here
    best = min(rank, key=rank.get)
    assert client.get_registered_model(best).aliases.get(f"best-{TARGET_TASK}") is not None
    parent = [r for r in mlflow.search_runs(output_format="list") if r.info.run_name == f"score {TARGET_TASK}"]
    assert [r.data.tags[T.RUN_RANKED_BY] for r in parent] == ["ccfv_twin"]
    assert f"{calibrated['unet-rand-4']:.4f}" in result.output  # the printed table shows ccfv_twin
    children = [r for r in mlflow.search_runs(output_format="list") if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 5
    for run in children:  # on each version's run too, so that the UI sorts by it
        name = run.data.tags["ccfv.model"].split("/")[0]
        assert run.data.metrics["ccfv_twin"] == pytest.approx(calibrated[name], abs=1e-5)

    again = CliRunner().invoke(main, args)  # the twins are reused, not registered again
    assert again.exit_code == 0, again.output
    assert len(mlflow.search_model_versions()) == 5

    seg = small_spec("SegResNet", 1, 3)  # an architecture without a twin anywhere in the registry
    register_network(seg, random_state_dict(seg, 0), "segresnet-rand-0", "none", bank="solo")
    caplog.clear()
    solo = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "solo", "--methods", "ccfv"]
    solo += ["--cache-dir", str(tmp_path / "cache"), "--add-twins", "false"]
    result = CliRunner().invoke(main, [*solo, "--rank-by", "ccfv_twin"])
    assert result.exit_code == 0, result.output
    assert "ccfv_twin ranks last" in caplog.text and "segresnet-rand-0" in caplog.text
    result = CliRunner().invoke(main, solo)  # the default ranking needs no twin
    assert result.exit_code == 0, result.output
    runs = [r for r in mlflow.search_runs(output_format="list") if r.info.run_name == f"score {TARGET_TASK}"]
    assert max(runs, key=lambda r: r.info.start_time).data.tags[T.RUN_RANKED_BY] == DEFAULT_RANKING


@pytest.mark.parametrize(("option", "value"), [("num_cpus", "abc"), ("num_gpus", "-1")])
def test_score_refuses_bad_ray_resources_before_any_work(option, value, tmp_path, monkeypatch):
    """``score`` (text as MLproject passes it) and its typed request check the Ray resources up front."""
    from mlflow_ccfv.errors import OptionError
    from mlflow_ccfv.pipelines.score import ScoreRequest

    flag = f"--{option.replace('_', '-')}"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match=flag):
        ScoreRequest(dataset="Task09", **{option: value})
    result = CliRunner().invoke(main, ["score", "--dataset", "Task09", flag, value])
    assert result.exit_code != 0 and flag in result.output, result.output
    assert not list(tmp_path.iterdir())  # no store, cache or data touched
