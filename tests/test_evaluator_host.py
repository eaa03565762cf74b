"""With mlflow-ccfv installed, MLflow's own default evaluations still work (a plugin never breaks its host).

MLflow asks every installed evaluator's ``can_evaluate`` with the caller's flat ``evaluator_config``;
ours must answer False for regressors and classifiers whatever the config holds.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from mlflow_ccfv.tracking.evaluator import CCFVEvaluator


def _frame(kind: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=60)
    if kind == "classifier":
        y = (y > 0).astype(int)
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})


def _logged(kind: str, df: pd.DataFrame) -> str:
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression, LogisticRegression

    est = LinearRegression() if kind == "regressor" else LogisticRegression()
    est.fit(df[["a", "b", "c"]], df["y"])
    # requirements given: inferring them starts a process that reloads the model (seconds, not the point here)
    info = mlflow.sklearn.log_model(
        est, name="model", input_example=df[["a", "b", "c"]].head(2), pip_requirements=["scikit-learn"]
    )
    return info.model_uri


def test_ccfv_is_installed_and_listed():
    assert "ccfv" in mlflow.models.list_evaluators()


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(None, marks=pytest.mark.slow, id="no-config"),
        pytest.param({"log_model_explainability": False}, id="flat-config"),
    ],
)
def test_mlflow_default_evaluation_passes_with_ccfv_installed(tracking_uri, kind, config):
    df = _frame(kind)
    with mlflow.start_run():
        uri = _logged(kind, df)
        result = mlflow.models.evaluate(
            model=uri, data=df, targets="y", model_type=kind, evaluators=None, evaluator_config=config
        )
    expected = "r2_score" if kind == "regressor" else "accuracy_score"
    assert expected in result.metrics, sorted(result.metrics)
    assert not any(k.startswith("ccfv") for k in result.metrics)


def test_can_evaluate_only_answers():
    assert CCFVEvaluator.can_evaluate(model_type="segmentation", evaluator_config={})
    assert CCFVEvaluator.can_evaluate(model_type="segmentation", evaluator_config={"methods": "default"})
    for model_type in ("regressor", "classifier", "question-answering", None):
        assert not CCFVEvaluator.can_evaluate(model_type=model_type, evaluator_config={"log_model_explainability": 0})
    # never raises on a config it does not know: unknown keys are reported by evaluate, naming them
    assert CCFVEvaluator.can_evaluate(model_type="segmentation", evaluator_config={"metods": 1})
    assert CCFVEvaluator.can_evaluate(model_type="segmentation", evaluator_config=None)
