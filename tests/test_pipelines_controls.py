"""Random-init twins (`score --add-twins`): one per network, the oldest kept when scorers raced."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from mlflow_ccfv.cli import main
from mlflow_ccfv.networks import NetworkSpec, random_state_dict, small_spec
from mlflow_ccfv.options import parse_ints
from mlflow_ccfv.pipelines.controls import (
    drop_duplicate_twins,
    register_random_init,
    register_twins,
)
from mlflow_ccfv.tracking import load_version
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.register import register_network
from mlflow_ccfv.tracking.search import bank_versions

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import TARGET_TASK, make_target_folder, register_tiny_bank  # noqa: E402


def test_a_racing_scorers_copy_of_a_twin_is_passed_over(tracking_uri):
    (model,) = register_tiny_bank("dup", seeds=(1,))
    spec = load_version(model).spec
    patch = parse_ints(model.tags[T.PATCH_SIZE], T.PATCH_SIZE)
    # two scorers that raced: each registered the twin before seeing the other's
    first, copy = (register_random_init(spec, patch, bank="dup", reuse=False) for _ in range(2))
    assert (first.name, int(copy.version)) == (copy.name, int(first.version) + 1)
    assert copy.tags[T.pretrain_tag("spec")] == T.spec_digest(spec.to_json())
    # a third scorer reuses the oldest, and a listing made before the copy is deleted skips the copy
    assert [(t.name, str(t.version)) for t in register_twins([model])] == [(first.name, str(first.version))]
    kept = drop_duplicate_twins(bank_versions("dup"))
    assert [(v.name, str(v.version)) for v in kept] == [(model.name, "1"), (first.name, str(first.version))]
    # a twin of another network (another configuration of the class) is not a duplicate
    other_spec = NetworkSpec("UNet", {**spec.kwargs, "num_res_units": 0})
    other = register_random_init(other_spec, patch, bank="dup", name=first.name, reuse=False)
    assert other.tags[T.NETWORK] != first.tags[T.NETWORK]
    assert len(drop_duplicate_twins(bank_versions("dup"))) == 3
    # nor is a control that differs from the first only by its output channels a new network
    same = register_random_init(small_spec("UNet", 1, 2, patch), patch, bank="dup", name=first.name, reuse=False)
    assert same.tags[T.NETWORK] == first.tags[T.NETWORK]


def test_two_configurations_of_one_class_get_two_twins_each_calibrating_its_own(tracking_uri, tmp_path):
    """A bank of two UNet specs (residual units or not, another patch): one twin per network identity,
    each built from its network; every version's stored ccfv_twin is its ccfv minus its own twin's."""
    data = tmp_path / "data"
    make_target_folder(data)
    (shipped,) = register_tiny_bank("two", seeds=(1,))
    plain = NetworkSpec("UNet", {**small_spec("UNet", 1, 3).kwargs, "num_res_units": 0})
    imported = register_network(
        plain, random_state_dict(plain, 3), "unet-plain", "kidney", bank="two", patch_size=(32, 32, 16)
    )
    twins = register_twins([shipped, imported])
    assert len(twins) == 2
    by_network = {t.tags[T.NETWORK]: t for t in twins}
    assert set(by_network) == {shipped.tags[T.NETWORK], imported.tags[T.NETWORK]}
    assert load_version(by_network[imported.tags[T.NETWORK]]).spec.to_json() == plain.to_json()
    assert by_network[imported.tags[T.NETWORK]].tags[T.PATCH_SIZE] == "32,32,16"
    args = ["score", "--dataset", TARGET_TASK, "--data-root", str(data), "--bank", "two", "--methods", "ccfv"]
    result = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "cache"), "--rank-by", "ccfv_twin"])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    tags = {
        f"{v.name}/{v.version}": client.get_model_version(v.name, v.version).tags
        for v in mlflow.search_model_versions()
    }
    assert len(tags) == 4  # no third twin: score reused the two
    ccfv = {n: float(t[T.score_tag("ccfv", TARGET_TASK)]) for n, t in tags.items()}
    own_twin = {
        n: next(m for m, t2 in tags.items() if t2["source_dataset"] == "random-init" and t2[T.NETWORK] == t[T.NETWORK])
        for n, t in tags.items()
    }
    for name in (f"{shipped.name}/1", f"{imported.name}/1"):
        stored = float(tags[name][T.score_tag("ccfv_twin", TARGET_TASK)])
        assert stored == pytest.approx(ccfv[name] - ccfv[own_twin[name]], abs=1e-5)
        assert own_twin[name] != own_twin[f"{shipped.name}/1" if name != f"{shipped.name}/1" else f"{imported.name}/1"]
    ranks = {n: t.get(T.rank_tag(TARGET_TASK)) for n, t in tags.items()}
    assert sorted(r for r in ranks.values() if r) == ["1", "2"]  # the candidates; the twins are not ranked
    assert all(ranks[n] is None for n, t in tags.items() if t["source_dataset"] == "random-init")
