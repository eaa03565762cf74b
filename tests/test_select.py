"""``select``: successive halving against hand-computed schedules, the validation part never touching the
held-out split, the race recorded and the winner aliased, a budget refused before any run, and a killed
``select`` resuming at the round it reached (docs/select.md)."""

from __future__ import annotations

import math
import signal
import sqlite3
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ccfv.cli import main
from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.pipelines.select import SelectRequest, select_models
from mlflow_ccfv.training import TrainConfig
from mlflow_ccfv.training.selection import (
    check_budget,
    halving_schedule,
    keep_best,
    schedule_steps,
    validation_split,
)

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server", "reliability")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402
from reliability import cli_env, finish, run_cli, start_cli  # noqa: E402

#: A tiny race: 16^3 patches, one per step.
TINY = TrainConfig(steps=1, batch_size=1, patch_size=(16, 16, 16), seed=0)


# --------------------------------------------------------------------------- the pure rules
@pytest.mark.parametrize(
    ("n", "rounds", "expected", "total"),
    [
        # (round, steps, candidates, kept): ceil(n/2) kept, the last round keeps the winner
        (4, (50, 100, 200), [(0, 50, 4, 2), (1, 100, 2, 1), (2, 200, 1, 1)], 4 * 50 + 2 * 100 + 200),
        (5, (50, 100, 200), [(0, 50, 5, 3), (1, 100, 3, 2), (2, 200, 2, 1)], 5 * 50 + 3 * 100 + 2 * 200),
        (3, (10, 20), [(0, 10, 3, 2), (1, 20, 2, 1)], 3 * 10 + 2 * 20),
        (1, (50, 100), [(0, 50, 1, 1), (1, 100, 1, 1)], 150),
    ],
)
def test_halving_schedule_matches_a_hand_computed_one(n, rounds, expected, total):
    schedule = halving_schedule(n, rounds)
    assert [(r.round, r.steps, r.n_candidates, r.n_kept) for r in schedule] == expected
    assert schedule_steps(schedule) == total == check_budget(schedule, total) == check_budget(schedule, None)


def test_a_budget_below_the_schedule_names_both_numbers():
    with pytest.raises(OptionError, match=r"needs 600 fine-tuning steps \(4x50 \+ 2x100 \+ 1x200\).*budget of 599"):
        check_budget(halving_schedule(4, (50, 100, 200)), 599)


def test_keep_best_keeps_the_highest_dice_and_breaks_ties_by_rank():
    order = ["a/1", "b/1", "c/1", "d/1"]
    assert keep_best({"a/1": 0.2, "b/1": 0.5, "c/1": 0.5, "d/1": 0.9}, 2, order) == ["d/1", "b/1"]
    assert keep_best({"a/1": math.nan, "b/1": 0.1, "c/1": 0.0}, 2, order) == ["b/1", "c/1"]  # NaN is the lowest


@pytest.mark.parametrize("folder", ["msd-hippocampus", "brats2013-6"])
def test_the_validation_part_never_overlaps_the_held_out_split(real_data, folder):
    ds = MSDDataset.load(real_data / folder)
    for split_seed in (0, 1):
        split = ds.split(seed=split_seed)
        for seed in range(5):
            fit, validation = validation_split(split.train, 0.2, seed)
            assert validation and fit
            assert not set(validation) & set(split.test)
            assert not set(validation) & set(fit)
            assert sorted(fit + validation) == sorted(split.train)
    with pytest.raises(ValueError, match="at least 2 training cases"):
        validation_split(["only"], 0.2, 0)


# --------------------------------------------------------------------------- the pipeline
def _request(data: Path, **changes) -> SelectRequest:
    settings = dict(dataset=TARGET_TASK, data_root=str(data), bank="sel", top_k=3, rounds=(2, 3), train=TINY)
    settings["methods"] = "ccfv"
    return SelectRequest(**{**settings, **changes})


def _alias_holders(client: MlflowClient, alias: str) -> list[tuple[str, str]]:
    return sorted(
        (rm.name, str(rm.aliases[alias])) for rm in client.search_registered_models() if alias in (rm.aliases or {})
    )


