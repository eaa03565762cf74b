"""Properties of the estimators' input checks (mlflow_ccfv/estimators/arrays.py): they accept exactly
the arrays the estimators can use and reject everything else with ValueError or TypeError, never with
another exception."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlflow_ccfv.estimators.arrays import check_features, check_labels, check_probabilities

NUMBERS = st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.uint8, np.bool_])
ARRAYS = hnp.arrays(
    dtype=NUMBERS, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), elements=None
)
ODD = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.lists(st.integers(), max_size=3), max_size=3),  # possibly ragged
    st.lists(st.one_of(st.integers(), st.text(max_size=2)), max_size=4),
)


@given(st.one_of(ARRAYS, ODD), st.integers(1, 3))
def test_check_features_accepts_exactly_finite_nonempty_matrices(x, min_rows):
    try:
        out = check_features(x, "features", min_rows=min_rows)
    except (ValueError, TypeError) as exc:
        assert "features" in str(exc)
        a = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
        assert not (
            isinstance(x, np.ndarray)
            and a.ndim == 2
            and a.shape[0] >= min_rows
            and a.shape[1] >= 1
            and np.isfinite(a.astype(np.float64)).all()
        )
        return
    a = np.asarray(x, dtype=np.float64)
    assert out.dtype == np.float64 and out.ndim == 2 and out.shape[0] >= min_rows and out.shape[1] >= 1
    assert np.array_equal(out, a) and np.isfinite(out).all()


@given(st.one_of(ARRAYS, ODD), st.integers(0, 4))
def test_check_labels_accepts_exactly_nonnegative_integer_vectors(labels, n):
    try:
        out = check_labels(labels, n)
    except (ValueError, TypeError) as exc:
        assert "labels" in str(exc)
        if isinstance(labels, np.ndarray) and labels.ndim == 1 and len(labels) == n > 0:
            values = labels.astype(np.float64)
            assert not (np.isfinite(values).all() and (values == np.round(values)).all() and (values >= 0).all())
        return
    assert out.dtype == np.int64 and out.shape == (n,) and n > 0 and (out >= 0).all()
    assert np.array_equal(out, np.asarray(labels).astype(np.float64))


@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["simplex", "negative", "unnormalised", "nan", "rows"]),
)
def test_check_probabilities_accepts_rows_on_the_simplex_only(n, c, seed, kind):
    rng = np.random.default_rng(seed)
    p = rng.random((n, c)) + 1e-3
    p /= p.sum(axis=1, keepdims=True)
    rows = n
    if kind == "negative":
        p[0, 0] = -0.5
    elif kind == "unnormalised":
        p[0] *= 2
    elif kind == "nan":
        p[0, 0] = np.nan
    elif kind == "rows":
        rows = n + 1
    try:
        out = check_probabilities(p, rows)
    except ValueError as exc:
        assert kind != "simplex" and "probs" in str(exc)
        return
    assert kind == "simplex" and out.shape == (n, c) and np.allclose(out.sum(axis=1), 1, atol=1e-3)


@given(st.lists(st.floats(min_value=1e19, max_value=1e300), min_size=1, max_size=3))
def test_check_labels_refuses_ids_beyond_int64(values):
    labels = np.asarray(values)
    try:
        check_labels(labels, len(values))
    except ValueError as exc:
        assert "labels" in str(exc)
    else:
        raise AssertionError(f"accepted class ids {values} that int64 cannot hold")
