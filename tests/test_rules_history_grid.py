"""Grid: a regular grid plus times of their own places any time as binary searches over all its ticks do,
whether the extra ticks are few (searched apart), many, or make the ticks evenly spaced again."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llamamon.rules.history_input import FEW_EXTRA, Grid


def _check(g: Grid, ticks: np.ndarray, probes: np.ndarray) -> None:
    assert g.n == ticks.size
    assert g.times(np.arange(g.n)).tolist() == ticks.tolist()
    assert g.first_at_or_after(probes).tolist() == np.searchsorted(ticks, probes, side="left").tolist()
    assert g.through(probes).tolist() == np.searchsorted(ticks, probes, side="right").tolist()
    ks = np.arange(g.n)
    for duration in (0, 1, 7, 10, 25):
        want = np.searchsorted(ticks, ticks + duration, side="left")
        got = np.minimum(g.after(ks, duration), g.n)  # ("n or more where none")
        assert got.tolist() == want.tolist(), duration


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(-50, 50),
    step=st.integers(1, 10),
    n=st.integers(1, 30),
    extra=st.lists(st.integers(-80, 400), max_size=40),
    more=st.lists(st.integers(-80, 400), max_size=5),
)
@example(start=0, step=10, n=72, extra=[719], more=[])  # a run's end after the last regular tick
@example(start=0, step=10, n=10, extra=list(range(0, 100)), more=[])  # every second: evenly spaced again
@example(start=0, step=10, n=10, extra=list(range(1, 100, 2)), more=[3, 4])  # many extra ticks
def test_extra_ticks_place_times_as_searching_all_ticks(
    start: int, step: int, n: int, extra: list[int], more: list[int]
) -> None:
    base = Grid(start, step, n)
    regular = start + step * np.arange(n)
    probes = np.arange(-100, 450)
    g = base.with_times(np.array(extra, dtype=np.int64))
    ticks = np.union1d(regular, extra)
    _check(g, ticks, probes)
    if g.regular is not None:
        assert g.extra.size <= FEW_EXTRA
    gaps = np.diff(ticks)
    if gaps.size and (gaps == gaps[0]).all():
        assert g.ticks is None  # evenly spaced ticks: a regular grid again
    # and again on top (the grids of rules without ``for``: a run's end, then every sample)
    g2 = g.with_times(np.array(more, dtype=np.int64))
    _check(g2, np.union1d(ticks, more), probes)
