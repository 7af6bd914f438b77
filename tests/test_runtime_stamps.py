"""TickStamps: tick times snapped to the tick grid within 2 ms of the real time (Prometheus-style)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from llamamon.runtime.ticker import STAMP_TOLERANCE, TickStamps

T0 = 1_764_244_800.000731
jitters = st.lists(st.floats(0.0, 0.0019), min_size=2, max_size=200)


@given(jitter=jitters)
def test_wakeups_within_the_tolerance_are_stamped_on_an_exact_grid(jitter):
    stamps = TickStamps(1.0)
    first = T0 + jitter[0]
    out = [stamps(T0 + k + j) for k, j in enumerate(jitter)]
    assert out == [first + k for k in range(len(jitter))]


@given(
    jitter=st.lists(st.floats(0.0, 0.02), min_size=1, max_size=200),
    drift=st.floats(-5e-4, 5e-4),
    interval=st.sampled_from([0.1, 0.5, 1.0, 10.0]),
)
def test_every_stamp_is_within_the_tolerance_of_the_real_time_and_increasing(jitter, drift, interval):
    stamps = TickStamps(interval)
    real = [T0 + k * interval * (1 + drift) + j for k, j in enumerate(jitter)]
    out = [stamps(t) for t in real]
    assert all(abs(s - t) <= STAMP_TOLERANCE for s, t in zip(out, real, strict=True))
    assert all(b > a for a, b in itertools.pairwise(out))


def test_a_skipped_tick_keeps_the_grid_and_a_late_one_starts_a_new_one():
    stamps = TickStamps(1.0)
    assert stamps(T0) == T0
    assert stamps(T0 + 1.0012) == T0 + 1
    assert stamps(T0 + 3.0005) == T0 + 3  # tick 2 skipped (overran)
    assert stamps(T0 + 4.0300) == T0 + 4.03  # 30 ms late: the real time, and a new grid from it
    assert stamps(T0 + 5.0310) == T0 + 5.03
    assert stamps(T0 + 5.0320) == T0 + 5.032  # off-schedule (the last sample at exit): the real time


def test_no_rounding_error_piles_up_over_a_day_at_10_hz():
    stamps = TickStamps(0.1)
    micros = [round(stamps(T0 + k * 0.1 + 0.0004 * (k % 3)) * 1e6) for k in range(864_000)]
    steps = {b - a for a, b in itertools.pairwise(micros)}
    assert steps <= {99_999, 100_000, 100_001}
    assert abs(micros[-1] - micros[0] - 86_399_900_000) <= 1
