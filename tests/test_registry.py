"""The model bank: register networks (spec + checkpoint, random init, mlflow.pytorch) and reload them."""

from __future__ import annotations

import mlflow
import pytest
import torch
from click.testing import CliRunner

from mlflow_ccfv.cli import main
from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.networks import build_network, small_spec
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME
from mlflow_ccfv.tracking.load import load_version
from mlflow_ccfv.tracking.register import register_network
from mlflow_ccfv.tracking.search import BANK_TAG, bank_versions, logged_model_id

SPEC = small_spec("UNet", 1, 3)


def _weights(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(SPEC).state_dict()


def _store_counts() -> tuple[int, int]:
    """(registered models, logged models) in the active store."""
    exp_ids = [e.experiment_id for e in mlflow.search_experiments()]
    return len(mlflow.search_registered_models()), len(
        mlflow.search_logged_models(experiment_ids=exp_ids, output_format="list")
    )


def test_register_network_tags_and_reload_without_pickle(tracking_uri, tmp_path):
    state = _weights(1)
    mv = register_network(SPEC, state, "unet-src1", "Task01", bank="tiny", extra_tags={"steps": 5}, description="d")
    tags = mv.tags
    assert tags["architecture"] == "UNet"
    assert tags["source_dataset"] == "Task01"
    assert tags["in_channels"] == "1" and tags["out_channels"] == "3"
    assert tags["patch_size"] == "32,32,32"
    assert tags[BANK_TAG] == "tiny" and tags["steps"] == "5"
    layers = tags["feature_layers"].split(",")
    assert layers and all(layers)

    loaded = load_version("models:/unet-src1/1")
    assert loaded.flavor == FLAVOR_NAME and loaded.spec.to_json() == SPEC.to_json()
    assert loaded.model_id == logged_model_id(mv) and loaded.model_id.startswith("m-")
    named = dict(loaded.module.named_modules())
    assert all(layer in named for layer in layers)
    for key, value in state.items():
        assert torch.equal(loaded.module.state_dict()[key], value), key

    # The weights file is a plain tensor dict: it loads with weights_only=True.
    local = mlflow.artifacts.download_artifacts(f"models:/{loaded.model_id}", dst_path=str(tmp_path / "dl"))
    plain = torch.load(f"{local}/state_dict.pt", weights_only=True)
    assert set(plain) == set(state)

    # pyfunc face: one window-sized volume is the argmax of one forward pass.
    pyfunc = mlflow.pyfunc.load_model("models:/unet-src1/1")
    volume = torch.rand(1, 32, 32, 32)
    labels = pyfunc.predict(volume.numpy())
    assert labels.shape == (32, 32, 32) and labels.dtype == "int64"
    with torch.no_grad():
        expected = loaded.module(volume[None])[0].argmax(0).numpy()
    assert (labels == expected).mean() > 0.999  # Gaussian weights of one window cancel out

    assert [(v.name, str(v.version)) for v in bank_versions("tiny")] == [("unet-src1", "1")]
    assert bank_versions("default") == []


def test_mismatched_checkpoint_lists_keys_and_creates_nothing(tracking_uri):
    wrong = build_network(small_spec("UNet", 1, 2)).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch: model\.2\.0\.conv\.weight"):
        register_network(SPEC, wrong, "unet-bad", "Task01")
    partial = dict(list(_weights(0).items())[:-2])
    with pytest.raises(ValueError, match="missing: "):
        register_network(SPEC, partial, "unet-bad", "Task01")
    assert _store_counts() == (0, 0)


def test_unknown_versions_and_bad_names_are_clear(tracking_uri):
    register_network(SPEC, _weights(0), "unet-a", "Task01")
    with pytest.raises(RegistryError, match=r"version 4 not found \('unet-a' has versions 1\)"):
        load_version("models:/unet-a/4")
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        load_version("models:/nope/1")
    with pytest.raises(RegistryError, match="alias @best-Task07 not found"):
        load_version("models:/unet-a@best-Task07")
    with pytest.raises(ValueError, match="break models:/ URIs"):
        register_network(SPEC, _weights(0), "unet/a", "Task01")
    with pytest.raises(ValueError, match="set by register itself"):
        register_network(SPEC, _weights(0), "unet-a", "Task01", extra_tags={"architecture": "x"})
    assert [str(v.version) for v in bank_versions()] == ["1"]


def test_cli_register_checkpoint_variants_and_unknown_parameter(tracking_uri, tmp_path):
    state = _weights(3)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, nested)
    spec_file = tmp_path / "unet.json"
    spec_file.write_text(SPEC.to_json())
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "register",
            "--name",
            "unet-cli",
            "--source-dataset",
            "Task02",
            "--spec",
            str(spec_file),
            "--checkpoint",
            str(nested),
            "--tag",
            "steps=3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "models:/unet-cli/1" in result.output
    loaded = load_version("models:/unet-cli/1")
    assert torch.equal(
        loaded.module.state_dict()["model.0.conv.unit0.conv.weight"], state["model.0.conv.unit0.conv.weight"]
    )

    result = runner.invoke(
        main,
        [
            "register",
            "--name",
            "unet-rand",
            "--source-dataset",
            "none",
            "--small-spec",
            "UNet:1:3",
            "--random-init",
            "true",
            "--seed",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_version("models:/unet-rand/1").tags["init"] == "random(seed=7)"

    result = runner.invoke(main, ["register", "--name", "x", "--source-dataset", "y", "--patch_sise", "3"])
    assert result.exit_code == 2
    assert "Unknown parameter '--patch_sise'" in result.output and "patch_size" in result.output

    pickled = tmp_path / "pickled.pt"
    torch.save(build_network(SPEC), pickled)  # a whole module: refused by weights_only loading
    result = runner.invoke(
        main,
        [
            "register",
            "--name",
            "unet-p",
            "--source-dataset",
            "y",
            "--small-spec",
            "UNet:1:3",
            "--checkpoint",
            str(pickled),
        ],
    )
    assert result.exit_code == 2 and "weights_only=True" in result.output
    assert [v.name for v in bank_versions()] == ["unet-cli", "unet-rand"]


def test_registry_queries_page_through_every_result(tracking_uri):
    """A bank larger than one page comes back whole: search_versions follows the page tokens."""
    from mlflow import MlflowClient

    from mlflow_ccfv.networks import random_state_dict
    from mlflow_ccfv.tracking.register import register_network
    from mlflow_ccfv.tracking.search import bank_versions, search_versions

    spec = small_spec("UNet", 1, 2)
    for seed in range(5):
        register_network(spec, random_state_dict(spec, seed), "paged-unet", "none", bank="paged")
    one_page = MlflowClient().search_model_versions("tags.`ccfv.bank` = 'paged'", max_results=2)
    assert len(one_page) == 2 and one_page.token  # what a single request returns
    paged = search_versions("tags.`ccfv.bank` = 'paged'", page_size=2)
    assert sorted(int(v.version) for v in paged) == [1, 2, 3, 4, 5]
    assert [int(v.version) for v in bank_versions("paged")] == [1, 2, 3, 4, 5]
