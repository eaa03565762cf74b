"""Bank folders: export registered versions to safetensors files + a manifest, and register a folder back.

:func:`export_bank` writes what :mod:`mlflow_ccfv.networks.bank_files` describes from the versions of
a bank, with, per model, the ``mlflow-ccfv`` commands that reproduce it (``synth`` with the source's
generation settings, ``pretrain`` with the run's recipe, ``export-bank`` to compare digests). It
checks first that the source data it names is the data the model was trained on (the version's
``pretrain.budget`` digest covers the dataset's content).

:func:`register_bank_folder` verifies every file's SHA-256 before registering anything, then
registers each model (tags as a pre-trained version's, plus ``weights.sha256``) or reuses the
version registered from the same file earlier. The project ships one such folder,
:data:`SHIPPED_BANK`: UNets pre-trained on four synthetic tasks by the development study, which the
demo registers in seconds instead of pre-training for minutes (docs/study.md).
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.data.synthetic import get_task
from mlflow_ccfv.errors import DatasetError, OptionError, RegistryError
from mlflow_ccfv.networks.bank_files import (
    BankManifest,
    ManifestEntry,
    read_weights,
    verify_bank,
    write_manifest,
    write_weights,
)
from mlflow_ccfv.networks.specs import DEFAULT_PATCH_SIZE
from mlflow_ccfv.options import format_ints, parse_ints
from mlflow_ccfv.scoring.ranking import CONTROL_SOURCE
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.load import load_version
from mlflow_ccfv.tracking.register import register_network
from mlflow_ccfv.tracking.runs import run_record
from mlflow_ccfv.tracking.search import DEFAULT_BANK, bank_versions, check_name, find_version, version_uri
from mlflow_ccfv.training import TrainConfig

__all__ = ["SHIPPED_BANK", "export_bank", "register_bank_folder"]

_logger = logging.getLogger(__name__)

#: The bank shipped with the package (package data): the demo's pre-trained models.
SHIPPED_BANK = Path(__file__).resolve().parents[1] / "shipped_bank"
#: ``pretrain.*`` tags not carried over to a registered copy: they name a run of another tracking store.
_LOCAL_PRETRAIN_KEYS = ("run_id",)
#: Recipe fields the ``pretrain`` command cannot set (they must keep TrainConfig's defaults).
_FIXED_FIELDS = ("weight_decay", "poly_power", "mirror")


def _latest_by_name(versions: Sequence[ModelVersion]) -> dict[str, ModelVersion]:
    out: dict[str, ModelVersion] = {}
    for v in versions:
        if v.name not in out or int(v.version) > int(out[v.name].version):
            out[v.name] = v
    return out


def _source_folder(data_root: Path, source: str) -> Path:
    """The MSD folder of ``source`` (``Task03``) under ``data_root``."""
    try:
        folder = data_root / get_task(source).name
    except DatasetError:
        found = sorted(p for p in data_root.glob(f"{source}_*") if (p / "dataset.json").is_file())
        folder = found[0] if found else data_root / source
    if not (folder / "dataset.json").is_file():
        raise DatasetError(
            f"The source data of {source} is not under {data_root} ({folder} has no dataset.json); pass --data-root "
            "with the folder the bank's sources were generated in (the study's --data-root)."
        )
    return folder


def _train_config(params: dict[str, str]) -> TrainConfig:
    values: dict[str, Any] = {k[len("train.") :]: v for k, v in params.items() if k.startswith("train.")}
    if values.get("mirror") in ("True", "False"):
        values["mirror"] = values["mirror"] == "True"
    return TrainConfig.from_dict(values)


def _commands(
    name: str,
    source: str,
    architecture: str,
    config: TrainConfig,
    params: dict[str, str],
    synthetic: dict | None,
    n_cases: int,
    names: Sequence[str],
) -> list[str]:
    """``synth`` + ``pretrain`` + ``export-bank``: the shell lines that recreate ``name``'s file."""
    lines = []
    if synthetic is not None:
        lines.append(
            shlex.join(
                [
                    "mlflow-ccfv",
                    "synth",
                    "--out",
                    "data",
                    "--task",
                    source,
                    "--n-cases",
                    str(n_cases),
                    "--shape",
                    format_ints(synthetic["shape"]),
                    "--spacing",
                    ",".join(f"{float(s):g}" for s in synthetic["spacing"]),
                    "--seed",
                    str(synthetic["seed"]),
                    "--orientation",
                    str(synthetic["orientation"]),
                ]
            )
        )
    pretrain = [
        "mlflow-ccfv",
        "pretrain",
        "--dataset",
        source,
        "--data-root",
        "data",
        "--architecture",
        architecture,
        "--name",
        name,
        "--bank",
        "reproduce",
        "--steps",
        str(config.steps),
        "--batch-size",
        str(config.batch_size),
        "--patch-size",
        format_ints(config.patch_size),
        "--learning-rate",
        f"{config.learning_rate:g}",
        "--optimizer",
        config.optimizer,
        "--foreground-fraction",
        f"{config.foreground_fraction:g}",
        "--seed",
        str(config.seed),
        "--device",
        "cpu",
    ]
    if params.get("channels", "all") != "all":
        pretrain += ["--channels", params["channels"]]
    if int(params.get("curve_every") or 0):
        pretrain += ["--curve-every", params["curve_every"]]
    if params.get("early_step") not in (None, "", "None"):
        pretrain += ["--early-step", params["early_step"]]
    lines.append("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 " + shlex.join(pretrain))
    lines.append(
        shlex.join(
            ["mlflow-ccfv", "export-bank", "--bank", "reproduce", "--out", "reproduced", "--data-root", "data"]
            + ["--names", ",".join(names)]
        )
    )
    return lines


