"""Window functions over a history: ``f(x, w)`` for every tick of a grid at once, vectorised.

Why apart from the compiler: the numerics (where each tick's window starts and ends, compensated sums,
PromQL's quantile interpolation and rate extrapolation) are most of the history evaluator's cost and
all of its float subtleties; the compiler only routes a call here. Each function takes one selector's
samples (sid, t, value, run_end, sorted by sid then t) and gives (k, sid, value, ok) rows or, for the
counter functions, the window edges ``extrapolate`` turns into rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llamamon.rules.history_input import Grid
from llamamon.rules.history_vectors import empty_vec
from llamamon.rules.promql import SHORT_WINDOW, US, window_extreme, window_quantile
from llamamon.rules.tree import Call

if TYPE_CHECKING:
    import polars as pl


def rolling(node: Call, df: pl.DataFrame, g: Grid, w: int) -> pl.DataFrame:
    """min/max/quantile over [t - w, t] per tick, mostly read off each sample's own trailing window.

    Why: where a tick's window holds exactly the samples of the window ending at its last sample
    (ticks on sample times, as when the grid steps at the sampling rate), one rolling pass over the
    samples alone answers it. Other ticks (between irregular samples, after a series ends) roll over
    their samples merged with those ticks, as Prometheus sees them; only their span is merged.
    Why each kind of pass once ``over`` all series: a polars call per series cost more than the data
    (a group of 512 ranks has thousands of series); the windows, and so the values, are the same.
    """
    import numpy as np
    import polars as pl

    frames: list[pl.DataFrame] = []  # series holding a non-finite value, per tick in Python
    fixed: dict[int, list[tuple[Any, Any, int]]] = {}  # window length -> (rows of df, ticks, sid)
    timed: list[tuple[Any, Any, int]] = []  # (rows of df, ticks, sid) read off a rolling pass by time
    merged: list[tuple[int, int, Any, Any, int]] = []  # (first row, end row, tick times, ticks, sid)
    few: list[tuple[Any, Any, int]] = []  # (ticks, values, sid) computed tick by tick
    for part, start, t, (ks, ticks, hi, lo) in _spans(df, g, w):
        keep = hi > lo
        if not keep.all():
            ks, ticks, hi, lo = ks[keep], ticks[keep], hi[keep], lo[keep]
        sid = int(part["sid"][0])
        v = part["value"].to_numpy()
        if not np.isfinite(v).all():
            frames.append(_per_tick(node, v.tolist(), ks, hi, lo, sid))
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
            if int(bad.sum()) <= PER_TICK_AT_MOST:
                few.append((ks[bad], _finite_windows(node, v, lo[bad], hi[bad]), sid))
            else:
                merged.append((start + int(lo[bad].min()), start + int(hi[bad].max()), ticks[bad], ks[bad], sid))
    frames += [_read_off(node, df, rows, {"window_size": size, "min_samples": 1}) for size, rows in fixed.items()]
    if timed:
        frames.append(_read_off(node, df, timed, _by_time(w)))
    if merged:
        frames.append(_merged(node, df, merged, w))
    if few:
        sids = np.concatenate([np.full(k.size, s, dtype=np.uint32) for k, _, s in few])
        frames.append(_vec(np.concatenate([k for k, _, _ in few]), np.concatenate([x for _, x, _ in few]), sids))
    if not frames:
        return empty_vec()
    return frames[0] if len(frames) == 1 else pl.concat(frames).sort("sid", "k")


PER_TICK_AT_MOST = 8  # a series' ticks whose windows are computed one by one, not by a merged rolling pass


def _by_time(w: int) -> dict[str, Any]:
    return {"window_size": f"{w}i", "closed": "both", "by": "t"}


def _read_off(node: Call, df: pl.DataFrame, rows: list[tuple[Any, Any, int]], kw: dict[str, Any]) -> pl.DataFrame:
    """Ticks answered by the window ending at a sample: one rolling pass over every series, gathered."""
    import numpy as np

    suffix = "_by" if "by" in kw else ""
    rolled = df.select(_window_expr(node, suffix, **kw).over("sid")).to_series()
    at = np.concatenate([r for r, _, _ in rows])
    sids = np.concatenate([np.full(r.size, s, dtype=np.uint32) for r, _, s in rows])
    return _vec(np.concatenate([k for _, k, _ in rows]), rolled.gather(at), sids)


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


def _finite_windows(node: Call, v: Any, lo: Any, hi: Any) -> Any:
    """min/max/quantile of v[lo:hi] per tick, for a series of finite values and a few ticks (``PER_TICK_AT_MOST``).

    Why: the ticks of a series whose window is no sample's own are mostly one, at its run's end; merging and
    rolling every sample of their span cost far more (a 30-minute window of 512 ranks' losses at 1 s was
    900,000 rows rolled to read 512 values). The quantile is PromQL's ``lo * (1 - w) + hi * w`` of the
    sorted window, the floats ``_promql_quantile`` gives from polars' order statistics.
    """
    import numpy as np

    out = np.empty(lo.size, dtype=np.float64)
    for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        window = v[a:b]
        if node.func in ("min", "max"):
            out[i] = window.min() if node.func == "min" else window.max()
            continue
        ordered = np.sort(window)
        rank = (ordered.size - 1) * node.q
        low = math.floor(rank)
        weight = rank - low
        out[i] = float(ordered[low]) * (1 - weight) + float(ordered[min(ordered.size - 1, low + 1)]) * weight
    return out


def _per_tick(node: Call, vals: list[float], ks: Any, hi: Any, lo: Any, sid: int) -> pl.DataFrame:
    """A series holding a non-finite value, per tick in Python.

    Why apart: PromQL skips NaN in min/max and sorts it first for quantiles, where polars' rolling
    windows propagate it; series with a non-finite value are rare.
    """
    bounds = zip(lo.tolist(), hi.tolist(), strict=True)
    if node.func in ("min", "max"):
        out = [window_extreme(node.func, vals[a:b]) for a, b in bounds]
    else:
        out = [window_quantile(vals[a:b], node.q) for a, b in bounds]
    return _vec(ks, out, sid)


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

    columns: dict[str, list[Any]] = {}  # per column, each series' piece: one frame of them all at the end
    for part, _, t, (ks, ticks, hi, lo) in _spans(df, g, w):
        n = hi - lo
        keep = n >= 2 if f in ("rate", "increase", "delta") else n > 0
        if not keep.all():
            ks, ticks, hi, lo, n = ks[keep], ticks[keep], hi[keep], lo[keep], n[keep]
        cols: dict[str, Any] = {"k": ks, "t": ticks, "hi": hi, "lo": lo, "n": n}
        if f in ("count", "sum", "avg"):
            v = part["value"].to_numpy()
            finite = np.isfinite(v)
            v0 = v if finite.all() else np.where(finite, v, 0.0)
            total = _window_sums(v0, _prefix(v0), lo, hi)
            if not finite.all():
                null = part["value"].is_null().to_numpy()
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
            cols["r"] = {"count": n.astype(np.float64), "sum": total, "avg": total / n}[f]
        else:
            # Why gather: first and last sample of each window by position, no join back onto the samples.
            # (polars' gather, not numpy's: it keeps a null value null.)
            v, last = part["value"], hi - 1
            cols.update(t0=t[lo], v0=v.gather(lo), t1=t[last], v1=v.gather(last))
            if f in ("rate", "increase"):
                c = part["c"] if "c" in part.columns else pl.Series(_resets(v.to_numpy()))
                cols.update(c0=c.gather(lo), c1=c.gather(last))
        cols["sid"] = np.full(ks.size, part["sid"][0], dtype=np.uint32)
        for name, piece in cols.items():
            columns.setdefault(name, []).append(piece)
    if not columns:
        schema = {"k": pl.Int64, "t": pl.Int64, "sid": pl.UInt32, "n": pl.Int64, "r": pl.Float64}
        edges = {f"{a}{b}": pl.Float64 if a != "t" else pl.Int64 for a in "tvc" for b in "01"}
        return pl.DataFrame(schema={**schema, **edges})
    # Why one frame at the end, not one per series: a frame and a column added per series cost more than the
    # arithmetic (a rate over a job's 512 ranks' steps); polars' pieces (values kept null) are concatenated as such.
    return pl.DataFrame(
        {
            name: pl.concat(pieces) if isinstance(pieces[0], pl.Series) else np.concatenate(pieces)
            for name, pieces in columns.items()
        }
    )


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


def _spans(df: pl.DataFrame, g: Grid, w: int) -> Iterator[tuple[pl.DataFrame, int, Any, tuple[Any, Any, Any, Any]]]:
    """Per series of ``df`` (sorted by sid): its rows, the first one's index in ``df``, their times and
    ``_tick_span`` of them, where a tick can see one."""
    start = 0
    for part in df.partition_by("sid", maintain_order=True):
        t = part["t"].to_numpy()
        span = _tick_span(t, g, w, int(part["run_end"][0]))
        if span is not None:
            yield part, start, t, span
        start += part.height


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


def _tick_span(t: Any, g: Grid, w: int, run_end: int) -> tuple[Any, Any, Any, Any] | None:
    """(tick indices, tick times, hi, lo) of the ticks whose window [tick - w, tick] can hold one of the
    sorted sample times ``t``, up to the run's end (None when no tick can); ``lo``/``hi`` as
    ``_window_bounds`` gives them.
    """
    import numpy as np

    k0 = int(g.first_at_or_after(t[:1])[0])
    k1 = min(g.n, int(g.through(np.array([min(int(t[-1]) + w, run_end)]))[0])) - 1
    if k1 < k0:
        return None
    ks = np.arange(k0, k1 + 1, dtype=np.int64)
    hi, lo = _window_bounds(t, g, k0, ks.size, w)
    return ks, g.times(ks), hi, lo


def _window_bounds(t: Any, g: Grid, k0: int, m: int, w: int) -> tuple[Any, Any]:
    """For ticks k0 .. k0+m-1: the first sample inside [tick - w, tick] and the one past it (searchsorted's
    ``lo`` and ``hi`` on the sorted times ``t``), counted off the grid in one pass.

    Why: the first tick at or after each sample (and after each sample's time + w) is a division on the
    regular grid (a search among explicit ticks), and the counts per tick are a bincount and a running
    sum: a few linear passes instead of two binary searches per tick.
    """
    import numpy as np

    first = g.first_at_or_after(t)  # first tick at or after the sample: in that tick's window from then on
    first -= k0
    np.clip(first, 0, m, out=first)
    gone = g.through(t + w)  # ticks whose window still reaches back to the sample, counted from 0
    gone -= k0
    np.clip(gone, 0, m, out=gone)
    hi = np.cumsum(np.bincount(first, minlength=m + 1)[:m])
    lo = np.cumsum(np.bincount(gone, minlength=m + 1)[:m])
    return hi, lo


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
