"""data.partition on the real MSD hippocampus cases, and the benchmark's imported bundle (pipelines.benchmark)."""

from __future__ import annotations

import json

import pytest
import torch

from mlflow_ccfv.data import MSDDataset
from mlflow_ccfv.data.partition import partition_task
from mlflow_ccfv.errors import DatasetError
from mlflow_ccfv.networks import NetworkSpec
from mlflow_ccfv.networks.bundle import read_bundle


def test_parts_are_disjoint_deterministic_and_verified(real_data, tmp_path):
    source = real_data / "msd-hippocampus"
    parts = [("Task41_A", 6), ("Task42_B", 10)]
    a, b = partition_task(source, tmp_path, parts, seed=0)
    da, db = MSDDataset.load(a), MSDDataset.load(b)
    assert (len(da), len(db)) == (6, 10) and not set(da.case_ids) & set(db.case_ids)
    assert set(da.case_ids) | set(db.case_ids) <= set(MSDDataset.load(source).case_ids)
    da.verify()
    db.verify()
    assert da.labels == MSDDataset.load(source).labels
    # the same call again keeps the folders; another seed draws other cases into a fresh folder
    assert partition_task(source, tmp_path, parts, seed=0) == [a, b]
    other = partition_task(source, tmp_path / "s1", parts, seed=1)
    assert set(MSDDataset.load(other[1]).case_ids) != set(db.case_ids)
    with pytest.raises(DatasetError, match="other cases"):
        partition_task(source, tmp_path, parts, seed=1)  # would mix two partitions in one folder
    with pytest.raises(DatasetError, match="at most 260"):
        partition_task(source, tmp_path / "big", [("X", 200), ("Y", 100)])


def test_a_trained_network_written_as_a_bundle_reads_back_as_the_same_network(tmp_path):
    from mlflow_ccfv.pipelines.benchmark import BUNDLE_SPEC, write_bundle

    spec = NetworkSpec(BUNDLE_SPEC.architecture, {**BUNDLE_SPEC.kwargs, "channels": [4, 8, 16, 32]})
    module = spec.build().eval()
    folder = write_bundle(module, spec, tmp_path / "bundle", (32, 32, 32))
    imported = read_bundle(folder)
    assert imported.spec.to_json() == spec.to_json()
    assert imported.info["patch_size"] == (32, 32, 32)
    assert json.loads((folder / "configs" / "metadata.json").read_text())["name"] == "bundle"
    probe = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    rebuilt = imported.spec.build().eval()
    rebuilt.load_state_dict(imported.state_dict)
    with torch.no_grad():
        assert torch.allclose(rebuilt(probe), module(probe))
