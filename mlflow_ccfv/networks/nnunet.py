"""Import an nnU-Net v2 trained model (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_final.pth``).

nnU-Net v2 (Isensee et al., Nature Methods 2021) writes one folder per trained configuration::

    nnUNet_results/Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres/
        plans.json  dataset.json  fold_0/checkpoint_final.pth  fold_1/ ...

:func:`read_nnunet` rebuilds the network as nnU-Net's ``get_network_from_plans`` does, from the
configuration's ``architecture`` entry (``network_class_name``, ``arch_kwargs``,
``_kw_requires_import``; nnU-Net >= 2.4) or, for older plans (2.1 - 2.3), from ``UNet_class_name``,
``UNet_base_num_features``, ``n_conv_per_stage_encoder`` ... as nnU-Net converts them. Unlike
nnU-Net, nothing named in the plans is imported: the class must be one of
:data:`~mlflow_ccfv.networks.dynamic.DYNAMIC_ARCHITECTURES` and its layer types come from a fixed
allow-list (:func:`~mlflow_ccfv.networks.dynamic.resolve_layer_class`). Deep supervision is off.

The checkpoint is a pickled dict (``network_weights``, ``optimizer_state``, ``init_args``,
``trainer_name``, ``current_epoch``, ``logging``, ...). It is read with
``torch.load(weights_only=True)``; nnU-Net's training log holds numpy scalars, which that unpickler
refuses, so a handful of numpy *data* types (``numpy.dtype``, the scalar and array reconstructors and
the numeric dtype classes) are allow-listed for this one load. They only rebuild numbers and
arrays; any other global (a class, ``os.system`` ...) is still refused before anything runs.

Besides the spec and weights, ``info`` says how nnU-Net fed the network: the configuration's patch
size and spacing (also converted to the image's x, y, z axis order) and the per-channel intensity
normalisation (``CTNormalization`` with the plans' foreground statistics, ``ZScoreNormalization``...).
"""

from __future__ import annotations

import json
import logging
import os
from copy import deepcopy
from pathlib import Path
from typing import Any

from mlflow_ccfv.networks.checkpoints import normalise_state_dict
from mlflow_ccfv.networks.dynamic import CLASS_KWARGS, DYNAMIC_ARCHITECTURES
from mlflow_ccfv.networks.imported import ImportedNetwork, load_safely
from mlflow_ccfv.networks.specs import NetworkSpec, build_network, load_state_dict_strict

__all__ = ["CHECKPOINT_NAMES", "numpy_data_globals", "read_nnunet"]

_logger = logging.getLogger(__name__)

#: Checkpoint files tried, in order, in ``fold_<N>/``.
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
_DNA_PREFIX = "dynamic_network_architectures."
# Readers that return arrays in (z, y, x) order (SimpleITK) rather than the image's (x, y, z).
_REVERSED_READERS = ("SimpleITKIO",)
_SAME_ORDER_READERS = ("NibabelIO", "NibabelIOWithReorient")


