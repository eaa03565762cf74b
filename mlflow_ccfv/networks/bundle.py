"""Import a MONAI bundle (``configs/inference.json``, ``models/model.pt``) without running its code.

A bundle describes its network in a config file read by MONAI's :class:`monai.bundle.ConfigParser`::

    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, ...},
    "network": "$@network_def.to(@device)",
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], ...}

:func:`read_bundle` lets ``ConfigParser`` read the files and resolve ``%`` macros and ``@``
references exactly as MONAI does, but with ``instantiate=False, eval_expr=False``: no ``_target_``
is instantiated and no ``$`` expression (nor the bundle's ``imports``) is executed. The network
definition's ``_target_`` must be a network of :mod:`monai.networks.nets` the project supports; its
arguments become a :class:`~mlflow_ccfv.networks.specs.NetworkSpec`. ``$`` expressions among
them (``"$len(@labels) + 1"``, ``"$[1] * 3"``) are evaluated by :func:`evaluate_expression`, which
accepts only literals, arithmetic, comparisons, ``@`` references and a few pure built-ins
(``len``, ``int``, ``min`` ...), under a step, time and size budget (an expression that would build a
huge integer or sequence is refused before it runs). The sliding-window ROI is read from ``inferer#roi_size`` when given.
Weights come from ``models/model.pt`` with ``torch.load(weights_only=True)``.

As in MONAI, a ``%configs/other.json#id`` macro names its file relative to the working directory.
"""

from __future__ import annotations

import ast
import json
import logging
import operator
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow_ccfv.networks.imported import ImportedNetwork, read_weights
from mlflow_ccfv.networks.specs import SUPPORTED_ARCHITECTURES, NetworkSpec, build_network, load_state_dict_strict

__all__ = ["BUNDLE_NORMALIZATIONS", "CONFIG_NAMES", "NETWORK_KEYS", "evaluate_expression", "read_bundle"]

_logger = logging.getLogger(__name__)

#: Config files tried, in order, under ``configs/``.
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: Config ids that may hold the network definition, in order.
NETWORK_KEYS = ("network_def", "network")
#: Config ids that may state the sliding-window ROI (voxels), in order.
PATCH_KEYS = ("inferer#roi_size", "roi_size", "patch_size")
#: Bundle transforms recorded as the model's intensity normalisation: (scheme, the arguments it takes).
BUNDLE_NORMALIZATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    name: spec
    for names, spec in (
        (
            ("ScaleIntensityRange", "ScaleIntensityRanged"),
            ("ScaleIntensityRange", ("a_min", "a_max", "b_min", "b_max", "clip")),
        ),
        (("NormalizeIntensity", "NormalizeIntensityd"), ("NormalizeIntensity", ("nonzero", "channel_wise"))),
    )
    for name in names
}
_MONAI_PREFIX = "monai.networks.nets"
_NON_ARG_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")

_BINARY: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.AST], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_COMPARE: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f for f in (len, int, float, bool, str, tuple, list, min, max, abs, round, sum)
}
#: Limits of one ``$`` expression: it may evaluate at most ``_MAX_STEPS`` syntax nodes within
#: ``_TIME_BUDGET_S`` seconds; no value it builds may hold more than ``_MAX_ITEMS`` elements (counted
#: through nested sequences; characters for a text) or an integer longer than ``_MAX_INT_BITS`` bits.
#: Each operation is checked *before* it runs (``9**64**64``, ``[[8]*10000]*10000``, ``'a'*10**64``),
#: so no single step can take long; a network argument needs none of these sizes.
_MAX_ITEMS = 10_000
_MAX_INT_BITS = 4096
_MAX_STEPS = 10_000
_MAX_SOURCE = 10_000  # characters of expression text
_TIME_BUDGET_S = 1.0


class _Unsafe(ValueError):
    pass


