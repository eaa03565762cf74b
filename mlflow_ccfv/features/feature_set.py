"""The voxel features sampled from a network on a target dataset, and their conversion to estimator inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CaseSamples", "FeatureSet"]


_FORMAT = "mlflow_ccfv.FeatureSet/1"


@dataclass
class CaseSamples:
    """Everything sampled from one case; row ``i`` of every array is the same sampled voxel.

    Attributes:
        case_id: the case's identifier.
        coords: ``[M, 3] int64`` voxel indices in the pre-processed volume (before any window padding).
        labels: ``[M] int64`` the label map's value at ``coords``.
        is_global: ``[M] bool`` True for the L voxels drawn uniformly over the whole case (feature
            variety), False for the per-class samples (class consistency, baselines).
        rank: ``[M] int64`` position of the voxel in its class's draw order (or in the global draw
            order); a layer with budget ``m`` for class ``k`` uses the class-``k`` rows with ``rank < m``.
        window_starts: ``[M, 3] int64`` start of the sliding window the voxel was read from, in the
            padded volume's index space (``coords + padding`` lies inside ``[start, start + roi)``).
        padding: ``[3] int64`` voxels of padding added before the volume on each axis (volume smaller
            than the ROI, as MONAI's ``sliding_window_inference`` pads).
        probs: ``[M, C_s] float32`` the source head's class probabilities at each voxel.
        features: ``{layer: [M, C_layer] float32}`` the layer's output, trilinearly interpolated to
            the window size and read at the voxel.
        budgets: ``{layer: {class: m}}`` per-layer number of samples of each class.
    """

    case_id: str
    coords: np.ndarray
    labels: np.ndarray
    is_global: np.ndarray
    rank: np.ndarray
    window_starts: np.ndarray
    padding: np.ndarray
    probs: np.ndarray
    features: dict[str, np.ndarray]
    budgets: dict[str, dict[int, int]]

    def class_mask(self, layer: str, k: int) -> np.ndarray:
        """``[M] bool``: the rows holding class ``k``'s samples at ``layer``."""
        m = self.budgets[layer].get(int(k), 0)
        return (~self.is_global) & (self.labels == k) & (self.rank < m)

    def sampled_classes(self) -> list[int]:
        """Classes with per-class samples in this case (ascending)."""
        return sorted({int(k) for k in np.unique(self.labels[~self.is_global])})


@dataclass
class FeatureSet:
    """Per layer and per case: class samples, global samples, coordinates, labels and head probabilities.

    ``layers`` are ordered bottleneck -> output, as :func:`mlflow_ccfv.features.decoder_layers`
    returns them; the last layer is the baselines' feature layer. ``config`` is the
    :meth:`SamplerConfig.to_dict` the features were sampled with.
    """

    layers: list[str]
    cases: list[CaseSamples]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def layer_channels(self) -> dict[str, int]:
        """Feature dimension of each layer."""
        return {layer: int(self.cases[0].features[layer].shape[1]) for layer in self.layers} if self.cases else {}

    def case(self, case: int | str) -> CaseSamples:
        """The :class:`CaseSamples` of ``case`` (index or case id)."""
        if isinstance(case, str):
            ids = self.case_ids
            if case not in ids:
                raise KeyError(f"No case {case!r} in this FeatureSet; cases: {', '.join(ids)}.")
            return self.cases[ids.index(case)]
        return self.cases[case]

    def _layer(self, layer: str | int | None) -> str:
        if layer is None:
            return self.layers[-1]
        if isinstance(layer, int):
            return self.layers[layer]
        if layer not in self.layers:
            raise KeyError(f"No layer {layer!r} in this FeatureSet; layers: {', '.join(self.layers)}.")
        return layer

    def class_features(
        self, layer: str | int, case: int | str, include_background: bool = False
    ) -> dict[int, np.ndarray]:
        """``{class: [n_k, C_layer] float32}`` for one case at one layer (classes with samples only)."""
        layer = self._layer(layer)
        c = self.case(case)
        out = {}
        for k in c.sampled_classes():
            if k == 0 and not include_background:
                continue
            mask = c.class_mask(layer, k)
            if mask.any():
                out[k] = c.features[layer][mask]
        return out

    def global_features(self, layer: str | int, case: int | str) -> np.ndarray:
        """``[L, C_layer] float32``: the uniformly drawn voxels of one case at one layer."""
        layer = self._layer(layer)
        c = self.case(case)
        return c.features[layer][c.is_global]

    def ccfv_inputs(self) -> list[tuple[list[dict[int, np.ndarray]], list[np.ndarray]]]:
        """Per layer (bottleneck -> output): (foreground class features per case, global samples per case).

        The input of :func:`mlflow_ccfv.estimators.ccfv` and ``score_methods``.
        """
        return [
            (
                [self.class_features(layer, i) for i in range(len(self.cases))],
                [self.global_features(layer, i) for i in range(len(self.cases))],
            )
            for layer in self.layers
        ]

    def baseline_inputs(self, layer: str | int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features [n, d] float32, labels [n] int64, probs [n, C_s] float32)`` for the baselines.

        The per-class samples (background included when it was sampled) of ``layer`` (default: the
        last decoder layer, the one feeding the output head), pooled over all cases.
        """
        layer = self._layer(layer)
        feats, labels, probs = [], [], []
        for c in self.cases:
            mask = np.zeros(len(c.labels), dtype=bool)
            for k in c.sampled_classes():
                mask |= c.class_mask(layer, k)
            feats.append(c.features[layer][mask])
            labels.append(c.labels[mask])
            probs.append(c.probs[mask])
        if not feats:
            raise ValueError("This FeatureSet holds no cases.")
        return np.concatenate(feats), np.concatenate(labels), np.concatenate(probs)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write everything to one ``.npz`` (no pickled objects); returns the path written."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "format": _FORMAT,
            "layers": self.layers,
            "case_ids": self.case_ids,
            "config": self.config,
            "budgets": [
                {layer: {str(k): int(m) for k, m in c.budgets[layer].items()} for layer in self.layers}
                for c in self.cases
            ],
        }
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
        for i, c in enumerate(self.cases):
            for name in ("coords", "labels", "is_global", "rank", "window_starts", "padding", "probs"):
                arrays[f"case{i}/{name}"] = getattr(c, name)
            for j, layer in enumerate(self.layers):
                arrays[f"case{i}/layer{j}"] = c.features[layer]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub misreads **kwargs
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a FeatureSet written by :meth:`save`."""
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise ValueError(f"{path} is not a saved FeatureSet (no 'meta' entry).")
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} has format {meta.get('format')!r}; expected {_FORMAT!r}.")
            layers = list(meta["layers"])
            cases = []
            for i, case_id in enumerate(meta["case_ids"]):
                get = lambda name, i=i: data[f"case{i}/{name}"]  # noqa: E731
                cases.append(
                    CaseSamples(
                        case_id=case_id,
                        coords=get("coords"),
                        labels=get("labels"),
                        is_global=get("is_global"),
                        rank=get("rank"),
                        window_starts=get("window_starts"),
                        padding=get("padding"),
                        probs=get("probs"),
                        features={layer: get(f"layer{j}") for j, layer in enumerate(layers)},
                        budgets={
                            layer: {int(k): int(m) for k, m in meta["budgets"][i][layer].items()} for layer in layers
                        },
                    )
                )
        return cls(layers=layers, cases=cases, config=meta["config"])

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}: {v}" for k, v in self.layer_channels.items())
        return f"FeatureSet({len(self.cases)} cases; layers {{{dims}}})"
