"""Window functions over a history: ``f(x, w)`` for every tick of a grid at once, vectorised.

Why apart from the compiler: the numerics (where each tick's window starts and ends, compensated sums,
PromQL's quantile interpolation and rate extrapolation) are most of the history evaluator's cost and
all of its float subtleties; the compiler only routes a call here. Each function takes one selector's
samples (sid, t, value, run_end, sorted by sid then t) and gives (k, sid, value, ok) rows or, for the
counter functions, the window edges ``extrapolate`` turns into rates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llamamon.rules.history_input import Grid
from llamamon.rules.history_vectors import empty_vec
from llamamon.rules.promql import SHORT_WINDOW, US, ranked_quantile, window_extreme, window_quantile
from llamamon.rules.tree import Call

# A series with at most this many ticks whose window is no sample's own has them answered per tick in
# Python rather than by a rolling pass over the series merged with them (``rolling``).
FEW_TICKS = 8

if TYPE_CHECKING:
    import polars as pl


def rolling(node: Call, df: pl.DataFrame, g: Grid, w: int) -> pl.DataFrame:
    """min/max/quantile over [t - w, t] per tick, mostly read off each sample's own trailing window.

    Why: where a tick's window holds exactly the samples of the window ending at its last sample
    (ticks on sample times, as when the grid steps at the sampling rate), one rolling pass over the
    samples alone answers it. Other ticks (between irregular samples, after a series ends) roll over
    their samples merged with those ticks, as Prometheus sees them; only their span is merged, and a
    series with no more than FEW_TICKS of them has them computed one by one (``_per_tick``).
    Why each kind of pass once ``over`` all series: a polars call per series cost more than the data
    (a group of 512 ranks has thousands of series); the windows, and so the values, are the same.
    """
    import numpy as np
    import polars as pl

    frames: list[pl.DataFrame] = []
    in_python: list[tuple[Any, list[float], int]] = []  # (ticks, their values, sid) answered per tick
    fixed: dict[int, list[tuple[Any, Any, int]]] = {}  # window length -> (rows of df, ticks, sid)
    timed: list[tuple[Any, Any, int]] = []  # (rows of df, ticks, sid) read off a rolling pass by time
    merged: list[tuple[int, int, Any, Any, int]] = []  # (first row, end row, tick times, ticks, sid)
    for sid, start, t, v, (ks, ticks, hi, lo) in _spans(df, g, w):
        keep = hi > lo
        if not keep.all():
            ks, ticks, hi, lo = ks[keep], ticks[keep], hi[keep], lo[keep]
        if not np.isfinite(v).all():
            in_python.append((ks, _per_tick(node, v, hi, lo), sid))
            continue
        gaps = np.diff(t)
        regular = bool(gaps.size and gaps[0] > 0 and (gaps == gaps[0]).all())
        if regular:
            # Samples d apart: [t_j - w, t_j] starts at sample j - w // d (the same as a search).
            good = np.maximum(hi - 1 - w // int(gaps[0]), 0) == lo
        else:
            good = np.searchsorted(t, t[hi - 1] - w, side="left") == lo
        if good.any():
            # Why fixed where regular: at a constant interval d a time window is the last w // d + 1
            # samples, and polars' fixed-size rolling is several times cheaper than by time (same values).
            into = fixed.setdefault(int(w // gaps[0]) + 1, []) if regular else timed
            into.append((start + hi[good] - 1, ks[good], sid))
        if not good.all():
            bad = ~good
            if np.count_nonzero(bad) <= FEW_TICKS:
                in_python.append((ks[bad], _per_tick(node, v, hi[bad], lo[bad]), sid))
            else:
                merged.append((start + int(lo[bad].min()), start + int(hi[bad].max()), ticks[bad], ks[bad], sid))
    frames += [_read_off(node, df, rows, {"window_size": size, "min_samples": 1}) for size, rows in fixed.items()]
    if timed:
        frames.append(_read_off(node, df, timed, _by_time(w)))
    if merged:
        frames.append(_merged(node, df, merged, w))
    if in_python:
        ks = np.concatenate([k for k, _, _ in in_python])
        sids = np.concatenate([np.full(k.size, s, dtype=np.uint32) for k, _, s in in_python])
        frames.append(_vec(ks, [x for _, values, _ in in_python for x in values], sids))
    if not frames:
        return empty_vec()
    return frames[0] if len(frames) == 1 else pl.concat(frames).sort("sid", "k")


def _by_time(w: int) -> dict[str, Any]:
    return {"window_size": f"{w}i", "closed": "both", "by": "t"}


def _read_off(node: Call, df: pl.DataFrame, rows: list[tuple[Any, Any, int]], kw: dict[str, Any]) -> pl.DataFrame:
    """Ticks answered by the window ending at a sample: rolling passes over every series, gathered."""
    import numpy as np

    suffix = "_by" if "by" in kw else ""
    at = np.concatenate([r for r, _, _ in rows])
    sids = np.concatenate([np.full(r.size, s, dtype=np.uint32) for r, _, s in rows])
    ks = np.concatenate([k for _, k, _ in rows])
    if not suffix and node.func not in ("min", "max") and not df["value"].null_count():
        return _vec(ks, _fixed_quantile(df, at, kw["window_size"], node.q), sids)
    rolled = df.select(_window_expr(node, suffix, **kw).over("sid")).to_series()
    return _vec(ks, rolled.gather(at), sids)


def _fixed_quantile(df: pl.DataFrame, at: Any, size: int, q: float) -> Any:
    """``_window_expr``'s quantile over the last ``size`` samples at the rows ``at`` of ``df`` (no null values).

    Why not its three rolling passes: a window's count is its row's place in its series (at most
    ``size``), and where the rank ``(count - 1) * q`` is whole, polars' "higher" order statistic is its
    "lower" one (both round that very float), so PromQL's interpolation needs only the lower pass there.
    That holds for every full window when ``(size - 1) * q`` is whole (a median of an odd count, the 25th
    percentile of 1801 samples); the other windows are rolled "higher" as well, over the first samples of
    each series alone where they are all not yet full (a window there is a prefix of its series).
    """
    import numpy as np

    starts = _series_starts(df["sid"].to_numpy())
    place = np.arange(df.height) - np.repeat(starts, np.diff(np.append(starts, df.height)))  # in its series
    count = np.minimum(place[at] + 1, size).astype(np.float64)
    rank = (count - 1) * q
    weight = rank - np.floor(rank)
    lower = _rolled_quantile(df, q, size, "lower").gather(at).to_numpy()
    higher = lower.copy()
    need = np.flatnonzero(weight != 0)
    if need.size and (count[need] == size).any():
        higher[need] = _rolled_quantile(df, q, size, "higher").gather(at[need]).to_numpy()
    elif need.size:
        heads = np.flatnonzero(place < size - 1)  # each series' first size - 1 rows
        firsts = df.select("sid", "value").gather(heads)
        higher[need] = _rolled_quantile(firsts, q, size, "higher").gather(np.searchsorted(heads, at[need])).to_numpy()
    return lower * (1 - weight) + higher * weight


def _rolled_quantile(df: pl.DataFrame, q: float, size: int, interpolation: str) -> pl.Series:
    """One order statistic of each row's window of the last ``size`` samples of its series."""
    import polars as pl

    e = pl.col("value").rolling_quantile(quantile=q, interpolation=interpolation, window_size=size, min_samples=1)
    return df.select(e.over("sid")).to_series()


