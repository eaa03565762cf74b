"""Medical Segmentation Decathlon (MSD) task folders: name resolution, the case list, the split.

An MSD task folder holds ``dataset.json`` (``labels``, ``modality``, a ``training`` list of
``{"image": ..., "label": ...}`` entries), ``imagesTr/`` and ``labelsTr/``. Images are 3D NIfTI or
4D NIfTI with the channels on the last axis (``[X, Y, Z, C]``); labels are 3D integer maps on the
image's grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mlflow_ccfv.data.cases import CaseFiles
from mlflow_ccfv.data.integrity import VerifyReport, verify_dataset
from mlflow_ccfv.data.nifti import ras_spacing, sha256_file, strip_nifti_suffix
from mlflow_ccfv.data.normalization import IntensityNormalization
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.options import DATA_ROOT_ENV

if TYPE_CHECKING:
    from mlflow_ccfv.data.preprocess import PreprocessConfig, PreprocessedCase

__all__ = ["CaseFiles", "MSDDataset", "Split", "resolve_dataset"]

log = logging.getLogger(__name__)


#: Modality names (``dataset.json`` ``modality``) treated as CT for intensity normalisation.
CT_MODALITIES = frozenset({"ct"})


def resolve_dataset(name_or_path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """Find a task folder from a name or a path.

    Args:
        name_or_path: an existing folder (taken as is), or a task name: ``Task07`` matches the single
            ``<data_root>/Task07_*`` folder, ``Task07_Pancreas`` (any exact folder name) that folder.
        data_root: where names are looked up; default ``$MLFLOW_CCFV_DATA``, else the current folder.

    Returns:
        The folder's absolute path.

    Raises:
        DatasetError: nothing matches, or several folders match (the message lists what exists).
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    name = str(name_or_path)
    if data_root is None:
        data_root = os.environ.get(DATA_ROOT_ENV, ".")
    root = Path(data_root).expanduser()
    if os.sep in name or (os.altsep and os.altsep in name):
        raise DatasetError(f"Dataset folder {name!r} does not exist. Pass an existing folder or a task name.")
    if not root.is_dir():
        raise DatasetError(
            f"Cannot resolve dataset {name!r}: data root {str(root)!r} is not a folder. "
            f"Pass data_root (or set ${DATA_ROOT_ENV}) to the folder holding the Task* folders."
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    exact = [p for p in folders if p.name == name]
    if exact:
        return exact[0].resolve()
    matches = [p for p in folders if p.name.startswith(name + "_")]
    available = ", ".join(p.name for p in folders[:30]) or "(none)"
    if len(folders) > 30:
        available += f", ... ({len(folders)} folders)"
    if not matches:
        raise DatasetError(
            f"No dataset folder named {name!r} or {name + '_*'!r} under {str(root)!r}. Available folders: {available}."
        )
    if len(matches) > 1:
        raise DatasetError(
            f"Dataset name {name!r} is ambiguous under {str(root)!r}: it matches "
            f"{', '.join(p.name for p in matches)}. Use the full folder name."
        )
    return matches[0].resolve()


#: dataset.json larger than this is refused (the MSD's largest, Task03 Liver, is a few kB).
MAX_DATASET_JSON_BYTES = 512 * 2**20


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _read_dataset_json(meta_path: Path) -> dict:
    """``dataset.json`` as a dict; a one-line :class:`DatasetError` for a huge, unreadable, deeply
    nested or non-object file."""
    size = meta_path.stat().st_size
    if size > MAX_DATASET_JSON_BYTES:
        raise DatasetError(
            f"{meta_path} is {size / 2**20:.0f} MiB; an MSD dataset.json is a few kB to a few MB. "
            "Check that this is the task's dataset.json."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except RecursionError:
        raise DatasetError(
            f"{meta_path} is nested too deeply to be an MSD dataset.json; fix or regenerate it."
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{meta_path} is not valid JSON ({exc}); fix or regenerate it.") from exc
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{meta_path} must hold a JSON object with 'labels', 'modality' and 'training'; got {type(meta).__name__}."
        )
    return meta


def _contained(
    root: Path, relative: str, meta_path: Path, index: int, what: str, parents: dict[str, str] | None = None
) -> Path:
    """``root / relative`` with every symlink resolved; a :class:`DatasetError` naming the entry when it
    escapes ``root`` (a ``..`` path, an absolute path, a symlinked file or folder leading out) or runs
    into a symlink loop.

    ``parents`` caches resolved folders (a million entries share two: imagesTr/ and labelsTr/), so only
    the file itself is checked per entry; the returned path is the one every later read uses.
    """
    base = str(root)
    joined = os.path.normpath(os.path.join(base, relative))  # plain strings: pathlib is slow at 1M entries
    folder, name = os.path.split(joined)
    try:
        parent = parents.get(folder) if parents is not None else None
        if parent is None:
            parent = str(Path(folder).resolve())
            if parents is not None:
                parents[folder] = parent
        path = os.path.join(parent, name)
        if os.path.islink(path):
            path = str(Path(path).resolve())
    except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError on a symlink loop
        raise DatasetError(
            f"{meta_path}: training entry {index} {what} {relative!r} cannot be resolved ({exc}); "
            "a symlink loop? Fix the link or the entry."
        ) from None
    if not path.startswith(base + os.sep):
        raise DatasetError(
            f"{meta_path}: training entry {index} {what} {relative!r} resolves to {path}, outside the dataset "
            f"folder {root} (a '..' path, an absolute path or a symlink leading out). Copy the file into the "
            "task folder."
        )
    return Path(path)


@dataclass(frozen=True)
class Split:
    """A train/test partition of case ids, with the seed and fraction that produced it."""

    train: list[str]
    test: list[str]
    seed: int = 0
    test_fraction: float = 0.2

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "train": list(self.train),
            "test": list(self.test),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        return cls(
            train=list(data["train"]),
            test=list(data["test"]),
            seed=int(data.get("seed", 0)),
            test_fraction=float(data.get("test_fraction", 0.2)),
        )

    def of(self, case_id: str) -> str:
        """``"train"`` or ``"test"``."""
        if case_id in self.test:
            return "test"
        if case_id in self.train:
            return "train"
        raise KeyError(f"Case {case_id!r} is in neither part of the split.")


@dataclass
class MSDDataset:
    """An MSD-layout task folder. Build it with :meth:`load`.

    Attributes:
        name: ``dataset.json`` ``name`` (else the folder name).
        root: the task folder.
        labels: label value -> class name, background (0) included.
        modalities: channel index -> modality name (``"CT"``, ``"FLAIR"`` ...).
        cases: the ``training`` list, in file order.
    """

    name: str
    root: Path
    labels: dict[int, str]
    modalities: dict[int, str]
    cases: list[CaseFiles]
    description: str = ""
    _intensity_cache: dict = field(default_factory=dict, repr=False, compare=False)  # header/statistics cache
    _hash_cache: dict = field(default_factory=dict, repr=False, compare=False)  # (path, mtime, size) -> sha256

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> MSDDataset:
        """Read ``dataset.json`` of a task folder (or task name, see :func:`resolve_dataset`).

        Only ``dataset.json`` is read here; :meth:`verify` checks the files themselves.
        """
        root = resolve_dataset(path, data_root)
        meta_path = root / "dataset.json"
        if not meta_path.is_file():
            raise DatasetError(
                f"{root} has no dataset.json. An MSD task folder needs dataset.json, imagesTr/ and labelsTr/."
            )
        real = str(meta_path.resolve())
        if not real.startswith(str(root) + os.sep):
            raise DatasetError(
                f"{meta_path} is a symlink to {real}, outside the dataset folder {root}; only files inside the "
                "task folder are read. Copy dataset.json into the task folder."
            )
        meta = _read_dataset_json(meta_path)
        for key in ("labels", "modality", "training"):
            if key not in meta:
                raise DatasetError(f"{meta_path} lacks the {key!r} entry required by the MSD layout; add it.")
        try:
            labels = {int(k): str(v) for k, v in meta["labels"].items()}
            modalities = {int(k): str(v) for k, v in meta["modality"].items()}
        except (ValueError, AttributeError) as exc:
            raise DatasetError(
                f"{meta_path}: 'labels' and 'modality' must map integer strings to names, e.g. "
                f'{{"0": "background", "1": "spleen"}} ({exc}).'
            ) from exc
        if 0 not in labels:
            raise DatasetError(f'{meta_path}: \'labels\' must declare 0 (background); add "0": "background".')
        if not modalities:
            raise DatasetError(f"{meta_path}: 'modality' is empty; declare one entry per image channel.")
        cases: list[CaseFiles] = []
        seen: set[str] = set()
        if not isinstance(meta["training"], list):
            raise DatasetError(f"{meta_path}: 'training' must be a list of {{'image': ..., 'label': ...}} entries.")
        parents: dict[str, str] = {}
        for i, entry in enumerate(meta["training"]):
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("image"), str)
                or not isinstance(entry.get("label"), str)
            ):
                raise DatasetError(
                    f"{meta_path}: training entry {i} must be {{'image': 'imagesTr/...', 'label': 'labelsTr/...'}}"
                    f" with two paths, got {_short(entry)}."
                )
            image = _contained(root, entry["image"], meta_path, i, "image", parents)
            label = _contained(root, entry["label"], meta_path, i, "label", parents)
            case_id = strip_nifti_suffix(image.name)
            if case_id in seen:
                raise DatasetError(f"{meta_path}: case {case_id!r} is listed twice in 'training'; remove one.")
            seen.add(case_id)
            cases.append(CaseFiles(case_id=case_id, image=image, label=label))
        if not cases:
            raise DatasetError(f"{meta_path}: the 'training' list is empty; list at least one case.")
        if not isinstance(meta["labels"], dict) or not isinstance(meta["modality"], dict):
            raise DatasetError(f"{meta_path}: 'labels' and 'modality' must be JSON objects.")
        return cls(
            name=str(meta.get("name") or root.name),
            root=root,
            labels=dict(sorted(labels.items())),
            modalities=dict(sorted(modalities.items())),
            cases=cases,
            description=str(meta.get("description", "")),
        )

    # --------------------------------------------------------------- properties
    @property
    def is_ct(self) -> bool:
        """True when every channel's modality is CT (CT intensity normalisation applies)."""
        return all(m.strip().lower() in CT_MODALITIES for m in self.modalities.values())

    @property
    def n_channels(self) -> int:
        return len(self.modalities)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}

    def case(self, case_id: str) -> CaseFiles:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise DatasetError(f"Dataset {self.name!r} has no case {case_id!r}. Cases: {', '.join(self.case_ids)}.")

    def __len__(self) -> int:
        return len(self.cases)

    # ---------------------------------------------------------------- integrity
    def verify(self, affine_tol: float = 1e-3, progress: bool = True) -> VerifyReport:
        """Check every case before any work; see :func:`mlflow_ccfv.data.integrity.verify_dataset`.

        Returns a :class:`~mlflow_ccfv.data.integrity.VerifyReport`; raises :class:`DatasetError`
        listing every failing case and file.
        """
        return verify_dataset(self, affine_tol=affine_tol, progress=progress)

    # -------------------------------------------------------------------- split
    def split(self, seed: int = 0, test_fraction: float = 0.2) -> Split:
        """Deterministic train/test split (the paper's 80/20).

        The case ids are sorted, then permuted with ``numpy.random.default_rng(seed)``; the first
        ``round(test_fraction * n)`` (at least 1 when there are 2 or more cases) form the test part.
        The result depends only on the set of case ids, the seed and the fraction.
        """
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
        ids = sorted(self.case_ids)
        n = len(ids)
        n_test = int(round(test_fraction * n))
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        order = np.random.default_rng(seed).permutation(n)
        test = sorted(ids[i] for i in order[:n_test])
        train = sorted(ids[i] for i in order[n_test:])
        return Split(train=train, test=test, seed=seed, test_fraction=test_fraction)

    # ----------------------------------------------------------- pre-processing
    def load_case(
        self,
        case_id: str,
        config: PreprocessConfig | None = None,
        normalization: IntensityNormalization | None = None,
    ) -> PreprocessedCase:
        """Load and pre-process one case; see :func:`mlflow_ccfv.data.preprocess.preprocess_case`.

        ``normalization``: a model's own intensity normalisation instead of the target's (None).
        Returns a :class:`~mlflow_ccfv.data.preprocess.PreprocessedCase` (``image`` float32
        ``[C, X, Y, Z]``, ``label`` int64 ``[X, Y, Z]``, ``spacing`` in mm, RAS axis order).
        """
        from mlflow_ccfv.data.preprocess import PreprocessConfig, preprocess_case  # torch: on first use

        config = config or PreprocessConfig()
        return preprocess_case(self, self.case(case_id), config, normalization)

    def iter_cases(
        self,
        case_ids: Iterable[str] | None = None,
        config: PreprocessConfig | None = None,
        progress: bool = True,
        normalization: IntensityNormalization | None = None,
    ) -> Iterator[PreprocessedCase]:
        """Yield pre-processed cases (all by default) one at a time, with a tqdm progress bar;
        ``normalization`` as in :meth:`load_case`."""
        ids = list(self.case_ids if case_ids is None else case_ids)
        for case_id in tqdm(ids, desc=f"loading {self.name}", unit="case", disable=None if progress else True):
            yield self.load_case(case_id, config, normalization)

    def largest_side(self, case_ids: Iterable[str] | None = None) -> int:
        """The largest spatial side (voxels) over the images of ``case_ids`` (default all), read from
        the NIfTI headers only; 0 when no header can be read."""
        import nibabel as nib

        wanted = set(case_ids) if case_ids is not None else None
        largest = 0
        for c in self.cases:
            if wanted is not None and c.case_id not in wanted:
                continue
            try:
                shape = nib.load(str(c.image)).shape  # type: ignore[attr-defined]
            except Exception:  # an unreadable file is the integrity check's business
                continue
            largest = max(largest, *(int(s) for s in shape[:3]))
        return largest

    def median_spacing(self) -> tuple[float, ...]:
        """Median voxel spacing over the cases in mm, in RAS axis order (from the headers only)."""
        if "median_spacing" not in self._intensity_cache:
            spacings = np.array([ras_spacing(c.image) for c in self.cases])
            self._intensity_cache["median_spacing"] = tuple(float(s) for s in np.median(spacings, axis=0))
        return self._intensity_cache["median_spacing"]

    # -------------------------------------------------------------- provenance
    def _sha256(self, path: Path) -> str:
        """SHA-256 of ``path``, hashed once per version of the file (keyed by mtime and size):
        ``manifest()`` and ``digest()`` are both called for every scored target."""
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._hash_cache:
            self._hash_cache[key] = sha256_file(path)
        return self._hash_cache[key]

    def manifest(self, split: Split | None = None) -> pd.DataFrame:
        """One row per case: ``case_id, image, label, image_sha256, label_sha256, split``.

        ``image``/``label`` are paths relative to :attr:`root`; ``split`` is from ``split``
        (default :meth:`split` with its defaults).
        """
        split = split or self.split()
        rows = []
        for c in self.cases:
            for path in (c.image, c.label):
                if not path.is_file():
                    raise DatasetError(
                        f"Case {c.case_id!r}: file {path} is missing; restore it or remove the case from dataset.json."
                    )
            rows.append(
                {
                    "case_id": c.case_id,
                    "image": os.path.relpath(c.image, self.root),
                    "label": os.path.relpath(c.label, self.root),
                    "image_sha256": self._sha256(c.image),
                    "label_sha256": self._sha256(c.label),
                    "split": split.of(c.case_id),
                }
            )
        return pd.DataFrame(rows, columns=["case_id", "image", "label", "image_sha256", "label_sha256", "split"])

    def digest(self) -> str:
        """SHA-256 over ``dataset.json`` and every case's file contents (not paths or times).

        Stable for the same content; changes when any listed file or ``dataset.json`` changes.
        """
        h = hashlib.sha256()
        h.update(self._sha256(self.root / "dataset.json").encode())
        for c in sorted(self.cases, key=lambda c: c.case_id):
            for path in (c.image, c.label):
                if not path.is_file():
                    raise DatasetError(f"Case {c.case_id!r}: file {path} is missing; cannot compute the digest.")
            h.update(f"{c.case_id}:{self._sha256(c.image)}:{self._sha256(c.label)}\n".encode())
        return h.hexdigest()
