"""Quantiles over fixed-size windows read off with one rolling pass where the rank is whole: the same floats
as the three passes (lower, higher, count) they replace, and the windows PromQL's quantile_over_time sees."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llamamon.rules import history_windows, lang
from llamamon.rules.history_compiler import Compiler
from llamamon.rules.history_input import Grid, prepare
from llamamon.rules.promql import LOOKBACK, US, group_quantiles, window_quantile
from llamamon.rules.tree import Call

# Whole (size - 1) * q for some sizes and not others: 0.5 at odd sizes, 0.25 at 1, 5, 9 ..., 0.1 where
# the product rounds up (0.1 * 3 is 0.30000000000000004), 1/3 never quite.
QS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1 / 3, 1.0]
VALUES = [0.0, -0.0, 1.0, -1.0, 2.5, 2.5, 1e-300, -7.0, 1e16, 0.1]
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def frame(rows: list[tuple[int, str, float, dict]]) -> pl.DataFrame:
    """Store columns of (seconds after T0, metric, value, labels) rows, of no run."""
    from llamamon.samples import labels_to_str, make_labels

    return pl.DataFrame(
        {
            "time": [T0 * US + t * US for t, _, _, _ in rows],
            "metric": [m for _, m, _, _ in rows],
            "value": [v for _, _, v, _ in rows],
            "labels": [labels_to_str(make_labels(lab)) for _, _, _, lab in rows],
        },
        schema={"time": pl.Datetime("us", "UTC"), "metric": pl.String, "value": pl.Float64, "labels": pl.String},
    )


def _three_passes(df: pl.DataFrame, at: np.ndarray, size: int, q: float) -> list[float]:
    node = Call("quantile", (), 0, q=q)
    kw = {"window_size": size, "min_samples": 1}
    return df.select(history_windows._window_expr(node, "", **kw).over("sid")).to_series().gather(at).to_list()


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    picks=st.lists(st.sampled_from(VALUES), min_size=150, max_size=150),
    size=st.integers(1, 12),
    q=st.sampled_from(QS),
    every=st.integers(1, 4),
)
@example(lengths=[20, 3], picks=VALUES * 15, size=5, q=0.5, every=1)  # whole rank when full
@example(lengths=[20, 3], picks=VALUES * 15, size=4, q=0.5, every=1)  # never whole when full
@example(lengths=[20, 30], picks=VALUES * 15, size=9, q=0.25, every=3)
@example(lengths=[25], picks=VALUES * 15, size=4, q=0.1, every=1)  # 0.30000000000000004: rounds up
def test_one_pass_where_the_rank_is_whole_gives_the_three_passes_floats(
    lengths: list[int], picks: list[float], size: int, q: float, every: int
) -> None:
    sid = np.repeat(np.arange(len(lengths), dtype=np.uint32), lengths)
    df = pl.DataFrame({"sid": sid, "value": picks[: sid.size]}, schema={"sid": pl.UInt32, "value": pl.Float64})
    at = np.arange(0, sid.size, every)  # read-off rows: full windows and partial ones (a series' first)
    got = history_windows._fixed_quantile(df, at, size, q).tolist()
    # repr: -0.0 apart from 0.0, as the alert's value and peak would show it
    assert [repr(v) for v in got] == [repr(v) for v in _three_passes(df, at, size, q)]


def test_a_fixed_window_quantile_rolls_higher_only_where_some_rank_is_not_whole(monkeypatch) -> None:
    """q = 0.25 over 1801 samples: every full window's rank (450) is whole, so "higher" is rolled over
    each series' first 1800 rows only (the partial windows); over 1800 (449.75) it is rolled over every row."""
    passes: list[tuple[str, int]] = []
    real = history_windows._rolled_quantile

    def spy(df: pl.DataFrame, q: float, size: int, interpolation: str) -> pl.Series:
        passes.append((interpolation, df.height))
        return real(df, q, size, interpolation)

    n = 2500
    df = pl.DataFrame({"sid": np.repeat(np.array([0, 1], dtype=np.uint32), n), "value": np.sin(np.arange(2 * n))})
    at = np.arange(0, 2 * n, 7)
    for size, want in ((1801, [("lower", 2 * n), ("higher", 2 * 1800)]), (1800, [("lower", 2 * n), ("higher", 2 * n)])):
        passes.clear()
        with monkeypatch.context() as mp:
            mp.setattr(history_windows, "_rolled_quantile", spy)
            got = history_windows._fixed_quantile(df, at, size, 0.25).tolist()
        assert passes == want, size
        assert [repr(v) for v in got] == [repr(v) for v in _three_passes(df, at, size, 0.25)]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.sampled_from([*VALUES, math.inf, -math.inf]), min_size=1, max_size=40),
    cuts=st.lists(st.tuples(st.integers(0, 39), st.integers(1, 40)), min_size=1, max_size=6),
    q=st.sampled_from(QS),
    nan=st.booleans(),
)
def test_ticks_answered_one_by_one_are_window_quantiles_floats(
    values: list[float], cuts: list[tuple[int, int]], q: float, nan: bool
) -> None:
    # numpy's sort where no NaN is in the span, Python's otherwise: the live evaluator's floats either way.
    if nan:
        values = [*values[:-1], math.nan]
    v = np.array(values)
    lo = np.array([min(start, len(values) - 1) for start, _ in cuts])
    hi = np.minimum(lo + np.array([length for _, length in cuts]), len(values))  # windows v[lo:hi], none empty
    got = history_windows._per_tick(Call("quantile", (), 0, q=q), v, hi, lo)
    want = [window_quantile(values[i:j], q) for i, j in zip(lo.tolist(), hi.tolist(), strict=True)]
    assert [repr(x) for x in got] == [repr(x) for x in want]


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(
        st.lists(st.sampled_from([*VALUES, math.inf, -math.inf, math.nan]), min_size=1, max_size=9),
        min_size=1,
        max_size=8,
    ),
    q=st.sampled_from(QS),
)
@example(groups=[[0.0, -0.0, 1.0], [-0.0, 0.0, 0.0, 2.5], [math.nan, 1.0, math.nan]], q=0.5)
def test_an_aggregations_quantiles_at_once_are_window_quantiles_floats(groups: list[list[float]], q: float) -> None:
    # (the straggler rule's median rank of each node at each tick: many small groups)
    flat = np.array([v for vs in groups for v in vs])
    got = group_quantiles(flat, np.array([len(vs) for vs in groups]), q).tolist()
    assert [repr(v) for v in got] == [repr(window_quantile(vs, q)) for vs in groups]