def _merged(node: Call, df: pl.DataFrame, spans: list[tuple[int, int, Any, Any, int]], w: int) -> pl.DataFrame:
    """Ticks whose window is no sample's own: each series' span of samples merged with those ticks, rolled by time.

    Why a stable sort of samples then ticks: at equal times a sample comes first, so a tick sees it
    (as a merge keeping the left side first).
    """
    import numpy as np
    import polars as pl

    rows = np.concatenate([np.arange(a, b) for a, b, _, _, _ in spans])
    samples = df.select("sid", "t", "value").gather(rows).with_columns(k=pl.lit(None, pl.Int64))
    ticks = pl.DataFrame(
        {
            "sid": np.concatenate([np.full(k.size, s, dtype=np.uint32) for _, _, _, k, s in spans]),
            "t": np.concatenate([t for _, _, t, _, _ in spans]),
            "value": None,
            "k": np.concatenate([k for _, _, _, k, _ in spans]),
        }
    ).cast(samples.schema)
    both = pl.concat([samples, ticks]).sort("sid", "t", maintain_order=True)
    out = both.select("k", "sid", _window_expr(node, "_by", **_by_time(w)).over("sid"))
    return out.filter(pl.col("k").is_not_null()).select("k", "sid", "value", ok=pl.lit(True))