def _entry(v: ModelVersion, out_dir: Path, data_root: Path | None) -> ManifestEntry:
    tags = dict(v.tags or {})
    loaded = load_version(version_uri(v))
    if loaded.spec is None:
        raise RegistryError(
            f"{version_uri(v)} is an mlflow.pytorch model without a network spec; register it in the mlflow_ccfv "
            "flavor first (mlflow-ccfv register --logged-model ... --spec ...)."
        )
    file = f"{v.name}.safetensors"
    digest = write_weights(loaded.module.state_dict(), out_dir / file)
    pretrain = T.pretrain_values(tags)
    source = tags.get(T.SOURCE_DATASET, "")
    dice = pretrain.get("source_dice")
    entry = ManifestEntry(
        name=v.name,
        file=file,
        sha256=digest,
        spec=loaded.spec,
        source_dataset=source,
        checkpoint=pretrain.get("checkpoint", "final"),
        source_dice=float(dice) if dice else None,
        patch_size=parse_ints(
            tags.get(T.PATCH_SIZE, format_ints(DEFAULT_PATCH_SIZE)), "patch_size", length=3, minimum=1
        ),  # type: ignore[arg-type]
        pretrain={k: val for k, val in pretrain.items() if k not in _LOCAL_PRETRAIN_KEYS},
        exported_from=version_uri(v),
    )
    record = run_record(pretrain["run_id"]) if pretrain.get("run_id") else None
    if source == CONTROL_SOURCE or record is None:
        if source != CONTROL_SOURCE:
            _logger.warning("%s: its pre-training run is not in this tracking store; no reproduce commands", v.name)
        return entry
    params, run_tags = record
    config = _train_config(params)
    entry.train_config = config.to_dict()
    defaults = TrainConfig()
    fixed = [f for f in _FIXED_FIELDS if getattr(config, f) != getattr(defaults, f)]
    holdout = int(params.get("n_held_out") or 0) > 0
    if data_root is not None:
        ds = MSDDataset.load(_source_folder(data_root, source))
        budget = config.digest(
            architecture=params.get("architecture", loaded.spec.architecture),
            channels=params.get("channels", "all"),
            dataset=ds.digest(),
            **({"holdout": "80/20 seed 0"} if holdout else {}),
        )
        if budget != pretrain.get("budget"):
            raise OptionError(
                f"{version_uri(v)} was pre-trained on other data than {ds.root} (budget digest {budget}, the version's "
                f"{pretrain.get('budget')}); pass --data-root with the folder its sources were generated in."
            )
        synthetic = dict(json.loads((ds.root / "dataset.json").read_text()).get("synthetic") or {}) or None
        entry.source_data = {
            "folder": ds.root.name,
            "n_cases": len(ds.cases),
            "digest": ds.digest(),
            "synthetic": synthetic,
            "holdout": "80/20, split seed 0" if holdout else "none",
        }
        final = run_tags.get(T.RUN_MODEL, v.name)
        produced = [
            n for n in (f"{final}-early", final) if params.get("early_step") not in (None, "", "None") or n == final
        ]
        if fixed:
            _logger.warning("%s: %s differ from the defaults; the pretrain command cannot set them", v.name, fixed)
        else:
            entry.reproduce = _commands(
                final, source, entry.architecture, config, params, synthetic, len(ds.cases), produced
            )
    return entry