def numpy_data_globals() -> list[Any]:
    """The numpy globals an nnU-Net checkpoint's log needs, for :func:`torch.serialization.safe_globals`.

    Scalars (``numpy.float64`` ...) pickle as ``multiarray.scalar(dtype, bytes)`` and arrays as
    ``multiarray._reconstruct`` + ``ndarray.__setstate__``: they rebuild numbers from bytes and run no
    other code. Both numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) names are listed, so
    checkpoints written with either load under either. The object dtype is not allowed.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    functions = [core.multiarray.scalar, core.multiarray._reconstruct]
    allowed: list[Any] = [np.dtype, np.ndarray, *functions]
    for fn in functions:
        allowed += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        names = [f"{kind}{bits}DType" for kind in ("Float", "Int", "UInt") for bits in (8, 16, 32, 64)] + ["BoolDType"]
        allowed += [getattr(dtypes, n) for n in names if hasattr(dtypes, n)]
    return allowed


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent} is not an nnU-Net v2 trained-model folder: no {path.name} ({what}). Pass the folder "
            "nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration> that holds plans.json, dataset.json "
            "and fold_<N>/."
        )
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object; got {type(data).__name__}.")
    return data


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) for i in v)


def _int_list(v: Any, length: int | None = None) -> bool:
    return isinstance(v, list) and (length is None or len(v) == length) and all(_is_int(i) and i >= 0 for i in v)


def _nested_int_lists(v: Any) -> bool:
    """A list of per-stage entries, each an integer or a list of integers (kernel sizes, strides)."""
    return isinstance(v, list) and bool(v) and all(_is_int(e) or _int_list(e) for e in v)


def _require(ok: bool, where: str, field: str, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(
            f"{where}: {field} must be {what}, got {_shown(value)}. The plans do not match nnU-Net v2's schema; "
            "use the plans.json nnU-Net wrote for this model."
        )


#: The keys of a plans configuration written by nnU-Net 2.1 - 2.3 (before the ``architecture`` entry).
_OLD_ARCH_KEYS: dict[str, tuple[Any, str]] = {
    "UNet_class_name": (lambda v: isinstance(v, str) and bool(v), "a class name"),
    "UNet_base_num_features": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "unet_max_num_features": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "n_conv_per_stage_encoder": (lambda v: _int_list(v) and bool(v), "a list of integers, one per stage"),
    "n_conv_per_stage_decoder": (lambda v: _int_list(v) and bool(v), "a list of integers, one per stage"),
    "conv_kernel_sizes": (_nested_int_lists, "a list of kernel sizes, one per stage"),
    "pool_op_kernel_sizes": (_nested_int_lists, "a list of strides, one per stage"),
}


def _check_plans(plans: dict[str, Any], plans_file: Path) -> None:
    """The top level of ``plans.json`` against nnU-Net v2's schema (a one-line ``ValueError`` naming the field)."""
    where = str(plans_file)
    configurations = plans.get("configurations")
    _require(
        isinstance(configurations, dict)
        and bool(configurations)
        and all(isinstance(c, dict) for c in configurations.values()),
        where,
        "configurations",
        'an object of named configurations ({"3d_fullres": {...}})',
        configurations,
    )
    transpose = plans.get("transpose_forward", [0, 1, 2])
    _require(
        isinstance(transpose, list) and sorted(transpose) == [0, 1, 2] and all(_is_int(t) for t in transpose),
        where,
        "transpose_forward",
        "a permutation of [0, 1, 2]",
        transpose,
    )
    reader = plans.get("image_reader_writer", "")
    _require(isinstance(reader, str), where, "image_reader_writer", "a class name", reader)
    for key in ("foreground_intensity_properties_per_channel", "foreground_intensity_properties_by_modality"):
        props = plans.get(key, {})
        _require(
            isinstance(props, dict) and all(isinstance(p, dict) for p in props.values()),
            where,
            key,
            'an object {"0": {"mean": ..., "std": ...}}',
            props,
        )


def _check_configuration(config: dict[str, Any], where: str) -> None:
    """A resolved plans configuration against nnU-Net v2's schema (the network and the fields read here)."""
    if "architecture" in config:
        arch = config["architecture"]
        _require(
            isinstance(arch, dict),
            where,
            "architecture",
            'an object {"network_class_name": ..., "arch_kwargs": {...}}',
            arch,
        )
        name = arch.get("network_class_name")
        _require(isinstance(name, str) and bool(name), where, "architecture.network_class_name", "a class name", name)
        kwargs = arch.get("arch_kwargs") or {}
        _require(isinstance(kwargs, dict), where, "architecture.arch_kwargs", "an object", kwargs)
        imports = arch.get("_kw_requires_import") or []
        _require(_str_list(imports), where, "architecture._kw_requires_import", "a list of argument names", imports)
    elif "UNet_class_name" in config:
        for key, (ok, what) in _OLD_ARCH_KEYS.items():
            _require(key in config and ok(config[key]), where, key, what, config.get(key, "nothing (missing)"))
    patch = config.get("patch_size")
    _require(
        isinstance(patch, list) and all(_is_int(p) and p >= 1 for p in patch),
        where,
        "patch_size",
        "a list of positive integers",
        patch,
    )
    spacing = config.get("spacing")
    _require(
        spacing is None or (isinstance(spacing, list) and all(_is_number(v) and v > 0 for v in spacing)),
        where,
        "spacing",
        "a list of positive numbers",
        spacing,
    )
    schemes = config.get("normalization_schemes") or []
    _require(_str_list(schemes), where, "normalization_schemes", "a list of scheme names", schemes)
    masks = config.get("use_mask_for_norm") or []
    _require(isinstance(masks, list), where, "use_mask_for_norm", "a list of booleans", masks)


