"""No code execution without consent: mlflow.pytorch (pickled) models load only with the opt-in
(``--allow-pickle`` or ``MLFLOW_CCFV_ALLOW_PICKLE``), and ``register --logged-model`` converts them to
the pickle-free ``mlflow_ccfv`` flavor."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from monai.networks.nets import UNet

from mlflow_ccfv.cli import main
from mlflow_ccfv.networks import build_network, small_spec
from mlflow_ccfv.tracking.flavor import FLAVOR_NAME
from mlflow_ccfv.tracking.load import ALLOW_PICKLE_ENV, PickleRefusedError, load_version, pickle_allowed
from mlflow_ccfv.tracking.register import Registration, register_logged_model

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402

SPEC = small_spec("UNet", 1, 3)
#: Where an unpickled :class:`TrappedUNet` leaves its mark (set by the test).
MARK_ENV = "CCFV_TEST_PICKLE_MARK"


class TrappedUNet(UNet):
    """A MONAI UNet whose unpickling writes a file: the stand-in for a hostile pickle."""

    def __setstate__(self, state):
        super().__setstate__(state)
        mark = os.environ.get(MARK_ENV)
        if mark:
            Path(mark).write_text("unpickled")


def _log_pickled(net: torch.nn.Module) -> str:
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(net, name="net", serialization_format="pickle", pip_requirements=["torch"])
    return info.model_uri


def _trapped(tmp_path: Path, monkeypatch) -> tuple[torch.nn.Module, Path]:
    mark = tmp_path / "executed.txt"
    monkeypatch.setenv(MARK_ENV, str(mark))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TrappedUNet(**SPEC.kwargs)
    return net, mark


def test_pickle_policy_reads_flag_then_environment(monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    assert pickle_allowed() is False and pickle_allowed(None) is False
    assert pickle_allowed(True) is True
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv(ALLOW_PICKLE_ENV, value)
        assert pickle_allowed(None) is True
        assert pickle_allowed(False) is False  # an explicit refusal wins
    for value in ("", "0", "false", "no"):
        monkeypatch.setenv(ALLOW_PICKLE_ENV, value)
        assert pickle_allowed(None) is False


def test_register_logged_model_refuses_then_converts_with_opt_in(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    net, mark = _trapped(tmp_path, monkeypatch)
    uri = _log_pickled(net)
    assert not mark.exists()
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        register_logged_model(uri, Registration("unet-pt", "Task03"))
    assert not mark.exists() and mlflow.search_registered_models() == []  # nothing unpickled, nothing created
    out = CliRunner().invoke(main, ["register", "--logged-model", uri, "--name", "unet-pt", "--source-dataset", "x"])
    assert out.exit_code == 4 and "MLFLOW_CCFV_ALLOW_PICKLE=1" in out.output and not mark.exists()

    out = CliRunner().invoke(
        main,
        ["register", "--logged-model", uri, "--name", "unet-pt", "--source-dataset", "Task03", "--allow-pickle"]
        + ["--small-spec", "UNet:1:3"],  # its class is not MONAI's, so the spec is given
    )
    assert out.exit_code == 0, out.output
    assert mark.read_text() == "unpickled"  # the opt-in is what ran the pickle
    mark.unlink()
    mv = MlflowClient().get_model_version("unet-pt", "1")
    assert mv.tags["ccfv.flavor"] == FLAVOR_NAME and mv.tags["converted_from"] == uri
    loaded = load_version("models:/unet-pt/1")  # converted: no opt-in needed, nothing unpickled
    assert not mark.exists() and loaded.spec is not None and loaded.spec.architecture == "UNet"
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)

    # A MONAI network's spec is read back from the module itself (and checked on a probe input).
    plain = build_network(SPEC)
    mv = register_logged_model(_log_pickled(plain), Registration("unet-plain", "Task03"), allow_pickle=True)
    loaded = load_version(f"models:/unet-plain/{mv.version}")
    assert mv.tags["ccfv.flavor"] == FLAVOR_NAME and loaded.spec.kwargs["channels"] == list(SPEC.kwargs["channels"])
    probe = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(probe), plain.eval()(probe), atol=1e-6)


def test_unconvertible_pickle_is_registered_pickled_and_loads_only_with_opt_in(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    net = build_network(small_spec("UNETR", 1, 3))  # keeps no constructor arguments: not convertible
    uri = _log_pickled(net)
    with pytest.warns(UserWarning, match="could not be converted"):
        mv = register_logged_model(uri, Registration("unetr-pt", "Task03"), allow_pickle=True)
    assert mv.tags["ccfv.flavor"] == "pytorch" and mv.tags["architecture"] == "UNETR"
    with pytest.raises(PickleRefusedError, match="unetr-pt/1 is an mlflow.pytorch"):
        load_version("models:/unetr-pt/1")
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    assert type(load_version("models:/unetr-pt/1").module).__name__ == "UNETR"


def test_score_skips_pickled_versions_without_opt_in(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    data = tmp_path / "data"
    make_target_folder(data)
    register_tiny_bank("mixed", seeds=(0,))
    net, mark = _trapped(tmp_path, monkeypatch)
    uri = _log_pickled(net)
    with pytest.warns(UserWarning, match="could not be converted"):
        # Not MONAI's class and no spec given: registered pickled (as older versions of this package did).
        register_logged_model(uri, Registration("unet-pickled", "none", bank="mixed"), allow_pickle=True)
    mark.unlink()
    args = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "mixed", "--methods", "ccfv"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "SKIPPED unet-pickled/1" in out.output and "--allow-pickle" in out.output
    assert not mark.exists()  # the pickle never ran
    tags = MlflowClient().get_model_version("unet-pickled", "1").tags
    assert f"transferability.ccfv.{TARGET_TASK}" not in tags
    out = CliRunner().invoke(main, args + ["--allow-pickle"])
    assert out.exit_code == 0, out.output
    assert mark.read_text() == "unpickled"
    tags = MlflowClient().get_model_version("unet-pickled", "1").tags
    assert f"transferability.ccfv.{TARGET_TASK}" in tags


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _refused_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Checkpoint files torch.load(weights_only=True) refuses, and the clause each refusal must give."""
    made: dict[str, tuple[Path, str]] = {}
    path = folder / "runs-code.pt"
    torch.save({"state": _RunsCode(folder / "executed")}, path)
    made["runs code"] = (path, "holds the Python object posix.system")
    path = folder / "module.pt"
    torch.save(build_network(SPEC), path)
    made["pickled module"] = (path, "holds the Python object monai.networks.nets.unet.UNet")
    path = folder / "garbage.pt"
    path.write_bytes(b"\x80\x02garbage" * 40)
    made["garbage"] = (path, "not a PyTorch checkpoint")
    good = folder / "good.pt"
    torch.save(build_network(SPEC).state_dict(), good)
    path = folder / "truncated.pt"
    path.write_bytes(good.read_bytes()[:4000])
    made["truncated"] = (path, "truncated or corrupted")
    path = folder / "empty.pt"
    path.write_bytes(b"")
    made["empty"] = (path, "empty or truncated")
    return made


