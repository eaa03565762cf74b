"""Bank folders: the shipped bank's files match their digests; an altered or missing file is refused
before anything is registered; export -> register gives back the very same weights, once."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mlflow_ccfv.errors import OptionError, RegistryError
from mlflow_ccfv.networks.bank_files import MANIFEST_FILE, file_sha256, read_weights, verify_bank
from mlflow_ccfv.pipelines.shipped_bank import SHIPPED_BANK


def test_the_shipped_bank_matches_its_manifest():
    from mlflow_ccfv.pipelines.study_config import DemoSettings

    target = DemoSettings().target
    manifest = verify_bank(SHIPPED_BANK)  # every digest, and every file builds its spec
    assert len(manifest.models) >= 4
    for m in manifest.models:
        assert file_sha256(SHIPPED_BANK / m.file) == m.sha256
        assert m.architecture == "UNet" and m.source_dataset != target  # the demo's target is no source
        assert m.pretrain["budget"] and m.source_dice is not None and m.checkpoint in ("early", "final")
        synth, pretrain = m.reproduce[0], m.reproduce[1]
        assert synth.startswith("mlflow-ccfv synth ") and "--seed 0" in synth and "--n-cases 50" in synth
        assert f"--dataset {m.source_dataset}" in pretrain and f"--steps {m.train_config['steps']}" in pretrain
    assert sorted(SHIPPED_BANK.iterdir()) == sorted(
        [SHIPPED_BANK / MANIFEST_FILE, *(SHIPPED_BANK / m.file for m in manifest.models)]
    )


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_a_damaged_bank_is_refused_and_nothing_registered(tracking_uri, tmp_path, damage):
    from mlflow_ccfv.pipelines.shipped_bank import register_bank_folder
    from mlflow_ccfv.tracking.search import search_versions

    folder = tmp_path / "bank"
    shutil.copytree(SHIPPED_BANK, folder)
    victim = json.loads((folder / MANIFEST_FILE).read_text())["models"][-1]["file"]
    if damage == "altered":
        data = bytearray((folder / victim).read_bytes())
        data[-1] ^= 1  # one bit of one weight
        (folder / victim).write_bytes(bytes(data))
    else:
        (folder / victim).unlink()
    with pytest.raises(RegistryError) as err:
        register_bank_folder(folder, bank="demo")
    text = str(err.value)
    assert victim in text and "nothing was registered" in text and "reinstall" in text
    assert ("missing" if damage == "missing" else "SHA-256") in text
    assert search_versions("name LIKE '%'") == []


@pytest.mark.slow
def test_export_then_register_gives_the_same_weights_once(tracking_uri, tmp_path):
    """A real (2-step) pre-training exported with its reproduce commands, registered into another bank:
    the weights are identical, a second registration reuses the version, and data that is not the
    model's source is refused."""
    from click.testing import CliRunner

    from mlflow_ccfv.cli import main
    from mlflow_ccfv.data.synthetic import generate_task
    from mlflow_ccfv.pipelines.pretrain import PretrainRequest, pretrain_and_register
    from mlflow_ccfv.pipelines.shipped_bank import export_bank, register_bank_folder
    from mlflow_ccfv.tracking.load import load_version
    from mlflow_ccfv.tracking.search import bank_versions
    from mlflow_ccfv.training import TrainConfig

    generate_task("Task06", tmp_path / "data", n_cases=5, shape=(32, 32, 24), progress=False)
    config = TrainConfig(steps=2, patch_size=(24, 24, 24), seed=1)
    request = PretrainRequest("Task06", "UNet", config, bank="src", data_root=tmp_path / "data")
    original = pretrain_and_register(request, progress=False)

    result = CliRunner().invoke(
        main, ["export-bank", "--bank", "src", "--out", str(tmp_path / "out"), "--data-root", str(tmp_path / "data")]
    )
    assert result.exit_code == 0, result.output
    (entry,) = verify_bank(tmp_path / "out").models
    assert entry.name == "unet-Task06" and entry.source_dataset == "Task06" and entry.exported_from.endswith("/1")
    assert "--n-cases 5 --shape 32,32,24" in entry.reproduce[0]
    assert "--steps 2" in entry.reproduce[1] and "--patch-size 24,24,24" in entry.reproduce[1]

    (copy,) = register_bank_folder(tmp_path / "out", bank="copy")
    assert copy.tags["pretrain.budget"] == original.tags["pretrain.budget"]
    assert copy.tags["weights.sha256"] == entry.sha256 and "pretrain.run_id" not in copy.tags
    want = load_version(f"models:/{original.name}/{original.version}").module.state_dict()
    got = load_version(f"models:/{copy.name}/{copy.version}").module.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert read_weights(tmp_path / "out" / entry.file).keys() == want.keys()
    (again,) = register_bank_folder(tmp_path / "out", bank="copy")
    assert again.version == copy.version and len(bank_versions("copy")) == 1

    other = tmp_path / "other"
    generate_task("Task06", other, n_cases=5, shape=(32, 32, 24), seed=7, progress=False)
    with pytest.raises(OptionError, match="other data"):
        export_bank("src", tmp_path / "out2", data_root=other)


def _edit_first(field: str, value):
    def edit(manifest: dict) -> None:
        if value is _REMOVE:
            manifest["models"][0].pop(field)
        else:
            manifest["models"][0][field] = value

    return edit


_REMOVE = object()
BAD_MANIFESTS = {
    "models: [1]": (lambda m: m.__setitem__("models", [1]), "Manifest entry 0 must be an object"),
    "models not a list": (lambda m: m.__setitem__("models", {"a": 1}), "'models' must be a list"),
    "file: 5": (_edit_first("file", 5), "file must be a file name relative to the bank folder"),
    "file ../x": (_edit_first("file", "../outside.safetensors"), "file must be a file name relative"),
    "sha256 not hex": (_edit_first("sha256", "abc"), "sha256 must be 64 lower-case hex digits"),
    "spec a list": (_edit_first("spec", [1]), "spec must be an object"),
    "spec without architecture": (_edit_first("spec", {"kwargs": {}}), "spec must be an object"),
    "patch_size text": (_edit_first("patch_size", "32"), "patch_size must be three integers"),
    "source_dice text": (_edit_first("source_dice", "high"), "source_dice must be a number or null"),
    "reproduce a text": (_edit_first("reproduce", "mlflow-ccfv synth"), "reproduce must be a list of texts"),
    "no name": (_edit_first("name", _REMOVE), "lacks the field 'name'"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS), ids=list(BAD_MANIFESTS))
def test_a_malformed_manifest_entry_is_refused_by_field(tmp_path, case):
    edit, fragment = BAD_MANIFESTS[case]
    folder = tmp_path / "bank"
    shutil.copytree(SHIPPED_BANK, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    edit(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(RegistryError) as err:
        verify_bank(folder)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert str(err.value).startswith(str(folder / MANIFEST_FILE))
