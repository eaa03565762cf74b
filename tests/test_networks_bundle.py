"""MONAI bundles: the network definition is read with MONAI's ConfigParser, nothing in the config runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from monai.networks import nets
from torch import nn

from mlflow_ccfv.networks import build_network, decoder_layers, output_head
from mlflow_ccfv.networks.bundle import evaluate_expression, read_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(network_def: dict, marker: Path) -> dict:
    """An inference config shaped like the model zoo's (spleen_ct_segmentation, brats_mri_segmentation);
    every expression that would run code writes ``marker``."""
    touch = f"$open({str(marker)!r}, 'w').close()"
    return {
        "imports": ["$import glob", "$import os", touch],
        "bundle_root": ".",
        "labels": ["background", "spleen", "liver"],
        "roi": [32, 48, 32],
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 4, "overlap": 0.5},
        "preprocessing": {"_target_": "Compose", "transforms": [{"_target_": "LoadImaged", "keys": "image"}]},
        "initialize": [touch],
        "run": ["$@evaluator.run()"],
    }


# (network_def as a bundle writes it, the same network built directly)
NETWORKS = {
    "UNet": (
        {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": "$len(@labels)",
            "channels": [4, 8, 16, 32],
            "strides": [2, 2, 2],
            "num_res_units": 2,
            "norm": "batch",
        },
        lambda: nets.UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=3,
            channels=(4, 8, 16, 32),
            strides=(2, 2, 2),
            num_res_units=2,
            norm="batch",
        ),
    ),
    "SegResNet": (
        {
            "_target_": "monai.networks.nets.SegResNet",
            "blocks_down": [1, 2, 2, 4],
            "blocks_up": "$[1] * 3",
            "init_filters": 8,
            "in_channels": 1,
            "out_channels": "$len(@labels) - 1",
            "dropout_prob": 0.2,
        },
        lambda: nets.SegResNet(
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
            init_filters=8,
            in_channels=1,
            out_channels=2,
            dropout_prob=0.2,
        ),
    ),
}


def write_bundle(root: Path, arch: str, *, fmt: str = "json", weights: str = "plain") -> tuple[Path, nn.Module]:
    """A bundle folder with a real MONAI network's trained-looking weights; returns (folder, network)."""
    network_def, make = NETWORKS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        network = make()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        network.train()(torch.randn(2, 1, 32, 32, 32))
    folder = root / f"{arch.lower()}_bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = _config(network_def, root / "ran-code")
    if fmt == "json":
        (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    else:
        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": f"tiny_{arch}", "version": "0.1.0"}))
    state = network.state_dict()
    saved = {"plain": state, "wrapped": {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}}
    torch.save(saved[weights], folder / "models" / "model.pt")
    return folder, network.eval()


@pytest.mark.parametrize(
    "arch,fmt,weights",
    [
        ("UNet", "json", "plain"),
        ("SegResNet", "json", "wrapped"),
        ("SegResNet", "yaml", "plain"),
    ],
)
def test_bundle_round_trips_to_the_same_network(tmp_path, arch, fmt, weights):
    folder, original = write_bundle(tmp_path, arch, fmt=fmt, weights=weights)
    spec, state, info = read_bundle(folder)
    assert not (tmp_path / "ran-code").exists(), "no expression, import or _target_ of the config may run"
    assert spec.architecture == arch and spec.in_channels == 1
    module = build_network(spec)
    module.load_state_dict(state)
    x = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(module.eval()(x), original(x))
    names = decoder_layers(module)
    assert names and output_head(module) in dict(module.named_modules())
    assert info["format"] == "monai_bundle" and info["patch_size"] == (32, 48, 32)
    assert info["name"] == f"tiny_{arch}" and info["network_key"] == "network_def"
    assert info["config"] == f"configs/inference.{fmt}"


def test_unsupported_target_names_it_and_the_supported_ones(tmp_path):
    folder, _ = write_bundle(tmp_path, "UNet")
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    for target in ("DenseNet121", "my_lab.nets.UNet"):
        config["network_def"]["_target_"] = target
        config_file.write_text(json.dumps(config))
        with pytest.raises(ValueError, match=rf"_target_ '{target}', which is not .*supported: UNet, BasicUNet"):
            read_bundle(folder)


def test_code_in_network_arguments_is_refused(tmp_path):
    folder, _ = write_bundle(tmp_path, "UNet")
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["network_def"]["out_channels"] = f"$__import__('os').system('touch {tmp_path / 'ran-code'}')"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="inference.json: network_def: an argument is an expression"):
        read_bundle(folder)
    assert not (tmp_path / "ran-code").exists()
    with pytest.raises(ValueError, match="Attribute is not allowed"):
        evaluate_expression("$torch.nn.ReLU", {})
    assert evaluate_expression("$max(__local_refs['a']) // 2 + len('ab')", {"a": [4, 8]}) == 6