def test_a_refused_checkpoint_is_one_line_without_the_advice_to_unpickle(tracking_uri, tmp_path):
    for kind, (path, clause) in _refused_checkpoints(tmp_path).items():
        result = CliRunner().invoke(
            main,
            [
                "register",
                "--name",
                "x",
                "--source-dataset",
                "none",
                "--small-spec",
                "UNet:1:3",
                "--checkpoint",
                str(path),
            ],
        )
        lines = [line for line in result.output.splitlines() if " INFO " not in line]
        assert result.exit_code == 2, f"{kind}: {result.output}"
        assert len(lines) == 1 and lines[0].startswith("register failed: Cannot read checkpoint"), f"{kind}: {lines}"
        assert clause in lines[0] and str(path) in lines[0], f"{kind}: {lines[0]}"
        assert "weights_only=False" not in result.output and "set to `False`" not in result.output, kind
        assert "add_safe_globals" not in result.output, kind
    assert not (tmp_path / "executed").exists() and mlflow.search_registered_models() == []


def test_evaluate_refuses_a_pickled_model_before_anything_unpickles_it(tracking_uri, tmp_path, monkeypatch):
    """``mlflow.models.evaluate`` loads (unpickles) a model URI before any evaluator runs; the package's
    ``evaluate`` reads the MLmodel file first and refuses, so the trapped class never runs."""
    from mlflow_ccfv.errors import OptionError
    from mlflow_ccfv.tracking import evaluate, target_dataset

    monkeypatch.delenv("MLFLOW_CCFV_ALLOW_PICKLE", raising=False)
    net, mark = _trapped(tmp_path, monkeypatch)
    uri = _log_pickled(net)
    data = target_dataset(make_target_folder(tmp_path / "data"), split="train")
    with pytest.raises(OptionError, match="logged with mlflow.pytorch.*refused before loading"):
        evaluate(uri, data)
    assert not mark.exists()  # refused before any unpickling
    # MLflow's own entry: the evaluator refuses too, but only after the load ran
    with mlflow.start_run(), pytest.raises(ValueError, match="logged with mlflow.pytorch"):
        mlflow.models.evaluate(model=uri, data=data, model_type="segmentation", evaluators=["ccfv"])
    assert mark.read_text() == "unpickled"
