"""Target datasets as MLflow datasets: the manifest of a :class:`~mlflow_ccfv.data.target.Target`.

The MLflow dataset of a target is its pandas manifest (one row per case: ``case_id, image, label,
image_sha256, label_sha256, split``), ``source`` the task folder (``file:///.../Task07_...``),
``name`` the task's short name (``Task07``) and ``digest`` the target's content digest. Metrics linked
to it show in the Models tab under ``<name> (#<digest>)``.

A target can also travel as MLflow artifacts (:func:`log_dataset_artifacts`, the ``log-dataset``
command): the MSD folder (``dataset.json``, ``imagesTr``, ``labelsTr``) becomes the artifact folder
``<task folder name>`` of a *dataset run* in the experiment ``ccfv-datasets``, with a file list
``ccfv-files.json`` (path -> SHA-256 and size) beside it. The run is addressed by the folder's
content digest (run tag ``ccfv.dataset.digest``, set only once the upload is complete): logging the
same data twice finds the first run and uploads nothing. Anyone with access to the tracking server
then names the target ``runs:/<run_id>/<folder>`` (or the folder's artifact URI);
:func:`resolve_dataset_reference` downloads it once into ``<cache>/datasets/<digest>/``, checks every
file's checksum and the digest, and returns the local folder; every later use checks the cached files'
SHA-256 again before reusing them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.exceptions import MlflowException

import mlflow_ccfv.tracking.tags as T
from mlflow_ccfv.data.msd import MSDDataset
from mlflow_ccfv.data.nifti import sha256_file
from mlflow_ccfv.data.target import Target, make_target, short_name
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.options import DATASET_EXPERIMENT, cache_root

__all__ = [
    "DATASET_EXPERIMENT",
    "FILE_LIST",
    "DatasetArtifact",
    "RunArtifactSource",
    "find_dataset_run",
    "is_dataset_reference",
    "load_msd_dataset",
    "log_dataset_artifacts",
    "log_target_dataset",
    "mlflow_dataset",
    "resolve_dataset_reference",
    "target_dataset",
]

_logger = logging.getLogger(__name__)

#: Beside the uploaded folder: ``{"files": {relative path: {"sha256": ..., "size": ...}}, "digest": ...}``.
FILE_LIST = "ccfv-files.json"
_RUNS_URI = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>[^/].*?)/?$")
_RUN_IN_URI = re.compile(r"/(?P<run>[0-9a-f]{32})/artifacts/(?P<path>[^/].*?)/?$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def mlflow_dataset(target: Target, name: str | None = None, digest: str | None = None) -> PandasDataset:
    """The target's manifest as an MLflow ``PandasDataset`` (name ``target.name``, digest ``target.digest``
    unless given)."""
    with warnings.catch_warnings():  # a file:// source "can be interpreted in multiple ways"
        warnings.simplefilter("ignore", UserWarning)
        return from_pandas(
            target.manifest,
            source=target.dataset.root.as_uri(),
            name=name or target.name,
            digest=digest or target.digest,
        )


def log_target_dataset(dataset: MSDDataset, split: str = "train", context: str = "target") -> PandasDataset:
    """Log the target's manifest as an input of the active run (``mlflow.log_input``); returns the MLflow dataset."""
    ds = mlflow_dataset(make_target(dataset, split))
    mlflow.log_input(ds, context=context)
    return ds


def target_dataset(
    dataset: str | Path | MSDDataset, split: str = "train", data_root: str | Path | None = None
) -> PandasDataset:
    """The MLflow dataset (manifest) of a target, ready for ``mlflow.models.evaluate(data=...)``."""
    if not isinstance(dataset, MSDDataset):
        dataset = MSDDataset.load(dataset, data_root=data_root)
    return mlflow_dataset(make_target(dataset, split))


class RunArtifactSource(DatasetSource):
    """An MLflow dataset source that is an artifact folder of a run (``runs:/<run_id>/<path>``).

    MLflow resolves no source for ``runs:/`` or ``mlflow-artifacts:/`` URIs, so the dataset logged by
    :func:`log_dataset_artifacts` carries this one: source type ``mlflow_run_artifact``, JSON ``{"uri": ...}``.
    """

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "mlflow_run_artifact"

    def load(self, dst_path: str | None = None) -> str:
        """Download the folder (``mlflow.artifacts.download_artifacts``); returns the local path."""
        return mlflow.artifacts.download_artifacts(artifact_uri=self.uri, dst_path=dst_path)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and bool(_RUNS_URI.match(raw_source))

    @classmethod
    def _resolve(cls, raw_source: Any) -> RunArtifactSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[Any, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> RunArtifactSource:
        return cls(str(source_dict["uri"]))


@dataclass(frozen=True)
class DatasetArtifact:
    """A dataset uploaded by :func:`log_dataset_artifacts`: ``uri`` = ``runs:/<run_id>/<folder>``;
    ``reused``: the same content was already logged (nothing uploaded)."""

    run_id: str
    folder: str
    digest: str
    name: str
    reused: bool

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}/{self.folder}"