def export_bank(
    bank: str,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    data_root: str | Path | None = "data",
    notes: dict | None = None,
) -> BankManifest:
    """Write the newest version of each model of ``bank`` (or of ``names``) to ``out_dir`` as
    ``<name>.safetensors`` plus ``manifest.json`` (:mod:`mlflow_ccfv.networks.bank_files`). Only reads
    the tracking store. ``data_root``: where the sources were generated; each model's data is checked
    against its budget digest and its ``synth`` command written from the data's settings (``None``:
    no check, no reproduce commands). Random-init controls are left out unless named."""
    check_name("bank", bank)
    versions = _latest_by_name(bank_versions(bank))
    if names:
        missing = [n for n in names if n not in versions]
        if missing:
            raise RegistryError(
                f"No model(s) {', '.join(missing)} in the bank {bank!r}; it has {', '.join(sorted(versions)) or 'none'}."
            )
        chosen = [versions[n] for n in names]
    else:
        chosen = [v for n, v in sorted(versions.items()) if (v.tags or {}).get(T.SOURCE_DATASET) != CONTROL_SOURCE]
    if not chosen:
        raise RegistryError(f"The bank {bank!r} has no pre-trained model to export.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(data_root) if data_root else None
    entries = []
    for v in chosen:
        entries.append(_entry(v, out, root))
        _logger.info("exported %s -> %s (%s)", version_uri(v), out / entries[-1].file, entries[-1].sha256[:12])
    manifest = BankManifest(entries, dict(notes or {}))
    write_manifest(manifest, out)
    return manifest


def register_bank_folder(
    directory: str | Path = SHIPPED_BANK, bank: str = DEFAULT_BANK, names: Sequence[str] | None = None
) -> list[ModelVersion]:
    """Verify every file of the bank folder ``directory`` (the shipped bank by default) against its
    SHA-256, then register each model into ``bank`` with its manifest's tags, or reuse the version of
    the same name, source and bank registered from the same file. A missing or altered file is a
    :class:`~mlflow_ccfv.errors.RegistryError` and nothing is registered. Returns the versions in
    manifest order."""
    check_name("bank", bank)
    manifest = verify_bank(directory, names)
    chosen = [m for m in manifest.models if names is None or m.name in set(names)]
    out = []
    for m in chosen:
        wanted = {T.SOURCE_DATASET: m.source_dataset, T.BANK: bank, T.WEIGHTS_SHA256: m.sha256}
        existing = find_version(m.name, wanted)
        if existing is not None:
            _logger.info("reusing %s (registered from %s earlier)", version_uri(existing), m.file)
            out.append(existing)
            continue
        extra = {T.pretrain_tag(k): v for k, v in m.pretrain.items() if k not in _LOCAL_PRETRAIN_KEYS}
        extra[T.WEIGHTS_SHA256] = m.sha256
        steps = m.pretrain.get("steps", "?")
        out.append(
            register_network(
                m.spec,
                read_weights(Path(directory) / m.file),
                m.name,
                m.source_dataset,
                bank=bank,
                extra_tags=extra,
                patch_size=m.patch_size,
                description=f"{m.architecture} pre-trained on {m.source_dataset} for {steps} steps ({m.checkpoint} "
                f"checkpoint), registered from {m.file} (SHA-256 {m.sha256})",
            )
        )
    return out
