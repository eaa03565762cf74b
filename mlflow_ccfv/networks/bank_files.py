"""A model bank as plain files: one ``.safetensors`` file of weights per model and a ``manifest.json``.

The project ships a small pre-trained bank this way (``mlflow_ccfv/shipped_bank``, used by the demo),
and ``mlflow-ccfv export-bank`` writes one from registered versions. Nothing here touches MLflow:
:mod:`mlflow_ccfv.pipelines.shipped_bank` registers and exports. The layout::

    manifest.json          {"format": "mlflow-ccfv-bank/1", "models": [ManifestEntry, ...]}
    unet-Task03.safetensors  the network's state_dict (safetensors: tensors only, no pickled code)

Every entry records its file's SHA-256, the :class:`~mlflow_ccfv.networks.specs.NetworkSpec` (MONAI
class + constructor arguments), the source dataset, the pre-training recipe and checkpoint, its Dice
on the source's held-out cases, and the ``mlflow-ccfv`` commands that reproduce it.
:func:`verify_bank` checks every file against its digest before anything uses one: a missing or
altered file is a :class:`~mlflow_ccfv.errors.RegistryError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mlflow_ccfv.errors import RegistryError
from mlflow_ccfv.networks.checkpoints import build_with_weights, normalise_state_dict
from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE, NetworkSpec

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "BankManifest",
    "ManifestEntry",
    "file_sha256",
    "read_manifest",
    "read_weights",
    "verify_bank",
    "write_manifest",
    "write_weights",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mlflow-ccfv-bank/1"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write ``state_dict`` (``{name: tensor}``, moved to the CPU) as a safetensors file; returns its SHA-256.

    The bytes depend only on the tensors (no time or host in the header), so equal weights give an
    equal digest. The file is written beside its final name and renamed, so no half-written file stays."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in normalise_state_dict(dict(state_dict)).items()}
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        save_file(state, str(partial), metadata={"format": "pt"})
        partial.chmod(0o644)  # a file to ship or share (safetensors writes it owner-only)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return file_sha256(path)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` state_dict of a safetensors file (CPU tensors; nothing is unpickled)."""
    return load_file(str(path), device="cpu")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


#: Each manifest field: (its test, what it must be). ``name``, ``file``, ``sha256``, ``spec`` and
#: ``source_dataset`` are required; the others have defaults.
_ENTRY_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty text"),
    "file": (
        lambda v: isinstance(v, str) and bool(v) and not Path(v).is_absolute() and ".." not in Path(v).parts,
        "a file name relative to the bank folder (no '..', not absolute)",
    ),
    "sha256": (lambda v: isinstance(v, str) and bool(_SHA256.match(v)), "64 lower-case hex digits"),
    "spec": (
        lambda v: (
            _is_str_dict(v)
            and isinstance(v.get("architecture"), str)
            and bool(v["architecture"])
            and _is_str_dict(v.get("kwargs", {}))
        ),
        'an object {"architecture": "UNet", "kwargs": {...}}',
    ),
    "source_dataset": (lambda v: isinstance(v, str) and bool(v), "a non-empty text"),
    "checkpoint": (lambda v: isinstance(v, str), "a text (final or early)"),
    "source_dice": (
        lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        "a number or null",
    ),
    "patch_size": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(s) and 1 <= s <= 4096 for s in v),
        "three integers in [1, 4096]",
    ),
    "pretrain": (_is_str_dict, "an object"),
    "train_config": (_is_str_dict, "an object"),
    "source_data": (_is_str_dict, "an object"),
    "reproduce": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of texts"),
    "exported_from": (lambda v: isinstance(v, str), "a text"),
}
_REQUIRED_FIELDS = ("name", "file", "sha256", "spec", "source_dataset")


def _check_entry(d: Any, index: int) -> None:
    """Raise a :class:`~mlflow_ccfv.errors.RegistryError` naming entry ``index`` and its first bad field."""
    fix = "restore the bank's manifest.json (reinstall mlflow-ccfv, or export the bank again)."
    if not _is_str_dict(d):
        raise RegistryError(f"Manifest entry {index} must be an object of fields, got {_shown(d)}; {fix}")
    who = f"Manifest entry {index} ({_shown(d.get('name'))})"
    for key in _REQUIRED_FIELDS:
        if key not in d:
            raise RegistryError(f"{who} lacks the field {key!r}; {fix}")
    for key, (ok, what) in _ENTRY_FIELDS.items():
        if key in d and not ok(d[key]):
            raise RegistryError(f"{who}: {key} must be {what}, got {_shown(d[key])}; {fix}")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class ManifestEntry:
    """One model of a bank folder.

    ``name``: registered-model name (``unet-Task03``); ``file``: its safetensors file, relative to the
    folder; ``sha256``: the file's digest; ``spec``: the network (architecture + constructor kwargs);
    ``source_dataset``: short name of the pre-training source; ``checkpoint``: ``final`` or ``early``;
    ``source_dice``: Dice on the source's held-out 20% (None: not measured); ``patch_size``: training
    patch / sliding-window ROI in voxels; ``pretrain``: the pre-training record (the version's
    ``pretrain.*`` values: steps, seed, learning rate, batch size, budget digest ...);
    ``train_config``: the full pre-training recipe (``TrainConfig.to_dict``); ``source_data``: how
    the source data was made (synthetic settings, case count, content digest); ``reproduce``: shell
    commands that recreate the weights; ``exported_from``: where they were exported from.
    """

    name: str
    file: str
    sha256: str
    spec: NetworkSpec
    source_dataset: str
    checkpoint: str = "final"
    source_dice: float | None = None
    patch_size: tuple[int, int, int] = DEFAULT_PATCH_SIZE
    pretrain: dict[str, str] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    source_data: dict[str, Any] = field(default_factory=dict)
    reproduce: list[str] = field(default_factory=list)
    exported_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = {"architecture": self.spec.architecture, "kwargs": self.spec.kwargs}
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: Any, index: int = 0) -> ManifestEntry:
        """The entry of manifest item ``d`` (the ``index``-th of ``models``), each field checked for its
        type (:func:`_check_entry`); a malformed one is a :class:`~mlflow_ccfv.errors.RegistryError`
        naming the entry and the field."""
        _check_entry(d, index)
        d = dict(d)
        spec = d.pop("spec")
        d["spec"] = NetworkSpec(spec["architecture"], dict(spec.get("kwargs", {})))
        d["patch_size"] = tuple(d.get("patch_size", DEFAULT_PATCH_SIZE))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def architecture(self) -> str:
        return self.spec.architecture