def _configuration(plans: dict[str, Any], name: str, plans_file: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``plans["configurations"][name]`` with ``inherits_from`` resolved (as nnU-Net's PlansManager)."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise ValueError(
            f"{plans_file} has no configuration {name!r}; it has {', '.join(configurations) or 'none'}. "
            "Pass --configuration with one of them."
        )
    if name in seen:
        raise ValueError(
            f"{plans_file}: configurations inherit from each other in a circle ({' -> '.join(seen + (name,))})."
        )
    config = deepcopy(configurations[name])
    parent = config.pop("inherits_from", None)
    _require(parent is None or isinstance(parent, str), f"{plans_file} configuration {name!r}", "inherits_from",
             "the name of another configuration", parent)  # fmt: skip
    if parent:
        config = {**_configuration(plans, parent, plans_file, seen + (name,)), **config}
    return config


def _architecture(config: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """``(class name, arch_kwargs with class-valued arguments as names)`` of a plans configuration."""
    if "architecture" in config:
        arch = config["architecture"]
        class_path = str(arch.get("network_class_name", ""))
        kwargs = deepcopy(arch.get("arch_kwargs") or {})
        requires_import = list(arch.get("_kw_requires_import") or [])
    elif "UNet_class_name" in config:  # plans written by nnU-Net 2.1 - 2.3
        class_path = str(config["UNet_class_name"])
        n_stages = len(config["n_conv_per_stage_encoder"])
        dims = len(config["patch_size"])
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [
                min(config["UNet_base_num_features"] * 2**i, config["unet_max_num_features"]) for i in range(n_stages)
            ],
            "conv_op": f"torch.nn.Conv{dims}d",
            "kernel_sizes": config["conv_kernel_sizes"],
            "strides": config["pool_op_kernel_sizes"],
            "n_blocks_per_stage" if class_path.endswith("ResidualEncoderUNet") else "n_conv_per_stage": config[
                "n_conv_per_stage_encoder"
            ],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
        requires_import = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    else:
        raise ValueError(
            f"{where} describes no network (neither 'architecture' nor 'UNet_class_name'); "
            "re-run nnUNetv2_plan_experiment with nnU-Net >= 2.1."
        )
    module, _, name = class_path.rpartition(".")
    if name not in DYNAMIC_ARCHITECTURES or (module and not module.startswith(_DNA_PREFIX)):
        raise ValueError(
            f"{where} uses network class {class_path!r}; supported are dynamic_network_architectures' "
            f"{', '.join(DYNAMIC_ARCHITECTURES)} (a custom class cannot be rebuilt without running its code)."
        )
    other = [k for k in requires_import if k not in CLASS_KWARGS]
    if other:
        raise ValueError(
            f"{where}: arguments {', '.join(other)} name classes to import, which is not supported "
            f"(only {', '.join(CLASS_KWARGS)}, from an allow-list)."
        )
    return name, kwargs


def _channels(dataset: dict[str, Any], dataset_file: Path) -> list[str]:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{dataset_file} has no channel_names; it is not an nnU-Net v2 dataset.json.")
    if not all(str(k).isdigit() for k in names):
        raise ValueError(
            f'{dataset_file}: channel_names must map channel numbers to names ({{"0": "CT"}}), got {_shown(names)}.'
        )
    return [str(names[k]) for k in sorted(names, key=int)]


def _num_outputs(dataset: dict[str, Any], dataset_file: Path) -> int:
    """Output channels as nnU-Net's LabelManager counts them (regions: one per foreground region)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{dataset_file} has no labels.")
    if all(str(k).isdigit() for k in labels):  # v1 layout {"0": "background", "1": "liver"}
        return len(labels)
    entries = {k: v for k, v in labels.items() if k != "ignore"}
    if any(isinstance(v, (list, tuple)) for v in entries.values()):
        return len([k for k in entries if k != "background"])
    if not all((_is_int(v) and v >= 0) or (isinstance(v, str) and v.isdigit()) for v in entries.values()):
        raise ValueError(
            f'{dataset_file}: labels must map names to label values ({{"background": 0, "liver": 1}}), '
            f"got {_shown(labels)}."
        )
    return len({int(v) for v in entries.values()})


def _normalisation(config: dict[str, Any], plans: dict[str, Any], channels: list[str]) -> list[dict[str, Any]]:
    schemes = config.get("normalization_schemes") or []
    masks = config.get("use_mask_for_norm") or [False] * len(schemes)
    props = plans.get(
        "foreground_intensity_properties_per_channel", plans.get("foreground_intensity_properties_by_modality", {})
    )
    out = []
    for c, scheme in enumerate(schemes):
        entry: dict[str, Any] = {"channel": channels[c] if c < len(channels) else str(c), "scheme": scheme}
        if scheme == "CTNormalization":
            p = props.get(str(c), {})
            entry.update(
                mean=p.get("mean"), std=p.get("std"), lower=p.get("percentile_00_5"), upper=p.get("percentile_99_5")
            )
        elif scheme == "ZScoreNormalization":
            entry["use_mask_for_norm"] = bool(masks[c]) if c < len(masks) else False
        out.append(entry)
    return out


def _xyz(values: list[Any] | None, transpose_forward: list[int], reader: str) -> list[Any] | None:
    """Per-axis ``values`` of nnU-Net's (transposed) array axes, in the image's x, y, z order."""
    if values is None or len(values) != 3:
        return None
    if reader in _REVERSED_READERS:
        axis_of = lambda read_axis: 2 - read_axis  # noqa: E731  SimpleITK arrays are (z, y, x)
    elif reader in _SAME_ORDER_READERS:
        axis_of = lambda read_axis: read_axis  # noqa: E731
    else:
        _logger.warning("nnU-Net reader %r: axis order unknown, patch size and spacing kept in plans order", reader)
        return list(values)
    out: list[Any] = [None] * 3
    for i, read_axis in enumerate(transpose_forward):
        out[axis_of(read_axis)] = values[i]
    return out


def _checkpoint(fold_dir: Path, checkpoint: str | None) -> Path:
    if not fold_dir.is_dir():
        folds = sorted(p.name for p in fold_dir.parent.glob("fold_*"))
        raise FileNotFoundError(
            f"{fold_dir} does not exist; this model has {', '.join(folds) or 'no fold_<N> folders'}. Pass --fold."
        )
    for name in [checkpoint] if checkpoint else CHECKPOINT_NAMES:
        if (fold_dir / name).is_file():
            return fold_dir / name
    raise FileNotFoundError(
        f"{fold_dir} has no {checkpoint or ' or '.join(CHECKPOINT_NAMES)}; training may not have finished."
    )


def read_nnunet(
    folder: str | os.PathLike,
    fold: int | str = 0,
    *,
    configuration: str | None = None,
    checkpoint: str | None = None,
) -> ImportedNetwork:
    """Read nnU-Net v2 trained model ``folder`` (one fold) into ``(spec, state_dict, info)``.

    ``fold``: ``0``..``4`` or ``"all"`` (the ``fold_<fold>`` folder); ``configuration``: the plans
    configuration (default: the checkpoint's ``init_args``, else the folder name's last ``__`` part);
    ``checkpoint``: file name in the fold folder (default ``checkpoint_final.pth``, else
    ``checkpoint_best.pth``). ``info`` holds ``format`` (``"nnunet_v2"``), ``source``,
    ``configuration``, ``fold``, ``trainer``, ``plans_name``, ``dataset_name``, ``epoch``,
    ``patch_size`` (voxels, image x, y, z order), ``spacing`` (mm, same order), ``plans_patch_size``
    and ``plans_spacing`` (nnU-Net's array order), ``transpose_forward``, ``reader`` and
    ``normalization`` (per channel: ``scheme`` and its parameters).
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"nnU-Net model folder {root} does not exist.")
    plans_file, dataset_file = root / "plans.json", root / "dataset.json"
    plans = _read_json(plans_file, "the nnU-Net plans")
    dataset = _read_json(dataset_file, "the dataset description")
    checkpoint_file = _checkpoint(root / f"fold_{fold}", checkpoint)
    saved = load_safely(
        checkpoint_file,
        safe_globals=numpy_data_globals(),
        fix="nnU-Net checkpoints hold weights, numbers and strings; this one holds other objects, so it is not read.",
    )
    if not isinstance(saved, dict) or not isinstance(saved.get("network_weights"), dict):
        raise ValueError(f"{checkpoint_file} is not an nnU-Net v2 checkpoint (no 'network_weights').")
    init_args = saved.get("init_args")
    if not isinstance(init_args, dict):
        init_args = {}
    if configuration is None:
        configuration = init_args.get("configuration") or (root.name.split("__")[-1] if "__" in root.name else None)
    if not configuration:
        raise ValueError(
            f"Cannot tell which configuration of {plans_file} {checkpoint_file} was trained with; pass it."
        )
    _check_plans(plans, plans_file)
    config = _configuration(plans, configuration, plans_file)
    where = f"{plans_file} configuration {configuration!r}"
    _check_configuration(config, where)
    architecture, arch_kwargs = _architecture(config, where)
    channels = _channels(dataset, dataset_file)
    patch = config.get("patch_size")
    if not isinstance(patch, list) or len(patch) != 3:
        raise ValueError(
            f"{where} is not 3D (patch size {patch}); only 3D configurations can be scored. "
            "Use a 3d_fullres or 3d_lowres model."
        )
    spec = NetworkSpec(
        architecture,
        json.loads(
            json.dumps(
                {"in_channels": len(channels), "out_channels": _num_outputs(dataset, dataset_file), **arch_kwargs}
            )
        ),
    )
    try:
        module = build_network(spec)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: cannot build {architecture}: {exc}") from exc
    state = normalise_state_dict(saved["network_weights"])
    trainer = str(saved.get("trainer_name", "")) or None
    try:
        load_state_dict_strict(module, state)
    except ValueError as exc:
        hint = (
            f" The trainer {trainer} may change the network nnU-Net builds from the plans."
            if trainer and trainer != "nnUNetTrainer"
            else ""
        )
        raise ValueError(f"{checkpoint_file} does not fit {where}: {exc}{hint}") from exc
    transpose = list(plans.get("transpose_forward", [0, 1, 2]))
    reader = str(plans.get("image_reader_writer", ""))
    patch_xyz = _xyz(patch, transpose, reader)
    info = {
        "format": "nnunet_v2",
        "source": str(root),
        "configuration": configuration,
        "fold": str(fold),
        "checkpoint": checkpoint_file.name,
        "trainer": trainer,
        "plans_name": plans.get("plans_name"),
        "dataset_name": plans.get("dataset_name"),
        "epoch": saved.get("current_epoch"),
        "patch_size": tuple(int(p) for p in patch_xyz) if patch_xyz else None,
        "spacing": _xyz(config.get("spacing"), transpose, reader),
        "plans_patch_size": list(patch),
        "plans_spacing": config.get("spacing"),
        "transpose_forward": transpose,
        "reader": reader,
        "normalization": _normalisation(config, plans, channels),
    }
    return ImportedNetwork(spec, state, info)
