"""Random-init twins (`score --add-twins`): one per network, the oldest kept when scorers raced."""

from __future__ import annotations

import pytest

from mlflow_ccfv.options import parse_ints
from mlflow_ccfv.pipelines.pretrain import drop_duplicate_twins, register_control, register_twins
from mlflow_ccfv.tracking import load_version
from mlflow_ccfv.tracking import tags as T
from mlflow_ccfv.tracking.registry import bank_versions

pytest_plugins = ["mlflow_server"]
pytest.register_assert_rewrite("mlflow_server")
from mlflow_server import register_tiny_bank  # noqa: E402


def test_a_racing_scorers_copy_of_a_twin_is_passed_over(tracking_uri):
    (model,) = register_tiny_bank("dup", seeds=(1,))
    spec = load_version(model).spec
    patch = parse_ints(model.tags[T.PATCH_SIZE], T.PATCH_SIZE)
    # two scorers that raced: each registered the twin before seeing the other's
    first, copy = (register_control("UNet", 1, 3, patch, bank="dup", spec=spec, reuse=False) for _ in range(2))
    assert (first.name, int(copy.version)) == (copy.name, int(first.version) + 1)
    assert copy.tags[T.pretrain_tag("spec")] == T.spec_digest(spec.to_json())
    # a third scorer reuses the oldest, and a listing made before the copy is deleted skips the copy
    assert [(t.name, str(t.version)) for t in register_twins([model])] == [(first.name, str(first.version))]
    kept = drop_duplicate_twins(bank_versions("dup"))
    assert [(v.name, str(v.version)) for v in kept] == [(model.name, "1"), (first.name, str(first.version))]
    # a twin of another network (another spec) is not a duplicate
    other = register_control("UNet", 1, 2, patch, bank="dup", name=first.name, reuse=False)
    assert other.tags[T.pretrain_tag("spec")] != first.tags[T.pretrain_tag("spec")]
    assert len(drop_duplicate_twins(bank_versions("dup"))) == 3
