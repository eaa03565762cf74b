"""The package's layering (docs/architecture.md): imports run one way, with no cycles, and each folder
imports only what its job needs. Every import counts, at module level and inside functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlflow_ccfv"

#: Lower rank = lower layer. A module may import from its own folder or from a lower rank only.
RANKS = {
    "base": 0,  # errors.py, lazy.py, options.py
    "data": 1,
    "networks": 2,
    "features": 3,
    "estimators": 3,
    "scoring": 4,
    "training": 4,
    "study": 5,
    "tracking": 6,
    "pipelines": 7,
    "cli": 8,
    "root": 9,  # mlflow_ccfv/__init__.py, __main__.py
}
NO_MLFLOW = ("data", "networks", "features", "estimators", "scoring", "training", "study", "base")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "root"
    if parts[1] in ("errors", "lazy", "options"):
        return "base"
    return parts[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` depends on the submodule only
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    return found


def _exists(module: str) -> bool:
    if not module.startswith("mlflow_ccfv"):
        return False
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p) for m, p in modules.items()}


def _internal(imports: set[str]) -> set[str]:
    return {i for i in imports if i == "mlflow_ccfv" or i.startswith("mlflow_ccfv.")}


def test_every_folder_has_a_rank(graph):
    assert {_layer(m) for m in graph} <= set(RANKS)


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names | set(_lazy_homes(tree))


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """``name -> module`` of the ``from module import name`` lines in a top-level ``if TYPE_CHECKING:``."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    found.update({a.asname or a.name: sub.module for a in sub.names})
    return found


def _lazy_homes(tree: ast.Module) -> dict[str, str]:
    """The ``{name: submodule}`` literal of a module's ``__getattr__ = lazy_attributes(__name__, {...})``."""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__getattr__" for t in node.targets)
            and isinstance(node.value, ast.Call)
            and len(node.value.args) == 2
            and isinstance(node.value.args[1], ast.Dict)
        ):
            pairs = zip(node.value.args[1].keys, node.value.args[1].values)
            return {k.value: v.value for k, v in pairs if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def test_lazy_packages_list_each_name_where_type_checkers_import_it():
    """A package whose names load on first use (:mod:`mlflow_ccfv.lazy`) lists each name once for the
    runtime and once for type checkers: the two lists name the same module for every name, and every
    name resolves."""
    import importlib

    lazy = []
    for path in sorted(PACKAGE.rglob("__init__.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        homes = _lazy_homes(tree)
        if not homes:
            continue
        package = _module_name(path)
        lazy.append(package)
        typed = _type_checking_imports(tree)
        assert {n: f"{package}.{m}" for n, m in homes.items()} == typed, package
        module = importlib.import_module(package)
        for name in homes:
            assert getattr(module, name) is getattr(importlib.import_module(typed[name]), name), name
    assert {"mlflow_ccfv.data", "mlflow_ccfv.scoring", "mlflow_ccfv.tracking"} <= set(lazy)


def test_every_module_declares_its_public_names():
    """docs/architecture.md: every module has ``__all__``, a literal list of names it defines or imports."""
    missing, unknown = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        declared = [
            node.value
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            and any(
                isinstance(t, ast.Name) and t.id == "__all__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        ]
        if not declared or not isinstance(declared[0], (ast.List, ast.Tuple)):
            missing.append(_module_name(path))
            continue
        names = [e.value for e in declared[0].elts if isinstance(e, ast.Constant)]
        unknown += [f"{_module_name(path)}.{n}" for n in names if n not in _top_level_names(tree)]
    assert not missing, f"modules without a literal __all__: {missing}"
    assert not unknown, f"__all__ names a module does not define: {unknown}"


def test_imports_run_downward_only(graph):
    wrong = []
    for module, imports in graph.items():
        here = _layer(module)
        for target in _internal(imports):
            there = _layer(target)
            if there != here and RANKS[there] >= RANKS[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles(graph):
    edges = {m: {t for t in _internal(i) if t in graph and t != m} for m, i in graph.items()}
    # A package __init__ re-exporting its submodules is the normal pattern; a submodule importing its
    # own package's __init__ back closes a cycle and is counted.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _third_party(imports: set[str]) -> set[str]:
    return {i.split(".")[0] for i in imports}


def test_lower_layers_never_import_mlflow(graph):
    offenders = [m for m, i in graph.items() if _layer(m) in NO_MLFLOW and "mlflow" in _third_party(i)]
    assert not offenders


def test_estimators_are_pure_array_code(graph):
    for module, imports in graph.items():
        if _layer(module) != "estimators":
            continue
        assert not {"mlflow", "monai", "torch"} & _third_party(imports), module
        assert not {i for i in _internal(imports) if _layer(i) in ("networks", "features", "data")}, module


def test_every_tracking_module_is_mlflow_code(graph):
    missing = [
        m
        for m, i in graph.items()
        if _layer(m) == "tracking" and m != "mlflow_ccfv.tracking" and "mlflow" not in _third_party(i)
    ]
    assert not missing, f"tracking modules that do not use MLflow: {missing}"


def test_library_never_switches_the_plotting_backend(graph):
    assert not [m for m, i in graph.items() if "matplotlib.pyplot" in i]
    assert "matplotlib.use(" not in "".join(p.read_text() for p in PACKAGE.rglob("*.py"))


def test_tag_names_are_formatted_in_one_module():
    """Only tracking/tags.py writes the registry's tag prefixes as text."""
    formatting = re.compile(
        r"""f["'](transferability|finetune|pretrain|train|sampler|best-|ccfv\.layer)[.\w-]*\{"""  # f"pretrain.{k}"
        r"""|["'](transferability|finetune\.dice|pretrain)\.["']\s*\+"""  # "transferability." + name
        r"""|re\.compile\(r?["']\^?(transferability|finetune|pretrain)"""  # parsing them with a regex
        r"""|["'](transferability|finetune|pretrain|ccfv|weights|import|select)\.[a-z_.]+["']"""  # "ccfv.bank"
    )
    offenders = sorted(
        f"{p.relative_to(PACKAGE)}: {m.group(0)}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "tags.py"
        for m in formatting.finditer(p.read_text())
    )
    assert not offenders, offenders


def test_tracking_imports_nothing_from_study(graph):
    """The ranking rule lives below tracking (scoring/ranking.py): tracking needs nothing of the study layer."""
    offenders = {
        m: sorted(i for i in imports if i.startswith("mlflow_ccfv.study"))
        for m, imports in graph.items()
        if m.startswith("mlflow_ccfv.tracking")
    }
    assert not {m: i for m, i in offenders.items() if i}, offenders


def test_reading_commands_do_not_import_torch():
    """``rank``, ``bank`` and ``--help`` read tags and print: they import neither torch, MONAI, SciPy's
    statistics nor matplotlib (seconds of start-up each; the lazy packages of :mod:`mlflow_ccfv.lazy`)."""
    import subprocess
    import sys

    heavy = ("torch", "monai", "scipy.stats", "matplotlib")
    code = (
        "import sys\n"
        "import mlflow_ccfv.cli, mlflow_ccfv.pipelines.rank, mlflow_ccfv.tracking.server\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", f"imported: {done.stdout.strip()}"
