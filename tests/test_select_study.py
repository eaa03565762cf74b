"""``select-study``: every policy replayed from a unit table against a hand-computed race, and the
measurement on a tiny studied target (validation apart from the held-out split, resumed unit by unit)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from mlflow_ccfv.cli import main
from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.study.select_regret import (
    budget_within_sd,
    race_steps,
    race_winner,
    random_shortlists,
    regret_per_seed,
    summarize_regret,
)
from mlflow_ccfv.training import TrainConfig

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402

# --------------------------------------------------------------------------- the replay, by hand
#: candidates ranked a, b, c; held-out Dice: b is the best (0.7), c 0.6, a 0.5
HELDOUT = {"a": 0.5, "b": 0.7, "c": 0.6}
RANKING = ["a", "b", "c"]
#: validation Dice after (steps) of fine-tuning, per race seed
UNITS = {
    0: {("a", 2): 0.1, ("b", 2): 0.3, ("c", 2): 0.2, ("a", 4): 0.5, ("b", 4): 0.4, ("c", 4): 0.9},
    1: {("a", 2): 0.5, ("b", 2): 0.1, ("c", 2): 0.2, ("a", 4): 0.3, ("b", 4): 0.8, ("c", 4): 0.1},
}


def _units() -> pd.DataFrame:
    rows = [(m, s, seed, d, 0.0) for seed, table in UNITS.items() for (m, s), d in table.items()]
    return pd.DataFrame(rows, columns=["model", "steps", "seed", "val_dice", "seconds"])


def test_a_race_replayed_from_the_unit_table_matches_a_hand_computed_one():
    # seed 0, top 3, rounds 2 -> 4: round 0 keeps b (0.3) and c (0.2); round 1 c (0.9) beats b (0.4)
    assert race_winner(UNITS[0], ["a", "b", "c"], (2, 4)) == "c"
    assert race_winner(UNITS[0], ["a", "b"], (2, 4)) == "b"
    assert race_winner(UNITS[1], ["a", "b", "c"], (2, 4)) == "a"  # a (0.5), c (0.2) kept; a 0.3 > c 0.1
    assert race_winner(UNITS[1], ["c"], (2, 4)) == "c"  # one candidate: no race
    assert race_steps(3, (2, 4)) == 3 * 2 + 2 * 4 and race_steps(2, (2,)) == 4 and race_steps(1, (2, 4)) == 0
    # every ordered pair (the order is the race's tie order); more of them than draws: that many draws
    assert sorted(random_shortlists(RANKING, 2)) == [
        ("a", "b"),
        ("a", "c"),
        ("b", "a"),
        ("b", "c"),
        ("c", "a"),
        ("c", "b"),
    ]
    assert len(list(random_shortlists(RANKING, 2, max_draws=5))) == 5

    per_seed = regret_per_seed(_units(), HELDOUT, RANKING, (2, 4), full_steps=4)
    row = per_seed.set_index(["policy", "schedule", "k", "seed"])
    assert row.loc[("select", "2,4", 3, 0), "regret"] == pytest.approx(0.1)  # c won, b is 0.1 better
    assert row.loc[("select", "2,4", 3, 0), "winner"] == "c"
    assert row.loc[("select", "2,4", 3, 0), "fraction"] == pytest.approx(14 / 12)  # 14 steps / (3 x 4)
    assert row.loc[("select", "2,4", 2, 1), "regret"] == pytest.approx(0.2)  # a beats b in round 0
    assert row.loc[("select", "none", 1, 0), "regret"] == pytest.approx(0.2)  # the ranking alone: a
    assert row.loc[("random", "none", 1, 1), "regret"] == pytest.approx((0.2 + 0.0 + 0.1) / 3)
    # seed 0, random pairs, rounds 2 -> 4: {a,b} -> b (0), {a,c} -> c (0.1), {b,c} -> b (0)
    assert row.loc[("random", "2,4", 2, 0), "regret"] == pytest.approx(0.1 / 3)

    summary = summarize_regret(per_seed).set_index(["policy", "schedule", "k"])
    top2 = summary.loc[("select", "2,4", 2)]
    assert (top2["regret_mean"], top2["regret_min"], top2["regret_max"]) == pytest.approx((0.1, 0.0, 0.2))
    assert top2["winners"] == "b a" and top2["steps"] == 8 and top2["n_seeds"] == 2
    assert top2["regret_sd"] == pytest.approx(math.sqrt(0.02))


def test_the_budget_within_one_seed_sd_is_the_cheapest_select_that_meets_it():
    summary = summarize_regret(regret_per_seed(_units(), HELDOUT, RANKING, (2, 4), full_steps=4))
    assert budget_within_sd(summary, 0.05) is None  # no select row has a mean regret <= 0.05
    cheapest = budget_within_sd(summary, 0.1)  # top 2, one round of 2 steps: b (seed 0), a (seed 1)
    assert (cheapest["schedule"], cheapest["k"], cheapest["steps"]) == ("2", 2, 4)
    assert cheapest["fraction"] == pytest.approx(4 / 12)
    assert budget_within_sd(summary, 0.1, every_seed=True) is None  # seed 1 always has regret 0.2
    assert budget_within_sd(summary, 0.2)["k"] == 1  # the ranking alone, no fine-tuning


def test_the_ranking_and_the_held_out_dice_must_name_the_same_candidates():
    with pytest.raises(ValueError, match="differ"):
        regret_per_seed(_units(), {"a": 0.5, "b": 0.7}, RANKING, (2, 4), full_steps=4)


# --------------------------------------------------------------------------- the pipeline
@pytest.mark.slow
def test_the_measurement_carves_select_s_validation_and_resumes_unit_by_unit(
    tracking_uri, tmp_path, one_torch_thread, monkeypatch
):
    from mlflow_ccfv.pipelines import select_study
    from mlflow_ccfv.pipelines.finetune import FinetuneRequest, finetune_version
    from mlflow_ccfv.pipelines.score import ScoreConfig, ScoreRequest, run_score
    from mlflow_ccfv.pipelines.select_study import SelectStudyRequest, measure_select_study

    data = tmp_path / "data"
    make_target_folder(data)
    versions = register_tiny_bank("st", seeds=(0, 1, 2))
    run_score(
        ScoreRequest(
            dataset=TARGET_TASK,
            data_root=str(data),
            bank="st",
            config=ScoreConfig(methods=("logme",), cache_dir=str(tmp_path / "c")),
        )
    )
    config = TrainConfig(steps=2, batch_size=1, patch_size=(16, 16, 16))
    for v in versions:
        finetune_version(
            FinetuneRequest(
                f"models:/{v.name}/{v.version}",
                TARGET_TASK,
                config,
                data_root=data,
                seeds=(0, 1),
                progress=False,
                log_finetuned_model=False,
                checkpoint_every=0,
            )
        )
    request = SelectStudyRequest(
        dataset=TARGET_TASK, data_root=str(data), bank="st", out_dir=str(tmp_path / "out"), round_fractions=(0.5, 1)
    )
    study = measure_select_study(request)
    out = tmp_path / "out"
    units = pd.read_csv(out / "select_units_Task07.csv")
    assert len(units) == 3 * 2 * 2 and sorted(units["steps"].unique()) == [1, 2]  # candidates x rounds x seeds
    # the race's cases: select's validation carve, apart from the held-out split the truth was measured on
    parts = json.loads((out / "select_units_Task07.json").read_text())
    held_out = set(MSDDataset.load(TARGET_TASK, data_root=data).split(seed=0).test)
    assert parts["validation"] and not set(parts["validation"]) & held_out and not set(parts["fit"]) & held_out
    # the truth and the ranking alone, from the store
    heldout = pd.read_csv(out / "select_heldout_Task07.csv")
    top1 = study.summary.set_index(["policy", "schedule", "k"]).loc[("select", "none", 1)]
    assert top1["regret_mean"] == pytest.approx(heldout["heldout_dice"].max() - heldout["heldout_dice"].iloc[0])
    for name in ("select_regret_Task07.png", "select_regret_Task07.md", "select_regret.md", "select_regret.csv"):
        assert (out / name).is_file()

    # a killed measurement: the last 4 units lost; a rerun measures those 4 only, to the same Dice
    units.iloc[:-4].to_csv(out / "select_units_Task07.csv", index=False)
    calls = []
    real_unit = select_study.race_unit

    def counted(task, cases=None):
        calls.append((task.item, task.config.steps, task.config.seed))
        return real_unit(task, cases)

    monkeypatch.setattr(select_study, "race_unit", counted)
    again = measure_select_study(request)
    assert calls == [
        (f"models:/{m}", s, t) for m, s, t in units.iloc[-4:][["model", "steps", "seed"]].itertuples(index=False)
    ]
    keys = ["model", "steps", "seed", "val_dice"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "select_units_Task07.csv")[keys], units[keys])
    pd.testing.assert_frame_equal(again.summary, study.summary)
    # everything recorded: the command measures nothing and writes the tables again
    monkeypatch.setattr(select_study, "race_unit", lambda *a, **k: pytest.fail("a recorded unit was measured again"))
    args = ["select-study", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "st", "--out-dir", str(out)]
    result = CliRunner().invoke(main, [*args, "--round-fractions", "0.5,1"])
    assert result.exit_code == 0, result.output
    assert str(out / "select_regret.md") in result.output
    # other settings on the same table are refused (a bad option: exit 2)
    result = CliRunner().invoke(main, [*args, "--round-fractions", "0.5,1", "--validation-seed", "1"])
    assert result.exit_code == 2 and "other settings" in result.output, result.output