def test_missing_pieces_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a MONAI bundle: no configs/inference.json"):
        read_bundle(tmp_path)
    folder, _ = write_bundle(tmp_path, "UNet")
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="models/model.pt do not exist.*monai.bundle download"):
        read_bundle(folder)
    torch.save({"weights": [1, 2]}, folder / "models" / "model.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        read_bundle(folder)


def test_register_bundle_and_load_it_back(tracking_uri, tmp_path):
    from mlflow_ccfv.pipelines.register import BankEntry, BundleSource, register_version
    from mlflow_ccfv.tracking.load import load_version

    folder, original = write_bundle(tmp_path, "SegResNet")
    mv = register_version(BundleSource(str(folder)), BankEntry("brats-segresnet", "Task01"))
    assert mv.tags["architecture"] == "SegResNet" and mv.tags["patch_size"] == "32,48,32"
    assert mv.tags["import.format"] == "monai_bundle" and mv.tags["import.name"] == "tiny_SegResNet"
    loaded = load_version("models:/brats-segresnet/1")
    assert loaded.feature_layers == ["up_layers.0", "up_layers.1", "up_layers.2"]
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.module(x), original(x))


# Expressions that ran for minutes, or ended in a traceback, before they were bounded.
HEAVY_EXPRESSIONS = {
    "$((9**64)**64)**64 % 3 + 1": "integer longer than",  # the full tower of five runs for minutes: below
    "$[[8]*10000]*10000": "more than 10000 elements",
    "$len('a'*(10**64))": "more than 10000 elements",
    "$'%0999999999d' % 1": "formatting",
    "$'a' - 1": "TypeError",
    "$" + "+".join(["1"] * 4000): "nested too deeply",
    "$str([[1]*100]*99)": "more than 10000 elements",
}


@pytest.mark.parametrize("expression", list(HEAVY_EXPRESSIONS), ids=[e[:40] for e in HEAVY_EXPRESSIONS])
def test_expressions_are_bounded_in_size_and_time(expression):
    import time

    evaluate_expression("$1", {})  # the first call imports MONAI's config classes
    start = time.monotonic()
    with pytest.raises(ValueError, match=HEAVY_EXPRESSIONS[expression]):
        evaluate_expression(expression, {})
    assert time.monotonic() - start < 1.0
    assert evaluate_expression("$9**64 % 3 + 1", {}) == 1 and evaluate_expression("$[8] * 4", {}) == [8] * 4


@pytest.mark.slow
@pytest.mark.parametrize("argument,expression", [("out_channels", "$((((9**64)**64)**64)**64)**64 % 3 + 1"),
                                                 ("channels", "$[[8]*10000]*10000")])  # fmt: skip
def test_register_refuses_a_heavy_bundle_expression_quickly(tracking_uri, tmp_path, argument, expression):
    """The real command, in its own process: before the budget it ran for minutes (killed here at 120 s)."""
    import os
    import subprocess
    import sys
    import time

    folder, _ = write_bundle(tmp_path, "UNet")
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["network_def"][argument] = expression
    config_file.write_text(json.dumps(config))
    command = [sys.executable, "-m", "mlflow_ccfv", "register", "--name", "b", "--source-dataset", "x"]
    start = time.monotonic()
    done = subprocess.run(
        [*command, "--bundle", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"},
    )
    took = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("register failed:") and "network_def: an argument" in lines[0]
    assert took < 60, took  # start-up (imports, store) only


def _with_preprocessing(folder: Path, transforms: list[dict], **extra) -> None:
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["preprocessing"]["transforms"] += transforms
    config.update(extra)
    path.write_text(json.dumps(config))


def test_bundle_records_its_intensity_normalisation(tmp_path, caplog, tracking_uri):
    from mlflow_ccfv.pipelines.register import BankEntry, BundleSource, register_version
    from mlflow_ccfv.tracking.load import load_version

    folder, _ = write_bundle(tmp_path, "UNet")
    window = {"_target_": "ScaleIntensityRanged", "keys": ["image"], "a_min": "@hu#0", "a_max": "$@hu[1]"}
    window.update(b_min=0.0, b_max=1.0, clip=True)
    _with_preprocessing(
        folder, [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}, window], hu=[-57, 164]
    )
    info = read_bundle(folder).info
    assert not (tmp_path / "ran-code").exists()
    record = {"scheme": "ScaleIntensityRange", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True}
    assert info["normalization"] == [record]
    register_version(BundleSource(str(folder)), BankEntry("spleen-bundle", "Task09"))
    loaded = load_version("models:/spleen-bundle/1")
    assert json.loads(loaded.tags["import.normalization"]) == [record]
    assert loaded.normalization.describe() == "ScaleIntensityRange([-57, 164] -> [0.0, 1.0], clip)"

    other, _ = write_bundle(tmp_path / "other", "UNet")
    assert read_bundle(other).info["normalization"] is None  # no intensity transform: the target's normalisation
    _with_preprocessing(
        other, [{"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 1, "upper": 99}]
    )
    assert read_bundle(other).info["normalization"] is None
    assert "ScaleIntensityRangePercentilesd; not reproduced" in caplog.text
