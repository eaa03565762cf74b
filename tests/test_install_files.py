"""The install route off this machine: constraints.txt pins every direct dependency at the version these
tests run with, .ci/run installs through its own virtual environment with the CPU build of torch first,
conda.yaml has the same CPU route, and the README gives a user-only install line."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, pinned = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = pinned.strip()
    return pins


def _direct_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    names = {canonicalize_name(Requirement(r).name) for r in requirements}
    return names - {canonicalize_name(project["name"])}


def test_constraints_pin_every_direct_dependency():
    missing = _direct_dependencies() - set(_pins())
    assert not missing, f"constraints.txt does not pin {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(_direct_dependencies()))
def test_the_pinned_version_is_the_one_tested(name):
    """The environment running these tests (CI's, installed through constraints.txt) has the pins."""
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.skip(f"{name} is not installed here (an extra)")
    assert installed.split("+")[0] == _pins()[name], f"{name}: installed {installed}, pinned {_pins()[name]}"


def test_ci_installs_the_cpu_torch_into_its_own_virtual_environment():
    script = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any("-m venv" in c for c in commands)
    torch_step = next(i for i, c in enumerate(commands) if CPU_INDEX in c)
    project_step = next(i for i, c in enumerate(commands) if "-c constraints.txt -e" in c)
    assert torch_step < project_step and "torch_pin" in commands[torch_step]
    for tool in ("ruff check", "mypy", "pytest"):
        (line,) = [c for c in commands if f"-m {tool}" in c]
        assert line.startswith('"$py" -m'), f"{tool} does not run through the virtual environment: {line}"
    assert "set -euo pipefail" in script  # pytest's exit 5 (no test collected) fails the script


def test_conda_environment_takes_the_cpu_build_and_the_pins():
    pip = next(
        d["pip"] for d in yaml.safe_load((REPO / "conda.yaml").read_text())["dependencies"] if isinstance(d, dict)
    )
    assert f"--extra-index-url {CPU_INDEX}" in pip and "--constraint constraints.txt" in pip


def test_readme_gives_a_user_install_beside_the_developer_one():
    text = (REPO / "README.md").read_text()
    assert re.search(r"pip install [^\n`]*-c constraints\.txt [^\n`]*\.\[dev\]", text)
    user = re.search(r"pip install [^\n`]*-c constraints\.txt (\S+)", text.replace('".[dev]"', ""))
    assert user and "dev" not in user.group(1)
    assert CPU_INDEX in text
