"""Properties of the one option parser (mlflow_ccfv/options.py) and the click types built on it:
every text either parses to a value within the stated bounds or raises OptionError naming the option;
nothing else ever escapes."""

from __future__ import annotations

import math

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlflow_ccfv.cli.types import BoolText, DeviceType, IntTuple, OptionalFloat, OptionalInt
from mlflow_ccfv.errors import OptionError
from mlflow_ccfv.options import (
    format_ints,
    parse_bool,
    parse_device,
    parse_float,
    parse_int,
    parse_ints,
    split_list,
)

TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789,x -+.eEnaif_", max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@given(st.lists(st.integers(min_value=-(10**30), max_value=10**30), max_size=8), st.sampled_from([",", "x", " ", ", "]))
def test_parse_ints_reads_back_what_format_ints_writes(values, sep):
    text = format_ints(values)
    assert parse_ints(text, "--roi-size") == tuple(values)
    assert parse_ints(sep.join(str(v) for v in values), "--roi-size") == tuple(values)


@given(TEXT, st.one_of(st.none(), st.integers(0, 4)), st.one_of(st.none(), st.integers(-5, 5)))
def test_parse_ints_returns_bounded_ints_or_names_the_option(text, length, minimum):
    try:
        values = parse_ints(text, "--layer-budgets", length=length, minimum=minimum, maximum=1000)
    except OptionError as exc:
        assert "--layer-budgets" in str(exc)
        return
    assert all(type(v) is int for v in values)
    assert length is None or len(values) == length
    assert all((minimum is None or v >= minimum) and v <= 1000 for v in values)


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_parse_int_reads_integers_as_written(n):
    assert parse_int(str(n), "--sampler-seed") == n
    assert parse_int(f"  {n} ", "--sampler-seed") == n


@given(TEXT, st.one_of(st.none(), st.integers(-10, 10)))
def test_parse_int_is_an_int_in_range_or_an_option_error(text, minimum):
    try:
        n = parse_int(text, "--global-samples", minimum=minimum, maximum=10**6)
    except OptionError as exc:
        assert "--global-samples" in str(exc)
        return
    assert type(n) is int and n <= 10**6 and (minimum is None or n >= minimum)


@given(st.one_of(TEXT, st.floats(allow_nan=True, allow_infinity=True)), st.booleans())
def test_parse_float_is_finite_in_range_or_an_option_error(value, max_open):
    try:
        x = parse_float(value, "--overlap", minimum=0, maximum=1, max_open=max_open)
    except OptionError as exc:
        assert "--overlap" in str(exc)
        return
    assert math.isfinite(x) and 0 <= x <= 1 and not (max_open and x == 1)


@given(TEXT)
def test_parse_bool_is_a_bool_or_an_option_error(text):
    try:
        value = parse_bool(text, "--force")
    except OptionError as exc:
        assert "--force" in str(exc)
        return
    assert value is (text.strip().lower() in {"1", "true", "yes", "on"})


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters=","), max_size=10), max_size=6))
def test_split_list_drops_blanks_and_strips(items):
    assert split_list(",".join(items)) == [i.strip() for i in items if i.strip()]


@given(TEXT)
def test_parse_device_is_cpu_cuda_or_an_option_error(text):
    try:
        device = parse_device(text)
    except OptionError as exc:
        assert "device" in str(exc)
        return
    assert device is None or device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


@pytest.mark.parametrize(
    "kind",
    [OptionalInt(1, 100), OptionalFloat(0, 1, max_open=True), IntTuple(length=3), BoolText(), DeviceType()],
    ids=["int", "float", "ints", "bool", "device"],
)
@given(text=TEXT)
def test_click_types_convert_or_fail_as_click_usage_errors(kind, text):
    option = click.Option(["--roi-size"], type=kind)
    try:
        kind.convert(text, option, None)
    except click.BadParameter as exc:
        assert "--roi-size" in exc.format_message() or str(exc)


def test_mlproject_blank_means_not_given():
    option = click.Option(["--overlap"])
    assert OptionalInt(1).convert("", option, None) is None
    assert OptionalFloat(0, 1).convert("  ", option, None) is None
    assert IntTuple(length=3).convert("", option, None) is None
    assert IntTuple(empty_as_tuple=True).convert("", option, None) == ()
    assert DeviceType().convert("", option, None) is None
    assert BoolText().convert("", option, None) is False