def _window_expr(node: Call, suffix: str, **kw: Any) -> pl.Expr:
    """The window's statistic by polars' rolling_<f><suffix> (``_by``: by time, "": by count)."""
    import polars as pl

    col, present = pl.col("value"), pl.col("value").is_not_null().cast(pl.Float64)
    if node.func in ("min", "max"):
        e = getattr(col, f"rolling_{node.func}{suffix}")(**kw)
    else:
        order = [
            getattr(col, f"rolling_quantile{suffix}")(quantile=node.q, interpolation=i, **kw)
            for i in ("lower", "higher")
        ]
        e = _promql_quantile(*order, getattr(present, f"rolling_sum{suffix}")(**kw), node.q)
    return e.cast(pl.Float64).alias("value")


def _per_tick(node: Call, v: Any, hi: Any, lo: Any) -> list[float]:
    """The window's statistic for each tick's samples ``v[lo:hi]``, in Python, as the live evaluator computes it.

    Why: PromQL skips NaN in min/max and sorts it first for quantiles, where polars' rolling windows
    propagate it, so a series holding a non-finite value comes here (rare). So do the few ticks of a
    series whose window is no sample's own (the tick at a run's end, after its last sample): sorting a
    few windows costs far less than rolling the whole series merged with them.
    """
    import numpy as np

    a, b = int(lo.min()), int(hi.max())
    bounds = zip((lo - a).tolist(), (hi - a).tolist(), strict=True)
    if node.func not in ("min", "max") and not np.isnan(v[a:b]).any():
        # Why numpy's stable sort where no NaN is to be put first: the order ``sorted`` gives (equal
        # numbers, 0.0 and -0.0, keep theirs) at a fraction of the cost of sorting a long window's floats.
        span = v[a:b]
        return [ranked_quantile(np.sort(span[i:j], kind="stable"), node.q) for i, j in bounds]
    vals = v[a:b].tolist()
    if node.func in ("min", "max"):
        return [window_extreme(node.func, vals[i:j]) for i, j in bounds]
    return [window_quantile(vals[i:j], node.q) for i, j in bounds]


def _vec(ks: Any, values: Any, sid: Any) -> pl.DataFrame:
    """(k, sid, value, ok) rows of one window function's answers (``sid``: one, or one per row)."""
    import polars as pl

    frame = pl.DataFrame({"k": ks, "value": values}).cast({"k": pl.Int64, "value": pl.Float64})
    return frame.select(
        "k", sid=pl.lit(sid, pl.UInt32) if isinstance(sid, int) else pl.Series(sid), value="value", ok=pl.lit(True)
    )