@pytest.mark.slow
def test_select_races_the_shortlist_and_aliases_the_winner(tracking_uri, tmp_path, one_torch_thread):
    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("sel", seeds=(0, 1, 2, 3))
    outcome = select_models(_request(data, cache_dir=str(tmp_path / "cache")), progress=False)
    client = MlflowClient()
    # the shortlist is the three best-ranked pre-trained versions (the twin scored beside them is a control)
    ranks = {}
    for mv in client.search_model_versions("tags.`ccfv.bank` = 'sel'"):
        if "transferability.rank.Task07" in mv.tags:
            ranks[f"{mv.name}/{mv.version}"] = int(mv.tags["transferability.rank.Task07"])
        else:
            assert mv.tags["source_dataset"] == "random-init"
    assert outcome.shortlist == sorted(ranks, key=ranks.get)[:3]
    # the race as recorded: one run per candidate, val_dice per round; round 0 keeps the best two
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.params["shortlist"] == ",".join(outcome.shortlist)
    assert run.data.params["schedule"] == "3x2 2x3" and run.data.metrics["select_steps"] == 12
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    race = {
        r.data.tags["ccfv.model"]: {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val_dice")}
        for r in children
        if r.data.tags.get("ccfv.stage") == "select"
    }
    assert set(race) == set(outcome.shortlist)
    first = {label: d[0] for label, d in race.items()}
    kept = sorted(first, key=lambda label: (-first[label], outcome.shortlist.index(label)))[:2]
    assert sorted(label for label, d in race.items() if 1 in d) == sorted(kept)
    winner = max(kept, key=lambda label: (race[label][1], -outcome.shortlist.index(label)))
    assert outcome.winner == winner and run.data.tags["ccfv.select.winner"] == winner
    # the alias and the version tags
    name, version = winner.split("/")
    assert _alias_holders(client, "selected-Task07") == [(name, version)]
    for label, rounds in race.items():
        tags = client.get_model_version(*label.split("/")).tags
        assert tags["select.round.Task07"] == str(max(rounds))
        assert float(tags["select.dice.Task07"]) == pytest.approx(rounds[max(rounds)], abs=1e-6)
    # the validation cases come from the training part, never from the held-out one
    local = mlflow.artifacts.download_artifacts(run_id=outcome.run_id, artifact_path="split.csv", dst_path=tmp_path)
    parts = pd.read_csv(local).groupby("part")["case_id"].apply(set)
    held_out = set(MSDDataset.load(TARGET_TASK, data_root=data).split(seed=0).test)
    assert parts["held-out"] == held_out and not parts["validation"] & held_out
    assert set(outcome.validation) == parts["validation"]
    # the same settings again: the same run, nothing trained
    again = select_models(_request(data, cache_dir=str(tmp_path / "cache")), progress=False)
    assert (again.run_id, again.winner, again.trained_steps, again.resumed) == (outcome.run_id, winner, 0, True)
    # another selection of the bank moves the alias (one holder per bank) and the version tags
    single = select_models(_request(data, cache_dir=str(tmp_path / "cache"), top_k=1), progress=False)
    assert single.shortlist == outcome.shortlist[:1] and single.winner == outcome.shortlist[0]
    assert _alias_holders(client, "selected-Task07") == [tuple(single.winner.split("/"))]
    for label in outcome.shortlist[1:]:
        assert "select.round.Task07" not in client.get_model_version(*label.split("/")).tags


def test_a_budget_too_small_is_refused_before_any_run(tracking_uri, tmp_path):
    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("sel", seeds=(0, 1, 2))
    client = MlflowClient()
    before = [(v.name, v.version) for v in client.search_model_versions()]
    args = ["select", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "sel", "--budget", "549"]
    result = CliRunner().invoke(main, args)
    # 3 candidates: 3x50 + 2x100 + 1x200 = 550 steps
    assert result.exit_code == 2, result.output
    assert "select failed: the schedule needs 550 fine-tuning steps" in result.output
    assert "budget of 549" in result.output
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert [(v.name, v.version) for v in client.search_model_versions()] == before  # no twin registered either


@pytest.mark.slow
def test_a_killed_select_resumes_at_the_round_it_reached(tracking_uri, tmp_path):
    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("sel", seeds=(0, 1, 2))
    env = cli_env(tracking_uri, tmp_path / "cache")
    args = ["select", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "sel", "--top-k", "3"]
    args += ["--rounds", "2,60", "--batch-size", "1", "--patch-size", "16,16,16", "--methods", "ccfv"]
    proc = start_cli(args, env, tmp_path)
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    # the candidates' runs (tagged ccfv.model), not the select run (which logs the winner's Dice at the end)
    where = "FROM metrics WHERE key = 'val_dice' AND step = 0 AND run_uuid IN "
    where += "(SELECT run_uuid FROM tags WHERE key = 'ccfv.model')"
    query = f"SELECT count(*) {where}"
    deadline = time.monotonic() + 600
    while True:  # kill -9 once every candidate's first round is recorded
        if proc.poll() is not None:
            pytest.fail(f"select ended (rc {proc.returncode}) before its first round: {finish(proc)[1][-3000:]}")
        assert time.monotonic() < deadline, "the first round was not recorded in time"
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
                if con.execute(query).fetchone()[0] >= 3:
                    break
        except sqlite3.OperationalError:  # locked or not created yet
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as con:
        first_round = sorted(con.execute(f"SELECT run_uuid, value, timestamp {where}").fetchall())
    client = MlflowClient()
    killed = [r for r in client.search_runs(["0"]) if r.info.run_name == f"select {TARGET_TASK}"]
    assert [r.info.status for r in killed] == ["RUNNING"]

    code, output = run_cli(args, env, tmp_path)
    assert code == 0, output[-3000:]
    assert output.count("recorded before (reused)") == 3  # the first round is read back, not trained again
    with sqlite3.connect(db) as con:
        assert sorted(con.execute(f"SELECT run_uuid, value, timestamp {where}").fetchall()) == (first_round)
    runs = [r for r in client.search_runs(["0"]) if r.info.run_name == f"select {TARGET_TASK}"]
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed[0].info.run_id, "FINISHED")]
    winner = runs[0].data.tags["ccfv.select.winner"]
    assert f"selected {winner} for {TARGET_TASK}" in output
    name, version = winner.split("/")
    assert _alias_holders(client, "selected-Task07") == [(name, version)]


