"""The bad-input catalogue: every kind of bad option, specification, dataset or environment a user can
hand a command, each refused with its exit status (docs/cli.md), a message naming the problem, no
traceback, and nothing half-written (no new registered model, version, LoggedModel or run, no new file
or folder).

One table, one test. Each row builds what it needs (a broken dataset folder, a NaN checkpoint ...)
in its own folder of a shared world (a sqlite store holding one registered version, one small
synthetic target), snapshots the store and the files, runs the command in-process with click's
runner, and compares.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner

from mlflow_ccfv.cli import main
from mlflow_ccfv.errors import EXIT_CODES

SPEC = {"architecture": "UNet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                           "channels": [8, 16], "strides": [2], "num_res_units": 1}}  # fmt: skip


@dataclass
class World:
    root: Path
    data: Path  # holds Task09_SynthSpleen (3 cases, 24x24x16) and the rows' broken tasks
    uri: str

    def task(self, name: str) -> Path:
        """A fresh copy of the good target under ``data/<name>`` (to break in one way)."""
        import shutil

        dst = self.data / name
        shutil.copytree(self.data / "Task09_SynthSpleen", dst)
        return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory, _store_template):
    from conftest import _copy_store, _reset_mlflow_state

    root = tmp_path_factory.mktemp("bad-input")
    _copy_store(_store_template, root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MLFLOW_CCFV_DATA", raising=False)
        mp.delenv("MLFLOW_CCFV_CACHE", raising=False)
        _reset_mlflow_state()
        mlflow.set_tracking_uri(uri)
        runner = CliRunner()
        made = runner.invoke(
            main, ["synth", "--out", "data", "--task", "spleen", "--n-cases", "3", "--shape", "24,24,16"]
        )
        assert made.exit_code == 0, made.output
        reg = runner.invoke(
            main,
            ["register", "--name", "good", "--source-dataset", "none", "--small-spec", "UNet:1:2"]
            + ["--random-init", "true", "--bank", "b"],
        )
        assert reg.exit_code == 0, reg.output
        (root / "ok-spec.json").write_text(json.dumps(SPEC))
        yield World(root, root / "data", uri)
        _reset_mlflow_state()
        mlflow.set_tracking_uri(None)


# --------------------------------------------------------------------------- row builders
def _json(folder: Path, edit: Callable[[dict], object]) -> None:
    meta_path = folder / "dataset.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)  # edits in place
    meta_path.write_text(json.dumps(meta))


def _entry(folder: Path, key: str, value: str) -> None:
    _json(folder, lambda m: m["training"][0].__setitem__(key, value))


def _traversal(w: World) -> list[str]:
    folder = w.task("Task91_Traversal")
    _entry(folder, "image", "../../../../../../../../etc/passwd")
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _absolute(w: World) -> list[str]:
    folder = w.task("Task92_Absolute")
    outside = w.root / "outside.nii.gz"
    outside.write_bytes((folder / "imagesTr" / "spleen_000.nii.gz").read_bytes())
    _entry(folder, "image", str(outside))
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _symlink_out(w: World) -> list[str]:
    folder = w.task("Task93_SymlinkOut")
    outside = w.root / "elsewhere.nii.gz"
    image = folder / "imagesTr" / "spleen_000.nii.gz"
    outside.write_bytes(image.read_bytes())  # a valid NIfTI outside: must still be refused, not scored
    image.unlink()
    image.symlink_to(outside)
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _symlink_dir_out(w: World) -> list[str]:
    folder = w.task("Task94_SymlinkDir")
    outside = w.root / "labels-elsewhere"
    (folder / "labelsTr").rename(outside)
    (folder / "labelsTr").symlink_to(outside, target_is_directory=True)
    return ["verify", str(folder)]


def _symlink_loop(w: World) -> list[str]:
    folder = w.task("Task95_Loop")
    image = folder / "imagesTr" / "spleen_000.nii.gz"
    image.unlink()
    loop = folder / "imagesTr" / "loop.nii.gz"
    image.symlink_to(loop)
    loop.symlink_to(image)
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _nested(w: World) -> list[str]:
    folder = w.task("Task96_Nested")
    (folder / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["verify", str(folder)]


def _not_json(w: World) -> list[str]:
    folder = w.task("Task97_NotJson")
    (folder / "dataset.json").write_text("{labels: oops")
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _json_list(w: World) -> list[str]:
    folder = w.task("Task98_List")
    (folder / "dataset.json").write_text("[1, 2, 3]")
    return ["verify", str(folder)]


def _entry_without_label(w: World) -> list[str]:
    folder = w.task("Task99_NoLabel")
    _json(folder, lambda m: m["training"][0].pop("label"))
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _entry_number(w: World) -> list[str]:
    folder = w.task("Task90_Number")
    _entry(folder, "image", 42)  # type: ignore[arg-type]
    return ["verify", str(folder)]


def _training_not_list(w: World) -> list[str]:
    folder = w.task("Task89_TrainingDict")
    _json(folder, lambda m: m.__setitem__("training", {"image": "x"}))
    return ["verify", str(folder)]


def _no_background(w: World) -> list[str]:
    folder = w.task("Task88_NoBackground")
    _json(folder, lambda m: m["labels"].pop("0"))
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _duplicate_case(w: World) -> list[str]:
    folder = w.task("Task87_Duplicate")
    _json(folder, lambda m: m["training"].append(dict(m["training"][0])))
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _missing_image(w: World) -> list[str]:
    folder = w.task("Task86_MissingImage")
    (folder / "imagesTr" / "spleen_001.nii.gz").unlink()
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _corrupt_image(w: World) -> list[str]:
    folder = w.task("Task85_Corrupt")
    path = folder / "imagesTr" / "spleen_001.nii.gz"
    path.write_bytes(path.read_bytes()[:100])
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _all_zero_labels(w: World) -> list[str]:
    import nibabel as nib
    import numpy as np

    folder = w.task("Task84_Empty")
    for path in (folder / "labelsTr").iterdir():
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(img.shape, dtype=np.uint8), img.affine), str(path))
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _one_empty_label(w: World, name: str) -> Path:
    import nibabel as nib
    import numpy as np

    folder = w.task(name)
    path = folder / "labelsTr" / "spleen_001.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, dtype=np.uint8), img.affine), str(path))
    return folder


def _dataset_json_symlink_out(w: World) -> list[str]:
    folder = w.task("Task80_JsonLink")
    outside = w.root / "dataset-elsewhere.json"
    (folder / "dataset.json").rename(outside)  # a valid dataset.json outside: must still be refused
    (folder / "dataset.json").symlink_to(outside)
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _pickled_checkpoint(w: World) -> list[str]:
    from mlflow_ccfv.networks import NetworkSpec, build_network

    path = w.root / "module.pt"
    torch.save(build_network(NetworkSpec(SPEC["architecture"], SPEC["kwargs"])), path)  # a whole module, pickled
    return (
        REGISTER[:2] + ["pickled"] + REGISTER[3:] + ["--spec", str(w.root / "ok-spec.json"), "--checkpoint", str(path)]
    )


def _garbage_checkpoint(w: World) -> list[str]:
    path = w.root / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all " * 8)
    return (
        REGISTER[:2] + ["garbage"] + REGISTER[3:] + ["--spec", str(w.root / "ok-spec.json"), "--checkpoint", str(path)]
    )


def _million(w: World) -> list[str]:
    folder = w.data / "Task83_Huge"
    folder.mkdir()
    n = 20_000  # the same code path as a million entries (tested by hand: one capped message)
    meta = {
        "labels": {"0": "background", "1": "x"},
        "modality": {"0": "CT"},
        "training": [{"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"} for i in range(n)],
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    return ["score", "--dataset", str(folder), "--bank", "b"]


def _spec(w: World, name: str, kwargs: dict | None = None, text: str | None = None) -> list[str]:
    spec = dict(SPEC, kwargs={**SPEC["kwargs"], **(kwargs or {})})
    path = w.root / f"{name}.json"
    path.write_text(text if text is not None else json.dumps(spec))
    return ["register", "--name", name, "--source-dataset", "none", "--spec", str(path), "--random-init", "true"]


def _checkpoint(w: World, name: str, value: float) -> list[str]:
    from mlflow_ccfv.networks import NetworkSpec, random_state_dict

    state = random_state_dict(NetworkSpec(SPEC["architecture"], SPEC["kwargs"]), 0)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = value
    path = w.root / f"{name}.pt"
    torch.save(state, path)
    return ["register", "--name", name, "--source-dataset", "none", "--spec", str(w.root / "ok-spec.json")] + [
        "--checkpoint",
        str(path),
    ]


def _unreachable(w: World) -> list[str]:
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    return ["score", "--dataset", "Task09", "--data-root", str(w.data), "--bank", "b"]


SCORE = ["score", "--dataset", "Task09", "--data-root", "data", "--bank", "b"]
FINETUNE = ["finetune", "--model", "models:/good/1", "--dataset", "Task09", "--data-root", "data"]
PRETRAIN = ["pretrain", "--dataset", "Task09", "--data-root", "data", "--bank", "b2"]
REGISTER = ["register", "--name", "new", "--source-dataset", "none"]
SYNTH = ["synth", "--out", "synth-out", "--task", "spleen", "--n-cases", "2"]


@dataclass
class Row:
    kind: str
    args: Callable[[World], list[str]] | list[str]
    status: int
    fragment: str

    def argv(self, w: World) -> list[str]:
        return self.args(w) if callable(self.args) else list(self.args)


OPTION, DATASET, REGISTRY, TRACKING = 2, 3, 4, 6
ROWS = [
    # score: sampler options, each named
    Row("roi 100000 (a 4 PB window)", SCORE + ["--roi-size", "100000,100000,100000"], OPTION, "--roi-size"),
    Row("roi beyond memory", SCORE + ["--roi-size", "4000,4000,4000"], OPTION, "of memory"),
    Row("roi beyond the volume", SCORE + ["--roi-size", "200,200,200"], OPTION, "mostly padding"),
    Row("roi of two sides", SCORE + ["--roi-size", "16,16"], OPTION, "--roi-size must be 3 integers"),
    Row("roi not numbers", SCORE + ["--roi-size", "abc"], OPTION, "--roi-size must be comma-separated integers"),
    Row("roi zero side", SCORE + ["--roi-size", "0,16,16"], OPTION, "--roi-size must be integers >= 1"),
    Row("roi a million characters", SCORE + ["--roi-size", "1," * 500_000], OPTION, "characters long"),
    Row("global samples 0", SCORE + ["--global-samples", "0"], OPTION, "--global-samples must be >= 1"),
    Row("global samples text", SCORE + ["--global-samples", "many"], OPTION, "--global-samples must be an integer"),
    Row("sampler seed abc", SCORE + ["--sampler-seed", "abc"], OPTION, "--sampler-seed must be an integer"),
    Row("sampler seed negative", SCORE + ["--sampler-seed", "-1"], OPTION, "--sampler-seed must be >= 0"),
    Row("overlap abc", SCORE + ["--overlap", "abc"], OPTION, "--overlap must be a number"),
    Row("overlap 1", SCORE + ["--overlap", "1"], OPTION, "--overlap must be below 1"),
    Row("overlap nan", SCORE + ["--overlap", "nan"], OPTION, "--overlap must be a finite number"),
    Row("layer budgets zero", SCORE + ["--layer-budgets", "0,100"], OPTION, "--layer-budgets must be integers >= 1"),
    Row("unknown method", SCORE + ["--methods", "ccfv,magic"], OPTION, "Unknown method(s) magic"),
    Row("unknown split", SCORE + ["--split", "validation"], OPTION, "'validation' is not one of"),
    Row("device tpu", SCORE + ["--device", "tpu"], OPTION, "device must be cpu, cuda or cuda:N"),
    Row("device cuda:99", SCORE + ["--device", "cuda:99"], OPTION, "device 'cuda:99'"),
    Row("force maybe", SCORE + ["--force", "maybe"], OPTION, "--force must be true or false"),
    Row("misspelled -P name", SCORE + ["--roi_sise", "32"], OPTION, "Valid parameters"),
    # score: registry
    Row(
        "empty bank", ["score", "--dataset", "Task09", "--data-root", "data", "--bank", "nobody"], REGISTRY, "is empty"
    ),
    Row("missing model", SCORE + ["--models", "models:/nope/1"], REGISTRY, "mlflow-ccfv bank"),
    Row("missing version", SCORE + ["--models", "models:/good/7"], REGISTRY, "'good' has versions 1"),
    Row("bank with a quote", SCORE[:-1] + ["b' OR '1'='1"], OPTION, "quotes"),
    Row("rank bank with a quote", ["rank", "--dataset", "Task09", "--bank", "x'y"], OPTION, "quotes"),
    Row(
        "register name with a slash",
        REGISTER[:2] + ["a/b"] + REGISTER[3:] + ["--small-spec", "UNet:1:2"] + ["--random-init", "1"],
        OPTION,
        "Registered model name 'a/b'",
    ),
    Row(
        "pretrain name with a slash (before training)",
        PRETRAIN + ["--name", "bad name/", "--steps", "1"],
        OPTION,
        "Registered model name",
    ),
    Row("cache dir is a file", SCORE + ["--cache-dir", "ok-spec.json"], OPTION, "is a file"),
    Row("cache dir under a file", SCORE + ["--cache-dir", "ok-spec.json/cache"], OPTION, "cannot be created"),
    Row("not a models URI", SCORE + ["--models", "good"], OPTION, "Expected models:/"),
    # datasets: containment, structure, content
    Row("no such dataset", ["score", "--dataset", "Task42", "--data-root", "data", "--bank", "b"], DATASET, "Task42"),
    Row("path traversal ../../etc/passwd", _traversal, DATASET, "outside the dataset folder"),
    Row("absolute path outside", _absolute, DATASET, "outside the dataset folder"),
    Row("symlinked file leading out", _symlink_out, DATASET, "outside the dataset folder"),
    Row("symlinked folder leading out", _symlink_dir_out, DATASET, "outside the dataset folder"),
    Row("symlink loop", _symlink_loop, DATASET, "symlink loop"),
    Row("deeply nested dataset.json", _nested, DATASET, "nested too deeply"),
    Row("dataset.json not JSON", _not_json, DATASET, "is not valid JSON"),
    Row("dataset.json a list", _json_list, DATASET, "must hold a JSON object"),
    Row("training entry without label", _entry_without_label, DATASET, "training entry 0"),
    Row("training entry a number", _entry_number, DATASET, "training entry 0"),
    Row("training not a list", _training_not_list, DATASET, "'training' must be a list"),
    Row("labels without background", _no_background, DATASET, "must declare 0 (background)"),
    Row("case listed twice", _duplicate_case, DATASET, "listed twice"),
    Row("missing image file", _missing_image, DATASET, "does not exist"),
    Row("truncated image file", _corrupt_image, DATASET, "cannot be read as NIfTI"),
    Row("all-zero label maps", _all_zero_labels, DATASET, "all background"),
    Row("20k broken entries", _million, DATASET, "stopped after 1000 failing cases"),
    Row(
        "one empty label map (score, before any run)",
        lambda w: ["score", "--dataset", str(_one_empty_label(w, "Task82_OneEmpty")), "--bank", "b"],
        DATASET,
        "spleen_001.nii.gz is all background (0)",
    ),
    Row(
        "one empty label map (verify)",
        lambda w: ["verify", str(_one_empty_label(w, "Task81_OneEmptyVerify"))],
        DATASET,
        "spleen_001.nii.gz is all background (0)",
    ),
    Row("dataset.json a symlink leading out", _dataset_json_symlink_out, DATASET, "outside the dataset folder"),
    # register: specification fields and weights
    Row("spec channels 10**9", lambda w: _spec(w, "c1", {"channels": [10**9, 16]}), OPTION, "kwargs.channels"),
    Row("spec channels abc", lambda w: _spec(w, "c2", {"channels": "abc"}), OPTION, "kwargs.channels"),
    Row("spec spatial_dims 2", lambda w: _spec(w, "c3", {"spatial_dims": 2}), OPTION, "kwargs.spatial_dims"),
    Row("spec 0 in_channels", lambda w: _spec(w, "c4", {"in_channels": 0}), OPTION, "kwargs.in_channels"),
    Row("spec 0 out_channels", lambda w: _spec(w, "c5", {"out_channels": 0}), OPTION, "kwargs.out_channels"),
    Row("spec channels float", lambda w: _spec(w, "c6", {"channels": [8.5, 16]}), OPTION, "kwargs.channels"),
    Row("spec unknown architecture", lambda w: _spec(w, "c7", text='{"architecture": "Magic"}'), OPTION, "Magic"),
    Row("spec not JSON", REGISTER + ["--spec", "{oops", "--random-init", "true"], OPTION, "Not a network spec"),
    Row("spec deeply nested", REGISTER + ["--spec", "[" * 50_000, "--random-init", "true"], OPTION, "Not a network"),
    Row(
        "spec deeper than its patch (9 levels, 32^3)",
        lambda w: _spec(w, "deep", {"channels": [4] * 9, "strides": [2] * 8}),
        OPTION,
        "cannot take a 32x32x32 patch",
    ),
    Row("pickled checkpoint", _pickled_checkpoint, OPTION, "holds the Python object"),
    Row("garbage checkpoint", _garbage_checkpoint, OPTION, "not a PyTorch checkpoint"),
    Row("NaN weights", lambda w: _checkpoint(w, "nan", math.nan), OPTION, "NaN or inf"),
    Row("inf weights", lambda w: _checkpoint(w, "inf", math.inf), OPTION, "NaN or inf"),
    Row("small spec letters", REGISTER + ["--small-spec", "UNet:x:2", "--random-init", "true"], OPTION, "UNet:1:3"),
    Row("missing checkpoint", REGISTER + ["--small-spec", "UNet:1:2", "--checkpoint", "no.pt"], OPTION, "no.pt"),
    Row(
        "random-init maybe", REGISTER + ["--small-spec", "UNet:1:2", "--random-init", "maybe"], OPTION, "--random-init"
    ),
    Row(
        "tag without =",
        REGISTER + ["--small-spec", "UNet:1:2", "--random-init", "1", "--tag", "x"],
        OPTION,
        "KEY=VALUE",
    ),
    Row(
        "register patch 0",
        REGISTER + ["--small-spec", "UNet:1:2", "--random-init", "1", "--patch-size", "0,0,0"],
        OPTION,
        "'--patch-size': --patch-size must be integers >= 1",
    ),
    *[
        Row(
            f"register tag in the reserved {prefix} namespace",
            REGISTER + ["--small-spec", "UNet:1:2", "--random-init", "1", "--tag", f"{prefix}rank.Task09=1"],
            OPTION,
            f"namespace {prefix!r}",
        )
        for prefix in ("transferability.", "finetune.", "ccfv.", "pretrain.", "weights.")
    ],
    Row("nnU-Net fold five", REGISTER + ["--nnunet", "x", "--fold", "five"], OPTION, "--fold must be a fold number"),
    # training: budgets and memory
    Row("finetune patch 512 (24 GB)", FINETUNE + ["--patch-size", "512,512,512"], OPTION, "of memory"),
    Row("finetune patch of two sides", FINETUNE + ["--patch-size", "16,16"], OPTION, "--patch-size must be 3"),
    Row("finetune 0 steps", FINETUNE + ["--steps", "0"], OPTION, "--steps"),
    Row("finetune negative learning rate", FINETUNE + ["--learning-rate", "-1"], OPTION, "--learning-rate"),
    Row("finetune unknown optimizer", FINETUNE + ["--optimizer", "adam2"], OPTION, "--optimizer"),
    Row("finetune foreground 2", FINETUNE + ["--foreground-fraction", "2"], OPTION, "--foreground-fraction"),
    Row(
        "finetune missing model",
        ["finetune", "--model", "models:/nope/1", "--dataset", "Task09"] + ["--data-root", "data"],
        REGISTRY,
        "mlflow-ccfv bank",
    ),
    Row(
        "pretrain unknown architecture",
        PRETRAIN + ["--architecture", "Magic"],
        OPTION,
        "'--architecture': 'Magic' is not one of UNet",
    ),
    Row("pretrain channels text", PRETRAIN + ["--channels", "flair"], OPTION, "--channels"),
    # verify, synth: tolerances, shapes (before any folder is made)
    Row(
        "verify affine tol -1",
        ["verify", "Task09", "--data-root", "data", "--affine-tol", "-1"],
        OPTION,
        "--affine-tol",
    ),
    Row(
        "verify test fraction 1",
        ["verify", "Task09", "--data-root", "data", "--test-fraction", "1"],
        OPTION,
        "--test-fraction",
    ),
    Row("synth zero shape", SYNTH + ["--shape", "0,0,0"], OPTION, "shape must be three integer sides"),
    Row("synth zero spacing", SYNTH + ["--spacing", "0,5,5"], OPTION, "spacing must be three voxel sizes"),
    Row("synth nan spacing", SYNTH + ["--spacing", "nan,5,5"], OPTION, "spacing must be three voxel sizes"),
    Row("synth two sides", SYNTH + ["--shape", "48,48"], OPTION, "three numbers"),
    Row("synth 0 cases", SYNTH + ["--n-cases", "0"], OPTION, "--n-cases"),
    Row("synth unknown task", ["synth", "--out", "synth-out", "--task", "brain"], DATASET, "brain"),
    # demo, study, read-only commands, the tracking server
    Row("demo 1 case", ["demo", "--n-cases", "1"], OPTION, "--n-cases"),
    Row("demo device", ["demo", "--device", "gpu"], OPTION, "--device"),
    Row("study shape", ["study", "--shape", "4,4,4"], OPTION, "--shape must be integers >= 16"),
    Row("rank of an unscored dataset", ["rank", "--dataset", "Task42"], REGISTRY, "No version in the registry"),
    Row("bank that is empty", ["bank", "--bank", "nobody"], REGISTRY, "is empty"),
    Row("tracking server unreachable", _unreachable, TRACKING, "does not answer"),
]


def _store(uri: str) -> dict[str, list]:
    """Every row of every table of the sqlite store: nothing may be added, changed or removed (stricter
    and ~50x faster than listing experiments, runs, logged models and versions through the client)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"))) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in sorted(tables)}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("mlflow.db")}