def by_search(f: str, df: pl.DataFrame, g: Grid, w: int) -> pl.DataFrame:
    """Per tick the sample range [lo, hi) inside [t - w, t] by binary search; sums from prefix sums.

    Why: no sort of samples and ticks together and no rolling window (non-finite values are counted
    apart so one NaN does not poison every later window; short windows are summed in order, see
    ``window_sums``). Why numpy: its searchsorted and fancy indexing on plain arrays cost a fraction
    of polars' Series calls, and the prefix sums add in the same order as polars' cum_sum.
    """
    import numpy as np
    import polars as pl

    cols: dict[str, list[Any]] = {"k": [], "t": [], "n": [], "sid": []}
    edges = f not in ("count", "sum", "avg")
    at: list[tuple[Any, Any]] = []  # per series: rows of df of each window's first and last sample
    counter = f in ("rate", "increase") and "c" not in df.columns
    resets = np.zeros(df.height) if counter else None  # per series' own running sums, in df's rows
    nulls = df["value"].is_null().to_numpy() if df["value"].null_count() else None
    for sid, start, t, v, (ks, ticks, hi, lo) in _spans(df, g, w):
        n = hi - lo
        keep = n >= 2 if edges else n > 0
        if not keep.all():
            ks, ticks, hi, lo, n = ks[keep], ticks[keep], hi[keep], lo[keep], n[keep]
        cols["k"].append(ks)
        cols["t"].append(ticks)
        cols["n"].append(n)
        cols["sid"].append(np.full(ks.size, sid, dtype=np.uint32))
        if f == "count":  # (how many samples: no sums)
            cols.setdefault("r", []).append(n.astype(np.float64))
        elif not edges:
            finite = np.isfinite(v)
            v0 = v if finite.all() else np.where(finite, v, 0.0)
            total = _window_sums(v0, _prefix(v0), lo, hi)
            if not finite.all():
                null = nulls[start : start + v.size] if nulls is not None else np.zeros(v.size, dtype=bool)
                flags = (np.isnan(v) & ~null, v == np.inf, v == -np.inf)
                nan, pinf, ninf = (_prefix(x.astype(np.float64)) for x in flags)
                # Why: a null value (never in the store, possible in a hand-made frame) leaves polars'
                # cumulative counts null there, and a null flag never marks a window non-finite.
                clear = np.ones(len(v) + 1, dtype=bool)
                clear[1:] = ~null
                clear = clear[hi] & clear[lo]
                has_nan = ((nan[hi] - nan[lo]) > 0) & clear
                has_pinf, has_ninf = ((pinf[hi] - pinf[lo]) > 0) & clear, ((ninf[hi] - ninf[lo]) > 0) & clear
                total = np.where(
                    has_nan | (has_pinf & has_ninf),
                    np.nan,
                    np.where(has_pinf, np.inf, np.where(has_ninf, -np.inf, total)),
                )
            cols.setdefault("r", []).append(total if f == "sum" else total / n)
        else:
            cols.setdefault("t0", []).append(t[lo])
            cols.setdefault("t1", []).append(t[hi - 1])
            at.append((start + lo, start + hi - 1))
            if resets is not None:
                resets[start : start + v.size] = _resets(v)
    if not cols["k"]:
        schema = {"k": pl.Int64, "t": pl.Int64, "sid": pl.UInt32, "n": pl.Int64, "r": pl.Float64}
        edge_types = {f"{a}{b}": pl.Float64 if a != "t" else pl.Int64 for a in "tvc" for b in "01"}
        return pl.DataFrame(schema={**schema, **edge_types})
    out = pl.DataFrame({name: np.concatenate(parts) for name, parts in cols.items()})
    if not edges:
        return out
    # Why gather once, from all series: first and last sample of each window by row, no join back onto
    # the samples and no frame per series (polars' gather, not numpy's: it keeps a null value null).
    first, last = (pl.Series(np.concatenate([a[i] for a in at])) for i in (0, 1))
    v = df["value"]
    out = out.with_columns(v0=v.gather(first), v1=v.gather(last))
    if f in ("rate", "increase"):
        c = df["c"] if resets is None else pl.Series(resets)
        out = out.with_columns(c0=c.gather(first), c1=c.gather(last))
    return out


def extrapolate(out: pl.DataFrame, w: int, *, counter: bool, per_second: bool) -> pl.DataFrame:
    """Prometheus' extrapolatedRate: the change over the window, stretched to the window's edges."""
    import polars as pl

    # Why one lazy expression, not a column per step: the same arithmetic without materialising five
    # intermediate columns as long as the ticks; lazily, so the repeated parts are computed once.
    res = pl.col("v1") - pl.col("v0")
    if counter:
        res = res + pl.col("c1") - pl.col("c0")
    to_start = (pl.col("t0") - (pl.col("t") - w)) / US
    to_end = (pl.col("t") - pl.col("t1")) / US
    sampled = (pl.col("t1") - pl.col("t0")) / US
    avg_gap = sampled / (pl.col("n") - 1)
    if counter:
        to_zero = sampled * (pl.col("v0") / res)
        use_zero = (res > 0) & (pl.col("v0") >= 0) & (to_zero < to_start)
        to_start = pl.when(use_zero).then(to_zero).otherwise(to_start)
    thr = avg_gap * 1.1
    ext = (
        sampled
        + pl.when(to_start < thr).then(to_start).otherwise(avg_gap / 2)
        + pl.when(to_end < thr).then(to_end).otherwise(avg_gap / 2)
    )
    factor = ext / sampled
    if per_second:
        factor = factor / (w / US)
    return out.lazy().with_columns(r=res * factor).collect()


