"""The `ccfv` evaluator plugin: mlflow.models.evaluate(..., evaluators=["ccfv"]) on a registered version."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_ccfv.data import MSDDataset, make_target
from mlflow_ccfv.pipelines.score import ScoreConfig, score_versions
from mlflow_ccfv.tracking import logged_model_id, target_dataset

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402


def test_ccfv_is_a_listed_evaluator():
    assert "ccfv" in mlflow.models.list_evaluators()


@pytest.mark.slow
def test_evaluate_matches_score_and_links_metrics_to_model_and_dataset(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_CCFV_CACHE", str(tmp_path / "cache"))
    root = make_target_folder(tmp_path / "data")
    (mv,) = register_tiny_bank("eval", seeds=(3,))
    data = target_dataset(root, split="train")
    assert list(data.df.columns) == ["case_id", "image", "label", "image_sha256", "label_sha256", "split"]

    with mlflow.start_run(run_name="my evaluation") as run:
        result = mlflow.models.evaluate(
            model=f"models:/{mv.name}/{mv.version}",
            data=data,
            model_type="segmentation",
            evaluators=["ccfv"],
            evaluator_config={"ccfv": {"methods": ["ccfv", "logme"]}},
        )
    metrics = result.metrics
    assert {"ccfv", "logme", "ccfv.layer0.class_consistency", "ccfv.layer0.feature_variety"} <= set(metrics)
    n_layers = len(mv.tags["feature_layers"].split(","))
    assert (
        f"ccfv.layer{n_layers - 1}.feature_variety" in metrics
        and f"ccfv.layer{n_layers}.feature_variety" not in metrics
    )
    assert "ccfv_layers" in result.artifacts

    # Same code path as `score`: the same version on the same target gives the same CC-FV (cached features).
    table = score_versions([mv], make_target(MSDDataset.load(root), "train"), ScoreConfig(["ccfv", "logme"]), log=False)
    assert bool(table["cached"].iloc[0])
    assert table["ccfv"].iloc[0] == pytest.approx(metrics["ccfv"], rel=1e-9)
    assert table["logme"].iloc[0] == pytest.approx(metrics["logme"], rel=1e-9)

    # ccfv_twin: minus the CC-FV of the same network with seed-0 random weights, the twin `score` registers
    from mlflow_ccfv.pipelines.controls import register_twins

    (twin,) = register_twins([mv])
    twin_table = score_versions([twin], make_target(MSDDataset.load(root), "train"), ScoreConfig(["ccfv"]), log=False)
    assert metrics["ccfv.twin_control"] == pytest.approx(twin_table["ccfv"].iloc[0], rel=1e-6)
    assert metrics["ccfv_twin"] == pytest.approx(metrics["ccfv"] - metrics["ccfv.twin_control"], rel=1e-12)
    assert metrics["ccfv_twin"] != 0

    # Logged on the run and on the LoggedModel, linked to the dataset (name + digest).
    assert MlflowClient().get_run(run.info.run_id).data.metrics["ccfv"] == pytest.approx(metrics["ccfv"])
    model = mlflow.get_logged_model(logged_model_id(mv))
    linked = [m for m in model.metrics if m.key == "ccfv"]
    assert [(m.dataset_name, m.dataset_digest) for m in linked] == [(TARGET_TASK, data.digest)]
    assert linked[0].value == pytest.approx(metrics["ccfv"])

    # The run is tagged as a score version run (the UI's ranking filter finds it); a name the caller gave is kept.
    label = f"{mv.name}/{mv.version}"
    user_run = MlflowClient().get_run(run.info.run_id)
    assert user_run.info.run_name == "my evaluation"
    assert {k: user_run.data.tags.get(k) for k in ("ccfv.stage", "ccfv.dataset", "ccfv.model")} == {
        "ccfv.stage": "score",
        "ccfv.dataset": TARGET_TASK,
        "ccfv.model": label,
    }
    # A run nobody named (evaluate started it: MLflow generated its name) is named like score's version runs.
    mlflow.models.evaluate(
        model=f"models:/{label}",
        data=data,
        model_type="segmentation",
        evaluators=["ccfv"],
        evaluator_config={"ccfv": {"methods": ["ccfv"], "twin": False}},
    )
    own = MlflowClient().get_run(mlflow.last_active_run().info.run_id)
    assert own.info.run_id != run.info.run_id
    assert own.info.run_name == f"{label} on {TARGET_TASK}"
    assert own.data.tags["ccfv.stage"] == "score" and own.data.tags["ccfv.model"] == label


def test_evaluator_config_errors_are_clear(tracking_uri, tmp_path):
    root = make_target_folder(tmp_path / "data")
    (mv,) = register_tiny_bank("eval", seeds=(4,))
    with pytest.raises(ValueError, match="Unknown ccfv evaluator_config key\\(s\\) metods"):
        mlflow.models.evaluate(
            model=f"models:/{mv.name}/1",
            data=target_dataset(root),
            model_type="segmentation",
            evaluators=["ccfv"],
            evaluator_config={"ccfv": {"metods": ["ccfv"]}},
        )
    import pandas as pd

    with pytest.raises(ValueError, match="manifest column\\(s\\) label"):
        mlflow.models.evaluate(
            model=f"models:/{mv.name}/1",
            data=pd.DataFrame({"case_id": ["a"], "image": ["x"]}),
            model_type="segmentation",
            evaluators=["ccfv"],
        )


def test_evaluate_an_mlflow_pytorch_model_only_with_the_pickle_opt_in(tracking_uri, tmp_path, monkeypatch):
    """A model logged with mlflow.pytorch (as register/score accept) is scored like the same weights in
    the mlflow_ccfv flavor, once pickles are allowed (config key or MLFLOW_CCFV_ALLOW_PICKLE)."""
    import mlflow.pytorch

    from mlflow_ccfv.networks import build_with_weights, random_state_dict, small_spec

    monkeypatch.setenv("MLFLOW_CCFV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_CCFV_ALLOW_PICKLE", raising=False)
    root = make_target_folder(tmp_path / "data")
    (mv,) = register_tiny_bank("eval", seeds=(5,))
    spec = small_spec("UNet", 1, 3)
    net = build_with_weights(spec, random_state_dict(spec, 5))
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            net, name="net", serialization_format="pickle", pip_requirements=["torch", "monai"]
        )
    data = target_dataset(root, split="train")

    def evaluate(config):
        with mlflow.start_run():
            return mlflow.models.evaluate(
                model=info.model_uri,
                data=data,
                model_type="segmentation",
                evaluators=["ccfv"],
                evaluator_config={"ccfv": config},
            )

    with pytest.raises(ValueError, match="logged with mlflow.pytorch.*allow_pickle.*MLFLOW_CCFV_ALLOW_PICKLE=1"):
        evaluate({})
    with pytest.raises(ValueError, match="logged with mlflow.pytorch"):
        evaluate({"allow_pickle": False})
    pickled = evaluate({"allow_pickle": True, "device": "cpu"}).metrics
    with mlflow.start_run():
        flavored = mlflow.models.evaluate(
            model=f"models:/{mv.name}/{mv.version}", data=data, model_type="segmentation", evaluators=["ccfv"]
        ).metrics
    assert pickled["ccfv"] == pytest.approx(flavored["ccfv"], rel=1e-9)
    monkeypatch.setenv("MLFLOW_CCFV_ALLOW_PICKLE", "yes")
    assert evaluate({}).metrics["ccfv"] == pytest.approx(pickled["ccfv"], rel=1e-12)
