"""The Python environment logged with a model: requirements that install from PyPI or from the model itself.

A model directory written by :func:`~mlflow_ccfv.tracking.flavor.save_model` gets, in MLflow's
documented formats:

- ``wheels/mlflow_ccfv-<version>-py3-none-any.whl``: this package's code, built once per process (no
  index serves ``mlflow-ccfv``, so the model carries it), without its package data: the shipped bank
  (``mlflow_ccfv/shipped_bank/``, the demo's pre-trained weights) is not needed to load or run a model;
  ``demo`` run from such an install says to reinstall the package;
- ``requirements.txt``: ``mlflow``, ``torch``, ``monai`` (and ``dynamic-network-architectures`` for
  nnU-Net networks) pinned to the versions that wrote the model, then the wheel by its path relative
  to the model directory (MLflow installs a model's requirements from inside its directory; by hand:
  ``cd <model dir> && pip install -r requirements.txt``);
- ``python_env.yaml`` (``python``, ``build_dependencies``, ``dependencies: [-r requirements.txt]``)
  and ``conda.yaml`` (python, pip, and the same requirements under ``pip``).

The wheel is built from the source tree when the package runs from one (an editable install or a
clone), else repacked from the installed distribution's files (its ``RECORD``). A wheel built from
sources is kept under ``$XDG_CACHE_HOME/mlflow-ccfv/wheels/<digest of the sources>/`` (default
``~/.cache``), so the next process that logs a model from the same sources copies it instead of running
``pip wheel`` again (about a second each; a ``register`` loop over a bank paid it per model).
"""

from __future__ import annotations

import atexit
import base64
import csv
import hashlib
import importlib.metadata
import io
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import yaml

__all__ = ["WHEELS_DIR", "project_wheel", "write_environment"]

_logger = logging.getLogger(__name__)

DISTRIBUTION = "mlflow-ccfv"
WHEELS_DIR = "wheels"
REQUIREMENTS_FILE = "requirements.txt"
CONDA_FILE = "conda.yaml"
PYTHON_ENV_FILE = "python_env.yaml"

_wheel_cache: dict[str, Path] = {}
#: Package folders holding data, not code, left out of the model's wheel.
DATA_FOLDERS = ("shipped_bank",)


