"""The ``mlflow_ccfv`` flavor's pyfunc face: a registered version segments whole volumes of any size."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from mlflow_ccfv.networks import random_state_dict, small_spec
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME, PREDICT_PARAMS
from mlflow_ccfv.tracking.register import register_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = small_spec("UNet", 1, 3)


@pytest.fixture
def registered(tracking_uri) -> str:
    register_network(SPEC, random_state_dict(SPEC, 0), "unet-seg", "Task01", patch_size="32,32,24")
    return "models:/unet-seg/1"


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(45, 39, 35), (97, 90, 61)])
def test_predict_segments_volumes_no_stride_divides(registered, shape):
    model = mlflow.pyfunc.load_model(registered)
    volume = _volume(shape)
    labels = model.predict(volume)
    assert labels.shape == shape and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the network itself refuses such a volume: the sliding window is what makes it work
    with pytest.raises(RuntimeError), torch.no_grad():
        model.get_raw_model()(torch.from_numpy(volume)[None])


def test_predict_uses_the_version_patch_size_and_the_chosen_device(registered):
    from monai.inferers import sliding_window_inference

    model = mlflow.pyfunc.load_model(registered, model_config={"device": "cpu"})
    volume = _volume((45, 39, 35), seed=1)
    labels = model.predict(volume, params={"device": "cpu", "overlap": 0.25})
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(volume)[None],
            roi_size=(32, 32, 24),
            sw_batch_size=4,
            predictor=model.get_raw_model(),
            overlap=0.25,
            mode="gaussian",
            padding_mode="constant",
            cval=float(volume.min()),
        )
    np.testing.assert_array_equal(labels, torch.as_tensor(logits)[0].argmax(0).numpy())
    assert next(model.get_raw_model().parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="has no CUDA GPU"):
            model.predict(volume, params={"device": "cuda"})
    with pytest.raises(Exception, match="overlap must be in"):
        model.predict(volume, params={"overlap": 1.5})


def test_signature_is_logged_and_enforced(registered):
    info = mlflow.models.get_model_info(registered)
    signature = info.signature
    assert signature is not None
    (inp,) = signature.inputs.inputs
    (out,) = signature.outputs.inputs
    assert inp.type == np.dtype("float32") and inp.shape == (1, -1, -1, -1)
    assert out.type == np.dtype("int64") and out.shape == (-1, -1, -1)
    assert {p.name: p.default for p in signature.params.params} == dict.fromkeys(PREDICT_PARAMS)
    assert info.flavors[FLAVOR_NAME]["patch_size"] == [32, 32, 24]
    model = mlflow.pyfunc.load_model(registered)
    with pytest.raises(MlflowException, match="does not match expected shape"):
        model.predict(np.zeros((45, 39, 35), dtype=np.float32))  # no channel axis
    with pytest.raises(MlflowException, match="dtype"):
        model.predict(np.zeros((1, 45, 39, 35), dtype=np.float64))


def test_finetuned_and_registered_models_record_their_patch_size(tracking_uri):
    from mlflow_ccfv.tracking.flavor import log_model

    spec = small_spec("UNet", 2, 2)
    with mlflow.start_run():
        info = log_model(spec, random_state_dict(spec, 1), name="m", patch_size=(16, 16, 16))
    assert mlflow.models.get_model_info(info.model_uri).flavors[FLAVOR_NAME]["patch_size"] == [16, 16, 16]
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert model.predict(_volume((20, 18, 17)).repeat(2, axis=0)).shape == (20, 18, 17)


def test_model_config_sets_the_default_device(registered):
    model = mlflow.pyfunc.load_model(registered, model_config={"device": "cuda"})
    volume = _volume((40, 36, 33))
    if torch.cuda.is_available():
        assert model.predict(volume).shape == (40, 36, 33)
        assert next(model.get_raw_model().parameters()).device.type == "cuda"
        cpu = mlflow.pyfunc.load_model(registered).predict(volume, params={"device": "cpu"})
        assert (model.predict(volume) == cpu).mean() > 0.999
    else:
        with pytest.raises(Exception, match="has no CUDA GPU"):
            model.predict(volume)
    assert model.predict(volume, params={"device": "cpu"}).shape == (40, 36, 33)  # params win over the config