def _spans(df: pl.DataFrame, g: Grid, w: int) -> Iterator[tuple[int, int, Any, Any, tuple[Any, Any, Any, Any]]]:
    """Per series of ``df`` (sorted by sid) where a tick can see one of its samples: its sid, its first
    row's index in ``df``, its times and values (null as NaN), and (tick indices, tick times, hi, lo) of
    the ticks whose window [tick - w, tick] can hold one of them, up to its run's end: ``lo`` and ``hi``
    are each window's first sample and the one past it (``t[lo:hi]`` is inside).

    Why each series' ticks searched among its samples: a tick's window is two binary searches into the
    series' sorted times, and there are fewer ticks than samples (a tick every 10 s, a sample a second),
    where mapping every sample onto the grid costs a search of the ticks per sample once run ends or
    samples add ticks of their own. Why one loop of numpy slices: a polars frame per series cost more
    than the data where a group of ranks has thousands of series.
    """
    import numpy as np

    if df.height == 0:
        return
    t_all = df["t"].to_numpy()
    v_all = df["value"].to_numpy()
    sid_all = df["sid"].to_numpy()
    starts = _series_starts(sid_all)
    ends = np.append(starts[1:], df.height)
    run_end = df["run_end"].to_numpy()[starts]
    k0s = g.first_at_or_after(t_all[starts])  # the first tick that sees a series' first sample
    k1s = np.minimum(g.n, g.through(np.minimum(t_all[ends - 1] + w, run_end))) - 1
    for a, b, k0, k1 in zip(starts.tolist(), ends.tolist(), k0s.tolist(), k1s.tolist(), strict=True):
        if k1 < k0:
            continue
        ks = np.arange(k0, k1 + 1, dtype=np.int64)
        ticks = g.times(ks)
        t = t_all[a:b]
        hi = np.searchsorted(t, ticks, side="right")
        lo = np.searchsorted(t, ticks - w, side="left")
        yield int(sid_all[a]), a, t, v_all[a:b], (ks, ticks, hi, lo)


def _series_starts(sid: Any) -> Any:
    """The row where each series starts, in a sid column sorted by sid (numpy)."""
    import numpy as np

    return np.flatnonzero(np.concatenate(([True], sid[1:] != sid[:-1])))


def _window_sums(v: Any, prefix: Any, lo: Any, hi: Any) -> Any:
    """Sums of v[lo:hi] per window: added one by one from the left where a window holds few samples.

    Why: a difference of prefix sums carries the rounding of everything before the window, so a window
    holding only 1.8 could sum to 1.8000000000000007 and ``avg(loss, 5m) > 1.8`` fire; added in order
    with Neumaier's compensation they are the floats PromQL's sum_over_time gives. Longer windows (many
    samples a second) keep the prefix sums, whose error is relative to the series' running total
    (docs/alerts.md).
    """
    import numpy as np

    total = prefix[hi] - prefix[lo]
    n = hi - lo
    short = (n > 0) & (n <= SHORT_WINDOW)
    if short.any():
        start, count = lo[short], n[short]
        acc, comp = np.zeros(start.size), np.zeros(start.size)
        last = v.size - 1
        for j in range(int(count.max())):
            inc = np.where(j < count, v[np.minimum(start + j, last)], 0.0)
            t = acc + inc
            comp += np.where(np.abs(acc) >= np.abs(inc), (acc - t) + inc, (inc - t) + acc)
            acc = t
        total[short] = acc + comp
    return total


def _promql_quantile(lower: pl.Expr, higher: pl.Expr, count: pl.Expr, q: float) -> pl.Expr:
    """PromQL's interpolation ``lower * (1 - w) + higher * w`` from the two order statistics around rank.

    Why not polars' linear interpolation: it computes ``lower + (higher - lower) * w``, a different float
    (p50 of 0.04 and 0.56 is 0.3 there and 0.30000000000000004 in Prometheus, so ``<= 30%`` disagreed).
    """
    rank = (count - 1) * q
    weight = rank - rank.floor()
    return lower * (1 - weight) + higher * weight


def _resets(v: Any) -> Any:
    """Counter-reset corrections of one series' values: the running sum of each drop's previous value.

    As polars orders floats (NaN above every number), so a number after a NaN counts as a drop.
    """
    import numpy as np

    reset = np.zeros(v.size, dtype=np.float64)
    prev, cur = v[:-1], v[1:]
    drop = (cur < prev) | (np.isnan(prev) & ~np.isnan(cur))
    reset[1:] = np.where(drop, prev, 0.0)
    return np.cumsum(reset)  # from the first element's 0.0, in order, as polars' cum_sum adds


def _prefix(x: Any) -> Any:
    """Prefix sums with a leading 0: the sum of x[lo:hi] is p[hi] - p[lo]."""
    import numpy as np

    out = np.empty(len(x) + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(x, out=out[1:])
    return out