def _source_tree() -> Path | None:
    """The project folder (``pyproject.toml`` naming this distribution) the package runs from, if any."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{DISTRIBUTION}"' in pyproject.read_text():
        return root
    return None


#: What a wheel built from sources is made of, besides the package's code.
_PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", *DATA_FOLDERS)


def _source_files(root: Path) -> list[Path]:
    """The files :func:`_build_from_source` copies, relative to ``root``, sorted."""
    files: list[Path] = []
    for folder, dirs, names in os.walk(root / "mlflow_ccfv"):
        ignored = _IGNORED(folder, [*dirs, *names])
        dirs[:] = sorted(d for d in dirs if d not in ignored)
        files += [Path(folder, n).relative_to(root) for n in names if n not in ignored]
    files += [Path(n) for n in _PROJECT_FILES if (root / n).is_file()]
    return sorted(files)


def _source_digest(root: Path) -> str:
    """SHA-256 over the relative path and bytes of every file the wheel is built from."""
    digest = hashlib.sha256()
    for rel in _source_files(root):
        data = (root / rel).read_bytes()
        digest.update(f"{rel.as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _wheel_cache_dir() -> Path:
    """Where wheels built from sources are kept: ``$XDG_CACHE_HOME/mlflow-ccfv/wheels`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlflow-ccfv" / "wheels"


def _cached_build(root: Path, out: Path) -> Path:
    """The wheel of the sources under ``root``: the cached one when these exact sources were built before,
    else a new build, then kept in the cache (published by renaming a complete folder, so a concurrent
    reader sees all of it or none; where the cache cannot be written, the build in ``out`` is used)."""
    entry = _wheel_cache_dir() / _source_digest(root)
    found = sorted(entry.glob("mlflow_ccfv-*.whl")) if entry.is_dir() else []
    if found:
        return found[0]
    wheel = _build_from_source(root, out)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        shutil.copy2(wheel, staging / wheel.name)
        try:
            staging.rename(entry)
        except OSError:  # another process published it first: same sources, same wheel
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        _logger.debug("wheel cache %s not written: %s", entry, exc)
        return wheel
    cached = entry / wheel.name
    return cached if cached.is_file() else wheel


def _build_from_source(root: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the sources (the tree itself stays untouched, no build/ folder)."""
    src = out / "src"
    for rel in _source_files(root):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, src / rel)
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check", "-w", str(out)]
    done = subprocess.run([*base, "--no-build-isolation", str(src)], capture_output=True, text=True)
    if done.returncode != 0:  # no setuptools/wheel here: let pip fetch the build backend
        done = subprocess.run([*base, str(src)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Could not build the {DISTRIBUTION} wheel from {root}: {done.stderr[-2000:]}")
    (wheel,) = out.glob("mlflow_ccfv-*.whl")
    return wheel


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _repack_installed(out: Path) -> Path:
    """A wheel made of the installed distribution's files (those its ``RECORD`` lists) but its package data."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    if not any(f.as_posix() == "mlflow_ccfv/__init__.py" for f in dist.files or []):
        raise RuntimeError(
            f"Cannot log the {DISTRIBUTION} package with the model: it is neither run from its source tree nor "
            "installed from a wheel (its RECORD lists no package files); install it with `pip install .` or "
            "`pip install -e .` from a clone."
        )
    version = dist.version
    name = f"mlflow_ccfv-{version}-py3-none-any.whl"
    info = f"mlflow_ccfv-{version}.dist-info"
    rows: list[list[str]] = []
    with zipfile.ZipFile(out / name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in dist.files or []:
            posix = file.as_posix()
            if (
                posix.endswith(".pyc")
                or posix.startswith("..")
                or posix.endswith(("/RECORD", "INSTALLER", "direct_url.json"))
            ):
                continue
            if not (posix.startswith("mlflow_ccfv/") or posix.startswith(f"{info}/")):
                continue
            if any(posix.startswith(f"mlflow_ccfv/{folder}/") for folder in DATA_FOLDERS):
                continue
            data = Path(str(file.locate())).read_bytes()
            zf.writestr(posix, data)
            rows.append([posix, _record_hash(data), str(len(data))])
        rows.append([f"{info}/RECORD", "", ""])
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        zf.writestr(f"{info}/RECORD", buffer.getvalue())
    return out / name


def project_wheel() -> Path:
    """This package as a wheel, made once per process: from the wheel cache, a build into a temporary folder
    removed at exit, or a repack of the installed files."""
    if "wheel" in _wheel_cache and _wheel_cache["wheel"].is_file():
        return _wheel_cache["wheel"]
    out = Path(tempfile.mkdtemp(prefix="mlflow-ccfv-wheel-"))
    atexit.register(shutil.rmtree, out, True)
    root = _source_tree()
    wheel = _cached_build(root, out) if root is not None else _repack_installed(out)
    _logger.debug("built %s", wheel)
    _wheel_cache["wheel"] = wheel
    return wheel


def _pinned(distribution: str) -> str:
    version = importlib.metadata.version(distribution).split("+")[0]  # local tags (+cpu) are not on PyPI
    return f"{distribution}=={version}"


def write_environment(path: str | os.PathLike, extra_distributions: Sequence[str] = ()) -> list[str]:
    """Write the wheel, ``requirements.txt``, ``python_env.yaml`` and ``conda.yaml`` into model dir ``path``.

    ``extra_distributions``: installed distributions the model needs besides mlflow, torch and monai
    (pinned to their installed versions). Returns the requirement lines.
    """
    path = Path(path)
    wheel = project_wheel()
    (path / WHEELS_DIR).mkdir(exist_ok=True)
    shutil.copy2(wheel, path / WHEELS_DIR / wheel.name)
    reqs = [f"mlflow=={mlflow.__version__}", *(_pinned(d) for d in ("torch", "monai", *extra_distributions))]
    reqs.append(f"{WHEELS_DIR}/{wheel.name}")
    (path / REQUIREMENTS_FILE).write_text("\n".join(reqs) + "\n")
    python = platform.python_version()
    build = [_pinned(d) for d in ("pip", "setuptools", "wheel") if _installed(d)]
    (path / PYTHON_ENV_FILE).write_text(
        yaml.safe_dump(
            {"python": python, "build_dependencies": build, "dependencies": [f"-r {REQUIREMENTS_FILE}"]},
            sort_keys=False,
        )
    )
    (path / CONDA_FILE).write_text(
        yaml.safe_dump(
            {
                "name": "mlflow-env",
                "channels": ["conda-forge"],
                "dependencies": [f"python={python}", "pip", {"pip": reqs}],
            },
            sort_keys=False,
        )
    )
    return reqs


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
