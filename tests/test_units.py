from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamamon.errors import ConfigError
from llamamon.units import format_bytes, format_duration, parse_duration, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", (0.5, "seconds")),
        ("2GiB", (2 * 1024**3, "bytes")),
        ("80%", (0.8, "ratio")),
        ("1e-6", (1e-6, None)),
        ("1.5MHz", (1.5e6, "hertz")),
    ],
)
def test_parse_quantity(text, expected):
    value, dim = parse_quantity(text)
    assert value == pytest.approx(expected[0])
    assert dim == expected[1]


def test_parse_quantity_rejects_unknown_unit():
    with pytest.raises(ValueError, match="unknown unit 'parsecs'"):
        parse_quantity("3parsecs")


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), ("30s", 30.0), ("2m", 120.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1.5", 1.5)]
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "-1s", True, None, [1]])
def test_parse_duration_errors(value):
    with pytest.raises(ConfigError):
        parse_duration(value)


def test_formatting():
    assert format_duration(125) == "2m05s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(3 * 3600 + 60) == "3h01m"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(10) == "10 B"


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_round_trip(number, unit):
    factor = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    text = f"{number:.6f}{unit}"
    assert parse_duration(text) == pytest.approx(float(f"{number:.6f}") * factor, rel=1e-9, abs=1e-12)
