"""Decoder features of a model on a target, cached on disk by what they depend on.

A cache entry is keyed by (model id, dataset digest, case ids, sampler settings, layers) and written
atomically (temporary file + ``os.replace``), so a crash never leaves a half-written entry. Beside it,
``<entry>.sha256`` holds its checksum; a read verifies it, and a corrupt entry (disk error, truncated
copy, a flipped bit) is recomputed with a warning instead of failing every rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mlflow_ccfv.data.normalization import IntensityNormalization
from mlflow_ccfv.data.preprocess import PreprocessedCase
from mlflow_ccfv.data.target import Target
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.features import FeatureSet, SamplerConfig, sample_features
from mlflow_ccfv.networks.devices import resolve_device
from mlflow_ccfv.options import CACHE_ENV, cache_root

__all__ = ["CHECKSUM_SUFFIX", "CaseCache", "FeatureCache", "cache_key"]

_logger = logging.getLogger(__name__)


def cache_key(
    model_id: str,
    target: Target,
    config: SamplerConfig,
    layers: Sequence[str],
    *,
    amp: bool = False,
    normalization: IntensityNormalization | None = None,
) -> str:
    """Hash of (LoggedModel id, dataset digest, case ids, sampler settings, layers[, amp][, normalization]).

    The device is not part of the key (features do not depend on it beyond rounding); mixed
    precision and a model's own intensity normalisation are, and only when set, so the keys of
    float32 features on the target's normalisation stay what they were.
    """
    payload: dict[str, object] = {
        "model_id": model_id,
        "dataset_digest": target.digest,
        "cases": list(target.case_ids),
        "sampler": config.to_dict(),
        "layers": list(layers),
    }
    if amp:
        payload["amp"] = True
    if normalization is not None:
        payload["normalization"] = normalization.to_records()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


class CaseCache:
    """Pre-processed target cases, loaded once and shared by every model scored on the target.

    Cases normalised with a model's own intensity normalisation are kept for the last such
    normalisation only (besides the target's own), so memory stays at two copies of the target.
    """

    def __init__(self, target: Target):
        self.target = target
        self._cases: list[PreprocessedCase] | None = None
        self._own: tuple[IntensityNormalization, list[PreprocessedCase]] | None = None

    def cases(self, normalization: IntensityNormalization | None = None) -> list[PreprocessedCase]:
        """The target's cases, with ``normalization`` (a model's own) instead of the target's when given."""
        if normalization is None:
            if self._cases is None:
                self._cases = list(self.target.dataset.iter_cases(self.target.case_ids))
            return self._cases
        if self._own is None or self._own[0] != normalization:
            self._own = None  # the previous model's cases go before the next ones are loaded
            cases = list(self.target.dataset.iter_cases(self.target.case_ids, normalization=normalization))
            self._own = (normalization, cases)
        return self._own[1]


class FeatureCache:
    """The on-disk feature cache under ``root`` (default ``$MLFLOW_CCFV_CACHE`` or ``.ccfv-cache``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_root(root)

    def check_writable(self) -> None:
        """Refuse (:class:`~mlflow_ccfv.errors.OptionError` naming ``--cache-dir``) a cache folder that is
        a file or cannot be created or written, before any work; nothing is created here."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        problem = None
        if existing == self.root and not self.root.is_dir():
            problem = "is not a folder"
        elif not existing.is_dir():
            problem = f"cannot be created: {existing} is not a folder"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"cannot be written: no write permission on {existing}"
        if problem:
            raise OptionError(f"--cache-dir {self.root} {problem}. Pass a writable folder (or set ${CACHE_ENV}).")

    def path(self, model_id: str | None, key: str) -> Path:
        return self.root / "features" / (model_id or "unregistered") / f"{key}.npz"

    def features(
        self,
        module: nn.Module,
        layers: Sequence[str],
        target: Target,
        config: SamplerConfig,
        model_id: str | None,
        label: str,
        *,
        force: bool = False,
        cases: CaseCache | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        normalization: IntensityNormalization | None = None,
    ) -> tuple[FeatureSet, bool]:
        """Features of ``module`` at ``layers`` on ``target``: ``(features, from_cache)``.

        ``normalization``: the model's own intensity normalisation of the target's images (None: the
        target's); part of the key when given.

        ``model_id`` identifies the weights in the key (``None``: ``label`` does); ``force`` re-runs
        inference even when an entry exists; ``device`` (default CUDA when available, else CPU) and
        ``amp`` (mixed-precision inference, off by default) are passed to
        :func:`~mlflow_ccfv.features.sample_features`. An entry is verified against its SHA-256
        (written beside it) before it is read; a corrupt one (truncated, empty, a flipped bit) is
        recomputed with a warning.
        """
        key = cache_key(model_id or label, target, config, layers, amp=amp, normalization=normalization)
        path = self.path(model_id, key)
        if path.is_file() and not force:
            problem = _verify_entry(path)
            if problem is None:
                try:
                    features = FeatureSet.load(path)
                    _logger.info("%s: features from cache %s", label, path)
                    return features, True
                except Exception as exc:  # a checksummed entry that still fails to load: recompute
                    problem = f"{type(exc).__name__}: {exc}"
            _logger.warning("%s: feature cache entry %s is unusable (%s); recomputing it", label, path, problem)
        cases = cases or CaseCache(target)
        features = sample_features(
            module,
            cases.cases(normalization),
            layers=list(layers),
            config=config,
            device=resolve_device(device),
            amp=amp,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        features.save(tmp)
        checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
        tmp_sum = checksum.with_name(checksum.name + f".tmp{os.getpid()}")
        tmp_sum.write_text(_sha256(tmp) + "\n")
        # the entry first, then its checksum: a crash in between leaves an entry without a matching
        # checksum, which the next read recomputes
        os.replace(tmp, path)
        os.replace(tmp_sum, checksum)
        return features, False


#: Suffix of the SHA-256 file written beside each cache entry.
CHECKSUM_SUFFIX = ".sha256"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify_entry(path: Path) -> str | None:
    """None if ``path`` matches its recorded SHA-256; else why not (missing checksum, mismatch, empty)."""
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        expected = checksum.read_text().strip()
    except FileNotFoundError:
        return "no checksum recorded"
    except (OSError, UnicodeDecodeError) as exc:
        return f"checksum unreadable: {exc}"
    actual = _sha256(path)
    if actual != expected:
        return f"SHA-256 {actual[:12]}... does not match the recorded {expected[:12]}..."
    return None