class _Budget:
    """The steps and the time left to one expression's evaluation."""

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + _TIME_BUDGET_S

    def step(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _Unsafe(f"it takes more than {_MAX_STEPS} evaluation steps")
        if time.monotonic() > self.deadline:
            raise _Unsafe(f"it takes longer than {_TIME_BUDGET_S:g} s to evaluate")


def _size(value: Any, limit: int = _MAX_ITEMS) -> int:
    """Elements of ``value`` counted through nested sequences and dicts (characters of a text); stops
    counting once past ``limit`` (a shared inner list is counted once per reference, as JSON would be)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if not isinstance(value, (list, tuple, set, frozenset)):
        return 0
    total = len(value)
    for item in value:
        if total > limit:
            break
        total += _size(item, limit - total)
    return total


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # bool included: True * [1] is a list


def _check_value(value: Any) -> Any:
    """``value`` if within the size budget, else :class:`_Unsafe`."""
    if _is_int(value) and value.bit_length() > _MAX_INT_BITS:
        raise _Unsafe(f"an integer longer than {_MAX_INT_BITS} bits")
    if _size(value) > _MAX_ITEMS:
        raise _Unsafe(f"a value of more than {_MAX_ITEMS} elements or characters")
    return value


def _check_binary(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse an operation whose result would exceed the size budget, before it runs."""
    sequences = (str, bytes, list, tuple)
    if isinstance(op, ast.Pow):
        if isinstance(right, (int, float)) and abs(right) > 64:
            raise _Unsafe("exponent larger than 64")
        if _is_int(left) and _is_int(right) and right > 0 and left.bit_length() * right > _MAX_INT_BITS:
            raise _Unsafe(f"an integer longer than {_MAX_INT_BITS} bits")
    elif isinstance(op, ast.Mult):
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _Unsafe(f"an integer longer than {_MAX_INT_BITS} bits")
        elif (isinstance(left, sequences) and _is_int(right)) or (isinstance(right, sequences) and _is_int(left)):
            seq, times = (left, right) if isinstance(left, sequences) else (right, left)
            if times > 0 and _size(seq) * times > _MAX_ITEMS:
                raise _Unsafe(f"a sequence of more than {_MAX_ITEMS} elements or characters")
    elif isinstance(op, ast.Mod) and isinstance(left, (str, bytes)):
        raise _Unsafe("text formatting with % is not allowed")


def evaluate_expression(text: str, refs: dict[str, Any]) -> Any:
    """Evaluate a bundle ``$`` expression whose ``@id`` references ConfigParser rewrote to
    ``__local_refs['id']``, looking them up in ``refs``; anything but literals, arithmetic,
    comparisons, conditionals, indexing and calls of pure built-ins (``len``, ``int``, ``min`` ...)
    raises ``ValueError`` without running any of it. The evaluation is bounded: at most
    ``_MAX_STEPS`` nodes in ``_TIME_BUDGET_S`` seconds, no value beyond ``_MAX_ITEMS`` elements or
    ``_MAX_INT_BITS``-bit integers (each operation checked before it runs); an expression past a
    limit, or one that fails (``"a" - 1``), raises ``ValueError`` naming why."""
    import monai.bundle.config_item  # noqa: F401  imported before the clock starts (``_plain`` uses it)

    source = text[1:] if text.startswith("$") else text
    if len(source) > _MAX_SOURCE:
        raise _Unsafe(f"an expression of {len(source)} characters (at most {_MAX_SOURCE})")
    try:
        tree = ast.parse(source.strip(), mode="eval")
        return _evaluate(tree.body, refs, _Budget())
    except SyntaxError as exc:
        raise _Unsafe(f"not a Python expression ({exc.msg})") from exc
    except _Unsafe:
        raise
    except RecursionError:
        raise _Unsafe("it is nested too deeply") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, MemoryError) as exc:
        raise _Unsafe(f"it fails: {type(exc).__name__}: {str(exc)[:200]}") from None


def _evaluate(node: ast.AST, refs: dict[str, Any], budget: _Budget) -> Any:
    budget.step()
    ev = lambda n: _evaluate(n, refs, budget)  # noqa: E731
    if isinstance(node, ast.Constant):
        return _check_value(node.value)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [ev(e) for e in node.elts]
        return _check_value({ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items))
    if isinstance(node, ast.Dict) and None not in node.keys:
        return _check_value({ev(k): ev(v) for k, v in zip(node.keys, node.values)})
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = ev(node.left), ev(node.right)
        _check_binary(node.op, left, right)
        return _check_value(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](ev(node.operand))
    if isinstance(node, ast.BoolOp):
        values = [ev(v) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = ev(node.left)
        for op, comp in zip(node.ops, node.comparators):
            right = ev(comp)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return ev(node.body) if ev(node.test) else ev(node.orelse)
    if isinstance(node, ast.Subscript):
        if isinstance(node.value, ast.Name) and node.value.id == "__local_refs":
            key = ev(node.slice)
            if key not in refs:
                raise _Unsafe(f"reference @{key} is not resolved")
            return _check_value(_plain(refs[key], refs))
        return _check_value(ev(node.value)[ev(node.slice)])
    if isinstance(node, ast.Slice):
        return slice(*(ev(p) if p is not None else None for p in (node.lower, node.upper, node.step)))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _check_value(_FUNCTIONS[node.func.id](*[ev(a) for a in node.args]))
    raise _Unsafe(f"{type(node).__name__} is not allowed (it could run code)")


def _plain(value: Any, refs: dict[str, Any]) -> Any:
    """``value`` with every ``ConfigExpression`` evaluated safely; a nested component is refused."""
    from monai.bundle.config_item import ConfigComponent, ConfigExpression

    if isinstance(value, ConfigExpression):
        return _plain(evaluate_expression(value.get_config(), refs), refs)
    if isinstance(value, ConfigComponent):
        target = value.get_config().get("_target_")
        raise _Unsafe(f"a nested component (_target_ {target!r}) is not supported; give its value as a literal")
    if isinstance(value, dict):
        return {k: _plain(v, refs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, refs) for v in value)
    return value


def _architecture(target: Any, where: str) -> str:
    """``UNet`` for ``"UNet"``, ``"monai.networks.nets.UNet"``, ``"monai.networks.nets.unet.UNet"``."""
    supported = f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (as 'UNet' or 'monai.networks.nets.UNet')"
    if not isinstance(target, str) or not target:
        raise ValueError(f"{where} has _target_ {target!r}; expected the name of a MONAI network, {supported}.")
    module, _, name = target.rpartition(".")
    if (
        module and module != _MONAI_PREFIX and not module.startswith(_MONAI_PREFIX + ".")
    ) or name not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{where} has _target_ {target!r}, which is not a MONAI network this project can score; "
            f"{supported}. Other networks can be registered with --spec/--checkpoint if MONAI has them."
        )
    return name


