"""The one catalogue of methods (estimators.catalogue): every list of methods is derived from it."""

from __future__ import annotations

from mlflow_ccfv.estimators import METHODS
from mlflow_ccfv.estimators.catalogue import CATALOGUE, method_labels, method_names
from mlflow_ccfv.study.sanity import CANDIDATES
from mlflow_ccfv.study.variants import VARIANTS


def test_names_are_unique_and_every_list_comes_from_the_catalogue():
    names = [m.name for m in CATALOGUE]
    assert len(names) == len(set(names))
    assert set(METHODS) | set(VARIANTS) == set(names)  # estimators + report-level variants, nothing else
    assert set(method_names(kinds=("variant",))) == set(VARIANTS)
    assert set(CANDIDATES) <= set(names)  # the pre-registered candidates are all known methods
    assert set(method_labels()) == set(names)
    assert method_names(table="table1")[0] == method_names(table="table2")[0] == "ccfv"
