"""The shared fixtures themselves: each test's store is its own, complete and rooted in its folder."""

from __future__ import annotations

from pathlib import Path


def test_each_store_is_a_migrated_copy_rooted_in_the_tests_folder(tracking_uri, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    default = client.get_experiment("0")
    assert Path(default.artifact_location) == tmp_path / "mlruns" / "0"
    with mlflow.start_run() as run:  # the Default experiment, as a user's first run would
        mlflow.log_text("x", "a.txt")
    assert (tmp_path / "mlruns" / "0" / run.info.run_id / "artifacts" / "a.txt").read_text() == "x"
    assert client.search_registered_models() == []
    named = client.create_experiment("named")
    assert Path(client.get_experiment(named).artifact_location).parent == tmp_path / "mlruns"


def test_stores_do_not_share_state(tracking_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    client.create_experiment("only-here")  # the other test must not see it (nor this one its experiment)
