"""Catalog resolutions and quantize(): what the built-in collectors store, on power-of-two grids."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamamon import catalog
from llamamon.catalog import quantize

COLLECTED = [m for m in catalog.METRICS if m.group in ("system", "process", "gpu")]
RESOLUTIONS = sorted({m.resolution for m in COLLECTED})
finite = st.floats(min_value=-1e12, max_value=1e15, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("metric", COLLECTED, ids=lambda m: m.name)
def test_every_collected_metric_has_a_power_of_two_resolution(metric):
    assert metric.resolution is not None
    mantissa, _ = math.frexp(metric.resolution)
    assert mantissa == 0.5, f"{metric.name}: {metric.resolution} is not a power of two"


@pytest.mark.parametrize("metric", [m for m in catalog.METRICS if m not in COLLECTED], ids=lambda m: m.name)
def test_job_and_server_metrics_are_never_rounded(metric):
    assert metric.resolution is None
    assert quantize(0.123456789, catalog.resolution_of(metric.name)) == 0.123456789


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@given(value=finite)
def test_quantize_is_idempotent_on_the_grid_and_within_half_a_step(resolution, value):
    q = quantize(value, resolution)
    assert quantize(q, resolution) == q
    assert abs(q - value) <= resolution / 2
    assert (q / resolution).is_integer()


@pytest.mark.parametrize("resolution", [*RESOLUTIONS, None])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_pass_through(resolution, value):
    out = quantize(value, resolution)
    assert out == value or (math.isnan(out) and math.isnan(value))


# What each source can tell apart must stay apart, and read back with the source's own decimals.
@given(percent=st.integers(0, 100))
def test_nvml_whole_percent_is_recovered_exactly(percent):
    stored = quantize(percent / 100, catalog.resolution_of("gpu_utilization"))
    assert round(stored * 100) == percent
    assert f"{stored:.0%}" == f"{percent}%"


@given(milliwatts=st.integers(0, 2_000_000))
def test_nvml_milliwatts_are_recovered_exactly(milliwatts):
    stored = quantize(milliwatts / 1000, catalog.resolution_of("gpu_power"))
    assert round(stored * 1000) == milliwatts


@given(permille=st.integers(0, 1000))
def test_psutil_tenth_of_a_percent_is_recovered_exactly(permille):
    stored = quantize(permille / 1000, catalog.resolution_of("cpu_usage"))
    assert round(stored * 1000) == permille
    assert f"{stored * 100:.1f}" == f"{permille / 10:.1f}"


@given(hundredths=st.integers(0, 100_000))
def test_loadavg_two_decimals_are_recovered_exactly(hundredths):
    stored = quantize(hundredths / 100, catalog.resolution_of("load1"))
    assert round(stored * 100) == hundredths


@given(count=st.integers(0, 2**53))
def test_byte_counts_are_kept_exactly(count):
    assert quantize(float(count), catalog.resolution_of("memory_used")) == float(count)


def test_grid_values_have_zero_low_mantissa_bytes():
    # The reason for binary grids: byte-stream-split + zstd stores these zero bytes for almost nothing.
    import struct

    for value, zero_bytes in ((0.8701171875, 4), (399.48828125, 3), (2213140.0, 4)):
        raw = struct.pack("<d", value)
        assert raw[:zero_bytes] == bytes(zero_bytes), value
    assert struct.pack("<d", 0.87)[:4] != bytes(4)  # a decimal keeps a full mantissa