def _file_list(dataset: MSDDataset) -> dict[str, dict[str, Any]]:
    """``dataset.json`` and every case's image and label: relative path -> SHA-256 and size in bytes."""
    paths = [dataset.root / "dataset.json"] + [p for c in dataset.cases for p in (c.image, c.label)]
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path} is listed in {dataset.root / 'dataset.json'} but missing; restore it.")
        rel = os.path.relpath(path, dataset.root)
        if rel.startswith(".."):
            raise DatasetError(
                f"{path} lies outside the task folder {dataset.root}; only files inside it can be uploaded."
            )
        out[Path(rel).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return out


def _dataset_experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by a concurrent uploader
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_dataset_run(digest: str, experiment: str = DATASET_EXPERIMENT):
    """The oldest finished dataset run whose content digest is ``digest`` (a ``Run``), or None."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{T.RUN_DATASET_DIGEST}` = '{digest}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def log_dataset_artifacts(dataset: MSDDataset, experiment: str = DATASET_EXPERIMENT) -> DatasetArtifact:
    """Upload ``dataset``'s MSD folder (``dataset.json`` and the listed images and labels) as artifacts of a
    dataset run, content-addressed: if a finished run with the same digest exists, it is returned and
    nothing is uploaded. The run's input is the folder's manifest as an MLflow dataset whose source is
    the uploaded folder (``runs:/<run_id>/<folder>``). A failed upload leaves a FAILED run without the
    digest tag, which lookups ignore.
    """
    digest = dataset.digest()
    folder = dataset.root.name
    existing = find_dataset_run(digest, experiment)
    if existing is not None:
        art = existing.data.tags.get(T.RUN_DATASET_ARTIFACT, folder)
        _logger.info("%s (digest %s) is already logged: runs:/%s/%s", folder, digest[:12], existing.info.run_id, art)
        return DatasetArtifact(existing.info.run_id, art, digest, short_name(dataset), reused=True)
    files = _file_list(dataset)
    client = MlflowClient()
    name = short_name(dataset)
    run = client.create_run(
        _dataset_experiment_id(client, experiment),
        run_name=f"dataset {folder}",
        tags={T.RUN_STAGE: "dataset", T.RUN_DATASET: name, T.RUN_DATASET_ARTIFACT: folder},
    )
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            staging = Path(tmp) / folder
            for rel in files:  # only the listed files, in the task's own layout
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(dataset.root / rel, dst)
                except OSError:
                    shutil.copy2(dataset.root / rel, dst)
            _logger.info(
                "uploading %s: %d files (%.1f MB)", folder, len(files), sum(f["size"] for f in files.values()) / 1e6
            )
            client.log_artifacts(run_id, str(staging), artifact_path=folder)
            listing = Path(tmp) / FILE_LIST
            listing.write_text(json.dumps({"digest": digest, "folder": folder, "files": files}, indent=1))
            client.log_artifact(run_id, str(listing))
        uri = f"runs:/{run_id}/{folder}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = from_pandas(dataset.manifest(), source=RunArtifactSource(uri), name=name, digest=digest[:20])
        from mlflow.entities import DatasetInput, InputTag

        client.log_inputs(
            run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "dataset")])]
        )
        client.log_param(run_id, "dataset_digest", digest)
        client.log_param(run_id, "n_cases", len(dataset.cases))
        client.set_tag(run_id, T.RUN_DATASET_DIGEST, digest)  # last: marks the upload complete
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    _logger.info("logged %s as runs:/%s/%s (digest %s)", folder, run_id, folder, digest[:12])
    return DatasetArtifact(run_id, folder, digest, name, reused=False)


def is_dataset_reference(text: Any) -> bool:
    """True for ``runs:/...`` and other artifact URIs (``mlflow-artifacts:/``, ``s3://`` ...); False for
    task names and local paths."""
    return isinstance(text, str) and bool(_URI_SCHEME.match(text)) and not text.startswith("file:")


def _parse_reference(ref: str) -> tuple[str, str]:
    match = _RUNS_URI.match(ref) or _RUN_IN_URI.search(ref)
    if not match:
        raise DatasetError(
            f"Dataset reference {ref!r} names no run; use runs:/<run_id>/<folder> as printed by "
            "`mlflow-ccfv log-dataset`, or the folder's artifact URI (.../<run_id>/artifacts/<folder>)."
        )
    return match["run"], match["path"]


def _bad_files(root: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """The listed files under ``root`` that are missing or whose size or SHA-256 differs from ``files``."""
    bad = []
    for rel, info in files.items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            bad.append(f"{rel} (outside the folder)")
        elif not path.is_file():
            bad.append(f"{rel} (missing)")
        elif path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
            bad.append(f"{rel} (checksum differs)")
    return bad


def _check_files(root: Path, files: dict[str, dict[str, Any]], ref: str) -> None:
    bad = _bad_files(root, files)
    if bad:
        raise DatasetError(
            f"Dataset {ref} downloaded with {len(bad)} bad file(s): {', '.join(bad[:10])}; "
            "the upload is damaged: log the dataset again with `mlflow-ccfv log-dataset`."
        )


def _run_file_list(client: MlflowClient, run_id: str, ref: str) -> dict[str, dict[str, Any]]:
    """The ``files`` of the run's own ``ccfv-files.json`` (path -> SHA-256 and size), fetched from the server."""
    with tempfile.TemporaryDirectory() as tmp:
        client.download_artifacts(run_id, FILE_LIST, tmp)
        try:
            files = json.loads((Path(tmp) / FILE_LIST).read_text())["files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"Dataset {ref}: the run's {FILE_LIST} is unreadable ({exc}); log the dataset again."
            ) from exc
    if not isinstance(files, dict) or not all(
        isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("size"), int)
        for f in files.values()
    ):
        raise DatasetError(f"Dataset {ref}: the run's {FILE_LIST} is malformed; log the dataset again.")
    return files


def _verified_cache(client: MlflowClient, run_id: str, final: Path, folder: str, ref: str) -> bool:
    """True if the cached ``final/folder`` holds every file of the run's listing with its size and SHA-256.
    A damaged copy (a file changed, missing or replaced) is moved aside and deleted, and False returned
    so the caller downloads it again."""
    bad = _bad_files(final / folder, _run_file_list(client, run_id, ref))
    if not bad:
        return True
    _logger.warning(
        "dataset %s: the cached copy %s differs from the upload (%s); downloading it again",
        ref,
        final / folder,
        ", ".join(bad[:10]),
    )
    aside = final.with_name(f".{final.name}.damaged-{uuid.uuid4().hex[:8]}")
    try:
        final.rename(aside)
    except OSError:  # another process moved it first
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return False


def resolve_dataset_reference(ref: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local task folder of a logged dataset ``ref`` (``runs:/<run_id>/<folder>`` or its artifact URI).

    Downloaded once into ``<cache_dir>/datasets/<digest>/<folder>`` (``cache_dir`` default
    ``$MLFLOW_CCFV_CACHE`` or ``.ccfv-cache``): into a private staging folder first, every file's SHA-256
    and size checked against ``ccfv-files.json`` and the folder's digest against the run's tag, then
    renamed into place (concurrent workers: the first rename wins, the others discard theirs). A cached
    folder is reused after checking every file against the run's own ``ccfv-files.json`` (size and
    SHA-256); a damaged copy (a file changed, replaced or missing) is deleted and downloaded again, and
    a download that still differs is a one-line :class:`DatasetError` naming the files.
    """
    run_id, folder = _parse_reference(ref)
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise DatasetError(f"Dataset reference {ref}: no run {run_id} on {mlflow.get_tracking_uri()} ({exc}).") from exc
    digest = run.data.tags.get(T.RUN_DATASET_DIGEST)
    if not digest or run.data.tags.get(T.RUN_DATASET_ARTIFACT) != folder:
        raise DatasetError(
            f"Dataset reference {ref}: run {run_id} holds no complete dataset upload named {folder!r} "
            f"(tags {T.RUN_DATASET_DIGEST}/{T.RUN_DATASET_ARTIFACT}); log it with `mlflow-ccfv log-dataset`."
        )
    base = cache_root(cache_dir) / "datasets"
    final = base / digest
    listing_path = final / FILE_LIST
    if listing_path.is_file() and _verified_cache(MlflowClient(), run_id, final, folder, ref):
        _logger.info("dataset %s: cached at %s (every file's SHA-256 checked)", ref, final / folder)
        return final / folder
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".{digest}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        client = MlflowClient()
        client.download_artifacts(run_id, FILE_LIST, str(staging))
        files = json.loads((staging / FILE_LIST).read_text())["files"]
        _logger.info("dataset %s: downloading %d files into %s", ref, len(files), final)
        client.download_artifacts(run_id, folder, str(staging))
        _check_files(staging / folder, files, ref)
        got = MSDDataset.load(staging / folder).digest()
        if got != digest:
            raise DatasetError(
                f"Dataset {ref}: the downloaded folder's digest {got[:12]} differs from the run's {digest[:12]}; "
                "log the dataset again."
            )
        try:
            staging.rename(final)
        except OSError:
            if not (final / FILE_LIST).is_file():
                raise
            _logger.info("dataset %s: another process cached it first", ref)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final / folder


def load_msd_dataset(
    dataset: str | Path | MSDDataset, data_root: str | Path | None = None, cache_dir: str | os.PathLike | None = None
) -> MSDDataset:
    """``dataset`` as is, a logged dataset reference (:func:`resolve_dataset_reference`), or the task folder
    it names under ``data_root`` (:meth:`MSDDataset.load`)."""
    if isinstance(dataset, MSDDataset):
        return dataset
    if is_dataset_reference(str(dataset)):
        return MSDDataset.load(resolve_dataset_reference(str(dataset), cache_dir))
    return MSDDataset.load(dataset, data_root=data_root)
