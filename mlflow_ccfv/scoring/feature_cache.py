"""Decoder features of a model on a target, cached on disk by what they depend on.

A cache entry is keyed by (model id, dataset digest, case ids, sampler settings, layers) and written
atomically (temporary file + ``os.replace``), so a crash never leaves a half-written entry.
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

from mlflow_ccfv.data.preprocess import PreprocessedCase
from mlflow_ccfv.data.target import Target
from mlflow_ccfv.features import FeatureSet, SamplerConfig, sample_features
from mlflow_ccfv.networks.devices import resolve_device

__all__ = ["CACHE_ENV", "DEFAULT_CACHE_DIR", "CaseCache", "FeatureCache", "cache_key"]

_logger = logging.getLogger(__name__)

#: Where features are cached unless ``cache_dir`` / ``MLFLOW_CCFV_CACHE`` says otherwise.
DEFAULT_CACHE_DIR = ".ccfv-cache"
CACHE_ENV = "MLFLOW_CCFV_CACHE"


def cache_key(model_id: str, target: Target, config: SamplerConfig, layers: Sequence[str], *, amp: bool = False) -> str:
    """Hash of (LoggedModel id, dataset digest, case ids, pre-processing, sampler settings, layers[, amp]).

    The device is not part of the key (features do not depend on it beyond rounding); mixed
    precision is, and only when on, so the keys of float32 features stay what they were.
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
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


class CaseCache:
    """Pre-processed target cases, loaded once and shared by every model scored on the target."""

    def __init__(self, target: Target):
        self.target = target
        self._cases: list[PreprocessedCase] | None = None

    def cases(self) -> list[PreprocessedCase]:
        if self._cases is None:
            self._cases = list(self.target.dataset.iter_cases(self.target.case_ids))
        return self._cases


class FeatureCache:
    """The on-disk feature cache under ``root`` (default ``$MLFLOW_CCFV_CACHE`` or ``.ccfv-cache``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)

    def path(self, model_id: str | None, key: str) -> Path:
        return self.root / "features" / (model_id or "unregistered") / f"{key}.npz"

    def features(
        self,
        module: nn.Module,
        layers: Sequence[str],
        target: Target,
        config: SamplerConfig,
        *,
        model_id: str | None,
        label: str,
        force: bool = False,
        cases: CaseCache | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
    ) -> tuple[FeatureSet, bool]:
        """Features of ``module`` at ``layers`` on ``target``: ``(features, from_cache)``.

        ``model_id`` identifies the weights in the key (``None``: ``label`` does); ``force`` re-runs
        inference even when an entry exists; ``device`` (default CUDA when available, else CPU) and
        ``amp`` (mixed-precision inference, off by default) are passed to
        :func:`~mlflow_ccfv.features.sample_features`.
        """
        key = cache_key(model_id or label, target, config, layers, amp=amp)
        path = self.path(model_id, key)
        if path.is_file() and not force:
            try:
                features = FeatureSet.load(path)
                _logger.info("%s: features from cache %s", label, path)
                return features, True
            except (ValueError, OSError, KeyError) as exc:
                _logger.warning("%s: ignoring unreadable feature cache %s (%s)", label, path, exc)
        cases = cases or CaseCache(target)
        features = sample_features(
            module, cases.cases(), layers=list(layers), config=config, device=resolve_device(device), amp=amp
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        features.save(tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache entry
        return features, False