def _config_file(bundle: Path, config: str | os.PathLike | None) -> Path:
    if config:
        path = Path(config) if Path(config).is_absolute() else bundle / config
        if not path.is_file():
            raise FileNotFoundError(f"Bundle config {path} does not exist.")
        return path
    for name in CONFIG_NAMES:
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise FileNotFoundError(
        f"{bundle} is not a MONAI bundle: no configs/{' or configs/'.join(CONFIG_NAMES)}. Pass the bundle's root "
        "folder (the one holding configs/ and models/), or name its config file explicitly."
    )


def _network_component(parser, config_file: Path):
    from monai.bundle.config_item import ConfigComponent

    for key in NETWORK_KEYS:
        if key not in parser:
            continue
        item = parser.get_parsed_content(key, instantiate=False, eval_expr=False)
        if isinstance(item, ConfigComponent):
            return key, item
    raise ValueError(
        f"{config_file}: found no network definition (a dict with _target_) under "
        f'{" or ".join(NETWORK_KEYS)}. Add "network_def": {{"_target_": "UNet", ...}} to the config.'
    )


def _patch_size(parser, refs: dict[str, Any], config_file: Path) -> tuple[int, int, int] | None:
    for key in PATCH_KEYS:
        if key not in parser:
            continue
        where = f"{config_file}: {key.replace('#', '.')}"
        try:
            value = _plain(parser.get_parsed_content(key, instantiate=False, eval_expr=False), refs)
        except _Unsafe as exc:
            _logger.warning("%s is not read (%s); register with an explicit patch size", where, exc)
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value] * 3
        if (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            return tuple(value)
        _logger.warning("%s is %r, not three positive sizes; register with an explicit patch size", where, value)
        return None
    return None


def _transform_name(target: Any) -> str:
    return target.rpartition(".")[2] if isinstance(target, str) else ""


def _acts_on_image(args: dict[str, Any]) -> bool:
    keys = args.get("keys", "image")
    return "image" in ([keys] if isinstance(keys, str) else list(keys or []))


def _normalisation(parser, refs: dict[str, Any], config_file: Path) -> list[dict[str, Any]] | None:
    """The intensity normalisation of the bundle's ``preprocessing`` transforms, as records of
    :class:`~mlflow_ccfv.data.normalization.IntensityNormalization` (one entry, every channel); None when
    it has none, or one this project cannot reproduce (then the target's own normalisation is used)."""
    from monai.bundle.config_item import ConfigComponent

    if "preprocessing#transforms" not in parser:
        return None
    raw = parser.get("preprocessing#transforms")
    found: list[dict[str, Any]] = []
    other: list[str] = []
    for i in range(len(raw) if isinstance(raw, list) else 0):
        item = parser.get_parsed_content(f"preprocessing#transforms#{i}", instantiate=False, eval_expr=False)
        if not isinstance(item, ConfigComponent):
            continue
        definition = item.get_config()
        name = _transform_name(definition.get("_target_"))
        if name not in BUNDLE_NORMALIZATIONS:
            if ("Intensity" in name or "HistogramNormalize" in name) and not name.startswith("Rand"):
                other.append(name)
            continue
        try:
            args = _plain({k: v for k, v in definition.items() if k not in _NON_ARG_KEYS}, refs)
        except _Unsafe as exc:
            other.append(f"{name} ({exc})")
            continue
        if not _acts_on_image(args):
            continue
        scheme, keys = BUNDLE_NORMALIZATIONS[name]
        unsupported = sorted(set(args) - {*keys, "keys", "allow_missing_keys", "dtype"})
        unsupported = [k for k in unsupported if args[k] is not None]
        if unsupported:
            other.append(f"{name} with {', '.join(unsupported)}")
            continue
        found.append({"scheme": scheme, **{k: args[k] for k in keys if k in args}})
    if other or len(found) > 1:
        _logger.warning(
            "%s: preprocessing has %s; not reproduced, so this model's input is normalised with the target's "
            "statistics",
            config_file,
            ", ".join(other + [f["scheme"] for f in found]),
        )
        return None
    return found or None


def _metadata(bundle: Path) -> dict[str, Any]:
    path = bundle / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it.") from exc
    return meta if isinstance(meta, dict) else {}


def read_bundle(
    bundle: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    weights: str | os.PathLike = "models/model.pt",
) -> ImportedNetwork:
    """Read MONAI bundle folder ``bundle`` into ``(spec, state_dict, info)`` without running its code.

    ``config``: the config file (default: the first of :data:`CONFIG_NAMES` under ``configs/``);
    ``weights``: the state_dict file, relative to ``bundle``. ``info`` holds ``format``
    (``"monai_bundle"``), ``source``, ``config``, ``network_key``, ``target``, ``patch_size`` (the
    inferer's ``roi_size`` as three ints, or None), ``normalization`` (the ``preprocessing``'s
    ``ScaleIntensityRanged`` or ``NormalizeIntensityd`` as records of
    :class:`~mlflow_ccfv.data.normalization.IntensityNormalization`, or None) and the metadata's ``name``
    and ``version``.
    The weights are checked against the network: a mismatch is an error listing the keys.
    """
    from monai.bundle import ConfigParser

    root = Path(bundle).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Bundle folder {root} does not exist.")
    config_file = _config_file(root, config)
    parser = ConfigParser()
    try:
        parser.read_config(str(config_file))
        parser.parse(reset=True)  # resolves % macros and relative ids; instantiates nothing
    except Exception as exc:
        raise ValueError(f"{config_file}: MONAI cannot read this bundle config ({exc}). Check its syntax.") from exc
    key, component = _network_component(parser, config_file)
    where = f"{config_file}: {key}"
    definition = component.get_config()
    architecture = _architecture(definition.get("_target_"), where)
    if definition.get("_disabled_") in (True, "true", "True"):
        raise ValueError(f"{where} is marked _disabled_; enable it or point to the network the bundle uses.")
    refs = parser.ref_resolver.resolved_content
    try:
        kwargs = _plain({k: v for k, v in definition.items() if k not in _NON_ARG_KEYS}, refs)
    except _Unsafe as exc:
        raise ValueError(
            f"{where}: an argument is an expression that is not evaluated here ({exc}). Replace it by its value "
            "in the config (only literals, arithmetic, @references and len/int/min/max... are evaluated)."
        ) from exc
    if kwargs.get("spatial_dims", 3) != 3:
        raise ValueError(f"{where} is a {kwargs['spatial_dims']}D network; only 3D networks can be scored.")
    try:
        kwargs = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: the arguments are not plain data ({exc}); give them as literals.") from exc
    spec = NetworkSpec(architecture, kwargs)
    try:
        module = build_network(spec)
    except Exception as exc:
        import monai

        raise ValueError(
            f"{where} ({definition['_target_']}) cannot be built with MONAI {monai.__version__}: {exc}. "
            "The bundle may need another MONAI version; register it with --spec and --checkpoint after adapting it."
        ) from exc
    weights_file = root / weights
    if not weights_file.is_file():
        ts = (
            " (it has models/model.ts, a TorchScript file, which is code, not weights)"
            if (root / "models" / "model.ts").is_file()
            else ""
        )
        raise FileNotFoundError(
            f"Bundle weights {weights_file} do not exist{ts}. Download the bundle with its weights "
            "(python -m monai.bundle download ...) or pass the state_dict file explicitly."
        )
    state = read_weights(
        weights_file,
        keys=("state_dict", "model", "network"),
        fix="A bundle's models/model.pt should be a state_dict: torch.save(network.state_dict(), path).",
    )
    try:
        load_state_dict_strict(module, state)
    except ValueError as exc:
        raise ValueError(f"{weights_file} does not fit {where}: {exc}") from exc
    meta = _metadata(root)
    info = {
        "format": "monai_bundle",
        "source": str(root),
        "config": str(config_file.relative_to(root)) if config_file.is_relative_to(root) else str(config_file),
        "network_key": key,
        "target": definition["_target_"],
        "patch_size": _patch_size(parser, refs, config_file),
        "normalization": _normalisation(parser, refs, config_file),
        "name": meta.get("name"),
        "version": meta.get("version"),
    }
    return ImportedNetwork(spec, state, info)