def test_catalogue_covers_every_exit_status_and_forty_kinds():
    assert len(ROWS) >= 40 and len({r.kind for r in ROWS}) == len(ROWS)
    assert {r.status for r in ROWS} == set(EXIT_CODES.values()) - {0, 1, 5}  # 5: estimator failures, not input


@pytest.mark.parametrize("row", ROWS, ids=[r.kind for r in ROWS])
def test_bad_input_is_refused_by_name_and_leaves_nothing(world, row, monkeypatch):
    monkeypatch.chdir(world.root)
    argv = row.argv(world)  # builds the row's broken files first
    store, files = _store(world.uri), _files(world.root)
    try:
        result = CliRunner().invoke(main, argv)
    finally:
        mlflow.set_tracking_uri(world.uri)
    output = result.output
    assert result.exit_code == row.status, f"{row.kind}: exit {result.exit_code}\n{output[-3000:]}"
    assert isinstance(result.exception, SystemExit), f"{row.kind}: {result.exception!r}"
    assert row.fragment in output, f"{row.kind}: {row.fragment!r} not in\n{output[-3000:]}"
    assert "Traceback" not in output
    assert "weights_only` set to `False`" not in output and "weights_only=False" not in output
    assert len(output) < 8000, f"{row.kind}: {len(output)} characters of output"
    assert _store(world.uri) == store, f"{row.kind} wrote to the tracking store"
    assert _files(world.root) == files, f"{row.kind} left files: {sorted(_files(world.root) ^ files)[:5]}"
    assert not os.path.exists(world.root / "synth-out")