def _reference(samples: list[float], q: float) -> float:
    """quantile_over_time the obvious way: NaN first, then sorted, linear between the two around the rank."""
    ordered = [v for v in samples if v != v] + sorted(v for v in samples if v == v)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    return ordered[lo] * (1 - (pos - lo)) + ordered[min(lo + 1, len(ordered) - 1)] * (pos - lo)


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    picks=st.lists(st.sampled_from([*VALUES, math.nan]), min_size=160, max_size=160),
    width=st.integers(1, 12),
    step=st.sampled_from([1, 2, 3]),
    q=st.sampled_from(QS),
)
def test_regular_series_quantiles_match_the_reference(
    lengths: list[int], picks: list[float], width: int, step: int, q: float
) -> None:
    # Series at 1 s (windows of width + 1 samples once full, partial before), some holding a NaN.
    rows, at = [], 0
    for n, length in enumerate(lengths):
        values = picks[at : at + length]
        at += length
        rows += [(t, "batch_queue_size", v, {"gpu": str(n)}) for t, v in enumerate(values)]
    g = Grid(T0 * US, step * US, (max(lengths) + width + 2) // step + 1)
    comp = Compiler(prepare(frame(rows), ["batch_queue_size"]), g, LOOKBACK)
    vec = comp.eval(lang.parse(f"quantile({q!r}, batch_queue_size, {width}s)").tree)
    got = {(vec.labels[sid]["gpu"], k): v for k, sid, v, _ok in vec.df.iter_rows()}
    want = {}
    for n in range(len(lengths)):
        mine = [(t, v) for t, _, v, lab in rows if lab["gpu"] == str(n)]
        for k in range(g.n):
            tick = k * step
            inside = [v for t, v in mine if tick - width <= t <= tick]
            if inside:
                want[str(n), k] = _reference(inside, q)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