@dataclass
class BankManifest:
    """A bank folder's ``manifest.json``: ``models`` (one :class:`ManifestEntry` each) and ``notes``
    (free text: what the bank is and how it was made)."""

    models: list[ManifestEntry]
    notes: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "notes": self.notes, "models": [m.to_dict() for m in self.models]}

    @property
    def architectures(self) -> list[str]:
        return sorted({m.architecture for m in self.models})


def write_manifest(manifest: BankManifest, directory: str | os.PathLike) -> Path:
    """Write ``manifest.json`` into ``directory`` (indented, keys in a stable order); returns its path."""
    path = Path(directory) / MANIFEST_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(partial, path)
    return path


def read_manifest(directory: str | os.PathLike) -> BankManifest:
    """The manifest of a bank folder (files not checked: see :func:`verify_bank`)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise RegistryError(
            f"{path} is missing: {directory} is not a bank folder. Reinstall mlflow-ccfv to restore the shipped "
            "bank, or write one with `mlflow-ccfv export-bank --bank <bank> --out <folder>`."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc}); restore it (reinstall mlflow-ccfv).") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise RegistryError(
            f"{path} has format {data.get('format') if isinstance(data, dict) else None!r}; expected "
            f"{MANIFEST_FORMAT!r}. Restore it (reinstall mlflow-ccfv) or export the bank again."
        )
    entries = data.get("models", [])
    if not isinstance(entries, list):
        raise RegistryError(f"{path}: 'models' must be a list of entries, got {_shown(entries)}; restore it.")
    if not _is_str_dict(data.get("notes", {})):
        raise RegistryError(f"{path}: 'notes' must be an object, got {_shown(data.get('notes'))}; restore it.")
    try:
        models = [ManifestEntry.from_dict(m, i) for i, m in enumerate(entries)]
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}") from None
    if not models:
        raise RegistryError(f"{path} lists no models; export a bank with at least one model.")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise RegistryError(f"{path} lists a model name twice ({sorted(names)}); each name must be unique.")
    return BankManifest(models, dict(data.get("notes", {})), data["format"])


def verify_bank(directory: str | os.PathLike, names: Sequence[str] | None = None) -> BankManifest:
    """Read the manifest of ``directory`` and check every model file (or those of ``names``) against its
    SHA-256 and its network spec, before anything uses one. Any missing or altered file is a
    :class:`~mlflow_ccfv.errors.RegistryError` naming the files and the fix."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    chosen = manifest.models
    if names is not None:
        unknown = sorted(set(names) - {m.name for m in manifest.models})
        if unknown:
            raise RegistryError(
                f"{directory}: no model(s) {', '.join(unknown)} in the manifest; it has "
                f"{', '.join(m.name for m in manifest.models)}."
            )
        chosen = [m for m in manifest.models if m.name in set(names)]
    problems = []
    for m in chosen:
        path = directory / m.file
        if Path(m.file).is_absolute() or ".." in Path(m.file).parts:
            problems.append(f"{m.file} (model {m.name}) lies outside the bank folder")
        elif not path.is_file():
            problems.append(f"{path} (model {m.name}) is missing")
        elif (digest := file_sha256(path)) != m.sha256:
            problems.append(f"{path} (model {m.name}) has SHA-256 {digest}, the manifest says {m.sha256}")
    if problems:
        raise RegistryError(
            f"The bank in {directory} failed verification, nothing was registered: {'; '.join(problems)}. "
            "Restore the files (reinstall mlflow-ccfv, or `git checkout -- mlflow_ccfv/shipped_bank` in a clone), "
            "or recreate them with the commands in the manifest's `reproduce` lists."
        )
    for m in chosen:  # digests match: the weights must also fit their spec (an export bug otherwise)
        build_with_weights(m.spec, read_weights(directory / m.file))
    return manifest
