"""A logged model's requirements install from PyPI or from the model's own files, never from a version
no index serves; written with public MLflow APIs only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from mlflow_ccfv.networks import random_state_dict, small_spec
from mlflow_ccfv.tracking.flavor import save_model

#: ``name==version`` of a public release: no local version label (``+cpu``) that only one index serves.
PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][0-9A-Za-z.!-]*)$")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = small_spec("UNet", 1, 3)
    path = tmp_path_factory.mktemp("flavor") / "model"
    save_model(spec, random_state_dict(spec, 0), path)
    return path


def _requirements(model_dir: Path) -> list[str]:
    return [l.strip() for l in (model_dir / "requirements.txt").read_text().splitlines() if l.strip()]


def test_every_requirement_is_a_pinned_release_or_a_file_inside_the_model(model_dir):
    lines = _requirements(model_dir)
    names = []
    for line in lines:
        match = PINNED.match(line)
        if match:
            names.append(match["name"].lower())
            continue
        path = (model_dir / line).resolve()
        assert path.is_file() and model_dir.resolve() in path.parents, (
            f"{line!r} is neither name==version nor a model file"
        )
    assert {"mlflow", "torch", "monai"} <= set(names)
    assert "mlflow-ccfv" not in names  # no index serves it: the model carries the wheel instead
    (wheel_line,) = [l for l in lines if l.endswith(".whl")]
    with zipfile.ZipFile(model_dir / wheel_line) as wheel:
        files = set(wheel.namelist())
        (metadata,) = [f for f in files if f.endswith(".dist-info/METADATA")]
        text = wheel.read(metadata).decode()
    assert "mlflow_ccfv/tracking/flavor.py" in files and "mlflow_ccfv/networks/specs.py" in files
    assert "Name: mlflow-ccfv" in text and "Requires-Dist: monai" in text


def test_the_wheel_carries_the_code_without_the_shipped_bank(model_dir):
    """Every model carries the package, not its 2.8 MB of package data (the demo's pre-trained bank)."""
    (wheel,) = (model_dir / "wheels").glob("mlflow_ccfv-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.startswith("mlflow_ccfv/shipped_bank/")]
    assert not [n for n in names if n.endswith((".safetensors", ".pt"))]
    assert "mlflow_ccfv/pipelines/shipped_bank.py" in names  # the code that reads a bank stays
    assert wheel.stat().st_size < 600_000, wheel.stat().st_size
    shipped = sum(p.stat().st_size for p in (REPO / "mlflow_ccfv" / "shipped_bank").iterdir())
    assert shipped > 2_000_000  # what used to ride along in every model


def test_a_wheel_built_from_sources_is_reused_for_the_same_sources_only(tmp_path, monkeypatch):
    """The wheel cache is keyed by the sources' content: the same sources get the kept wheel (no second
    ``pip wheel``), a changed source file a new entry; the shipped bank changes neither."""
    import shutil

    from mlflow_ccfv.tracking import environment

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "src"
    shutil.copytree(REPO / "mlflow_ccfv", root / "mlflow_ccfv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, root / name)
    assert environment._source_digest(root) == environment._source_digest(REPO)
    first = environment._cached_build(root, tmp_path / "out1")
    assert first.parent.parent == tmp_path / "xdg" / "mlflow-ccfv" / "wheels"
    assert first.parent.name == environment._source_digest(root)
    stamp = first.stat().st_mtime_ns
    again = environment._cached_build(root, tmp_path / "out2")
    assert again == first and again.stat().st_mtime_ns == stamp
    assert not (tmp_path / "out2").exists()  # nothing built the second time
    (root / "mlflow_ccfv" / "shipped_bank" / "extra.bin").write_bytes(b"data, not code")
    assert environment._cached_build(root, tmp_path / "out3") == first
    with zipfile.ZipFile(first) as zf:
        assert zf.read("mlflow_ccfv/options.py") == (root / "mlflow_ccfv" / "options.py").read_bytes()
    options = root / "mlflow_ccfv" / "options.py"
    options.write_text(options.read_text() + "\n# changed\n")
    assert environment._source_digest(root) != first.parent.name  # a changed source: another entry, built anew


def test_python_env_and_conda_env_use_the_same_requirements(model_dir):
    from mlflow.models import Model

    env = Model.load(str(model_dir / "MLmodel")).flavors["python_function"]["env"]
    assert env == {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}
    python_env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    assert python_env["dependencies"] == ["-r requirements.txt"]
    assert python_env["python"] == ".".join(map(str, sys.version_info[:3]))
    conda = yaml.safe_load((model_dir / "conda.yaml").read_text())
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert pip == _requirements(model_dir)


def test_no_private_mlflow_helpers_in_the_package():
    private = re.compile(r"mlflow(\.\w+)*\._(?!_)\w+|from mlflow(\.\w+)* import [^\n]*\b_(?!_)\w+")
    found = [
        f"{p.relative_to(REPO)}: {m.group(0)}"
        for p in (REPO / "mlflow_ccfv").rglob("*.py")
        for m in private.finditer(p.read_text())
    ]
    assert not found, found


def _see_this_interpreters_packages(venv: Path, shim: Path) -> None:
    """Make the packages of the interpreter running the tests (itself perhaps a virtual environment, which
    ``venv --system-site-packages`` cannot chain to) visible in ``venv``, except this project's own install:
    a folder of links to every entry of its site-packages but ``mlflow_ccfv`` and the ``.pth`` hooks,
    named in a ``.pth`` file of ``venv``."""
    import site

    shim.mkdir()
    for folder in [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]:
        for entry in folder.iterdir():
            own = entry.name.startswith(("mlflow_ccfv", "__editable__", "mlflow-ccfv"))
            if own or entry.suffix == ".pth" or (shim / entry.name).exists():
                continue
            (shim / entry.name).symlink_to(entry)
    (target,) = (venv / "lib").glob("python*/site-packages")
    (target / "outer-site.pth").write_text(f"{shim}\n")


@pytest.mark.slow
def test_requirements_install_in_a_fresh_virtual_environment(model_dir, tmp_path):
    """``pip install -r requirements.txt`` from the model folder, offline, in a new venv (sharing this
    interpreter's packages for torch & co.): the package then imports from the venv and loads the model,
    and a model saved there (package installed from the wheel, no source tree) carries a wheel too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    _see_this_interpreters_packages(venv, tmp_path / "outer-site")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-q", "-r", "requirements.txt"],
        cwd=model_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    script = (
        "import sys, numpy as np, mlflow.pyfunc, mlflow_ccfv\n"
        "assert mlflow_ccfv.__file__.startswith(sys.prefix), mlflow_ccfv.__file__\n"
        f"m = mlflow.pyfunc.load_model({str(model_dir)!r})\n"
        "assert m.predict(np.zeros((1, 45, 39, 35), dtype='float32')).shape == (45, 39, 35)\n"
        "from mlflow_ccfv.networks import small_spec, random_state_dict\n"
        "from mlflow_ccfv.tracking.flavor import save_model\n"
        "s = small_spec('UNet', 1, 3)\n"
        "save_model(s, random_state_dict(s, 1), sys.argv[1])\n"
    )
    again = tmp_path / "again"
    done = subprocess.run([python, "-c", script, str(again)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (again / "wheels").glob("mlflow_ccfv-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "mlflow_ccfv/tracking/environment.py" in zf.namelist()
    assert f"wheels/{wheel.name}" in _requirements(again)
