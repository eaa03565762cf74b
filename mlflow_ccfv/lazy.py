"""Package attributes imported on first use (PEP 562).

A package's ``__init__`` that imported every submodule made any import of the package, or of one light
module inside it, pay for its heaviest sibling: ``mlflow-ccfv rank`` imported torch and MLflow's evaluation
stack to read a few tags. A package lists where each public name lives instead; the submodule is imported
the first time the name is read (``from package import name`` included), and type checkers read the same
names from an ``if TYPE_CHECKING:`` import block.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes[name]`` is the submodule (relative to ``package``)
    that defines ``name``; it is imported when ``name`` is first read, and the value kept in the package. A
    name that is not listed but is a submodule is imported as one (as an eager ``__init__`` made it
    available); anything else is an ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is not None:
            value = getattr(importlib.import_module(f"{package}.{home}"), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
