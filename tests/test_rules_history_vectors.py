"""``or`` with a side of no series gives back the other side's rows, as the merge of both sides does."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon.rules import history_vectors
from llamamon.rules.history_vectors import Vec, empty_vec, set_op

ROWS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 20), st.sampled_from([0.0, -0.0, 1.5, float("nan")]), st.booleans()),
    max_size=40,
)


def _vec(rows: list[tuple[int, int, float, bool | None]], n_series: int) -> Vec:
    df = pl.DataFrame(
        [(k, sid, v, ok) for sid, k, v, ok in rows],
        schema={"k": pl.Int64, "sid": pl.UInt32, "value": pl.Float64, "ok": pl.Boolean},
        orient="row",
    )
    return Vec(df, [{"gpu": str(i)} for i in range(n_series)])


def _rows(vec: Vec) -> list[tuple]:
    return sorted((sid, k, repr(v), ok) for k, sid, v, ok in vec.df.iter_rows())


@settings(max_examples=200, deadline=None)
@given(rows=ROWS, shuffled=st.booleans(), nulls=st.booleans(), empty_left=st.booleans())
def test_or_with_a_side_of_no_series_is_the_merge(
    rows: list[tuple], shuffled: bool, nulls: bool, empty_left: bool
) -> None:
    rows = sorted({(sid, k): (sid, k, v, ok) for sid, k, v, ok in rows}.values())  # one row per (sid, k)
    if shuffled:  # (not ordered by series then tick: left to the merge)
        rows = rows[::-1]
    if nulls and rows:
        rows[0] = (*rows[0][:3], None)
    one = _vec(rows, 4)
    none = Vec(empty_vec(), [])
    left, right = (none, one) if empty_left else (one, none)
    got = set_op("or", left, right)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(history_vectors, "_distinct", lambda vec: None)
        want = set_op("or", left, right)
    assert got.labels == want.labels
    assert _rows(got) == _rows(want)
    assert got.df.schema == want.df.schema
