"""docs/api-contracts.md matches the code: every documented name imports, with the documented parameters."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api-contracts.md"
ENTRY = re.compile(r"^- `(?P<path>mlflow_ccfv(?:\.\w+)+)(?:\((?P<params>[^`]*)\))?(?: -> [^`]*)?`", re.M)


def _entries() -> list[tuple[str, str | None]]:
    return [(m["path"], m["params"]) for m in ENTRY.finditer(DOC.read_text())]


def _resolve(path: str):
    """Walk ``path`` by attribute (a package's re-export wins over its submodule of the same name),
    importing a submodule only where no attribute exists."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(".".join(parts[: i + 1]))
    return obj


def _documented(params: str) -> list[str]:
    """``a, b=1, *, c=None, **kw`` -> ``["a", "b", "*", "c", "**kw"]`` (defaults dropped; commas inside
    brackets or quotes, as in ``shape=(64, 64, 48)``, do not split)."""
    names, depth, current, quote = [], 0, "", None
    for ch in params + ",":
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            if current.strip():
                names.append(current.split("=")[0].strip())
            current = ""
            continue
        current += ch
    return names


def _actual(obj) -> list[str]:
    out, kwonly = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.name in ("self", "cls"):
            continue
        if p.kind is p.VAR_POSITIONAL:
            out.append("*" + p.name)
            kwonly = True
        elif p.kind is p.VAR_KEYWORD:
            out.append("**" + p.name)
        else:
            if p.kind is p.KEYWORD_ONLY and not kwonly:
                out.append("*")
                kwonly = True
            out.append(p.name)
    return out


def test_the_document_lists_every_layer():
    paths = [p for p, _ in _entries()]
    assert len(paths) > 100
    for layer in (
        "data",
        "networks",
        "features",
        "estimators",
        "scoring",
        "training",
        "study",
        "tracking",
        "pipelines",
    ):
        assert any(p.startswith(f"mlflow_ccfv.{layer}") for p in paths), layer


@pytest.mark.parametrize(("path", "params"), _entries(), ids=[p for p, _ in _entries()])
def test_documented_name_has_documented_signature(path, params):
    obj = _resolve(path)
    if params is None:
        assert inspect.isclass(obj), f"{path} is documented without parameters but is not a class"
        return
    assert _actual(obj) == _documented(params), f"{path}: the code's parameters differ from docs/api-contracts.md"