@pytest.mark.slow
def test_ray_races_one_task_per_candidate_and_round_with_the_serial_results(
    tracking_uri, tmp_path, one_torch_thread, monkeypatch, ray_turn
):
    ray = pytest.importorskip("ray")
    from mlflow_ccfv.pipelines.executors import RayExecutor, ray_runtime_env

    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("sel", seeds=(0, 1, 2))
    serial = select_models(_request(data, cache_dir=str(tmp_path / "cache")), progress=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a local test instance: no token file under ~/.ray
    with ray_turn():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=ray_runtime_env())
        try:
            calls: list[int] = []

            class CountingRay(RayExecutor):  # the real executor; it only counts the tasks of each map
                def map(self, fn, items, on_done=None):
                    calls.append(len(items))
                    return super().map(fn, items, on_done)

            executor = CountingRay(num_cpus=1)
            remote = select_models(_request(data, cache_dir=str(tmp_path / "cache"), force=True), executor=executor)
        finally:
            ray.shutdown()
    assert remote.run_id != serial.run_id and remote.shortlist == serial.shortlist
    assert calls[-2:] == [3, 2]  # the race: one task per candidate in round 0, then per survivor in round 1
    assert {label: pytest.approx(d) for label, d in remote.dice.items()} == serial.dice  # CPU training: same Dice
    assert remote.winner == serial.winner


def test_the_selected_alias_has_one_holder_per_bank(tracking_uri):
    from mlflow_ccfv.tracking.ranking_writes import move_alias
    from mlflow_ccfv.tracking.tags import selected_alias

    a0, a1 = register_tiny_bank("a", seeds=(0, 1), prefix="a")
    (b0,) = register_tiny_bank("b", seeds=(0,), prefix="b")
    alias, client = selected_alias("Task07"), MlflowClient()
    assert move_alias(alias, b0.name, b0.version, "b") == []
    assert move_alias(alias, a0.name, a0.version, "a") == []
    assert move_alias(alias, a1.name, a1.version, "a") == [a0.name]  # moved within bank a ...
    assert _alias_holders(client, alias) == [(a1.name, str(a1.version)), (b0.name, str(b0.version))]  # ... b's kept
