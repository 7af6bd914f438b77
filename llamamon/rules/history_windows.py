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
    """
    import numpy as np
    import polars as pl

    roll = dict(by="t", window_size=f"{w}i", closed="both")
    col, present = pl.col("value"), pl.col("value").is_not_null().cast(pl.Float64)

    def window(suffix: str, **kw: Any) -> pl.Expr:
        """The window's statistic by polars' rolling_<f><suffix> (``_by``: by time, "": by count)."""
        if node.func in ("min", "max"):
            e = getattr(col, f"rolling_{node.func}{suffix}")(**kw)
        else:
            order = [
                getattr(col, f"rolling_quantile{suffix}")(quantile=node.q, interpolation=i, **kw)
                for i in ("lower", "higher")
            ]
            e = _promql_quantile(*order, getattr(present, f"rolling_sum{suffix}")(**kw), node.q)
        return e.cast(pl.Float64).alias("value")

    expr = window("_by", **roll)

    def fixed(size: int) -> pl.Expr:
        return window("", window_size=size, min_samples=1)

    frames = []
    for part, t, (ks, ticks, hi, lo) in _spans(df, g, w):
        keep = hi > lo
        if not keep.all():
            ks, ticks, hi, lo = ks[keep], ticks[keep], hi[keep], lo[keep]
        v = part["value"].to_numpy()
        if not np.isfinite(v).all():
            # Why apart: PromQL skips NaN in min/max and sorts it first for quantiles, where polars'
            # rolling windows propagate it; series with a non-finite value are rare, so per tick.
            vals = v.tolist()
            if node.func in ("min", "max"):
                out = [window_extreme(node.func, vals[a:b]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
            else:
                out = [window_quantile(vals[a:b], node.q) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
            sid = pl.lit(part["sid"][0], pl.UInt32)
            frames.append(pl.DataFrame({"k": ks, "value": out}).select("k", sid=sid, value="value", ok=pl.lit(True)))
            continue
        gaps = np.diff(t)
        regular = bool(gaps.size and gaps[0] > 0 and (gaps == gaps[0]).all())
        if regular:
            # Samples d apart: [t_j - w, t_j] starts at sample j - w // d (the same as a search).
            good = np.maximum(hi - 1 - w // int(gaps[0]), 0) == lo
        else:
            good = np.searchsorted(t, t[hi - 1] - w, side="left") == lo
        pieces = []
        if good.any():
            # Why fixed where regular: at a constant interval d a time window is the last w // d + 1 samples,
            # and polars' fixed-size rolling is several times cheaper than by time (same values, same order).
            rolled = part.select(fixed(int(w // gaps[0]) + 1) if regular else expr).to_series()
            pieces.append(pl.DataFrame({"k": ks[good], "value": rolled.gather(hi[good] - 1)}))
        if not good.all():
            bad = ~good
            first, end = int(lo[bad].min()), int(hi[bad].max())
            # Samples before ticks at equal times (merge keeps the left side first): a tick sees them.
            both = (
                part.slice(first, end - first)
                .select("t", "value", k=pl.lit(None, pl.Int64))
                .merge_sorted(
                    pl.DataFrame({"t": ticks[bad], "value": None, "k": ks[bad]}).cast({"value": pl.Float64}),
                    key="t",
                )
            )
            pieces.append(both.select("k", expr).filter(pl.col("k").is_not_null()))
        out = pieces[0] if len(pieces) == 1 else pl.concat(pieces).sort("k")
        frames.append(out.select("k", sid=pl.lit(part["sid"][0], pl.UInt32), value="value", ok=pl.lit(True)))
    return pl.concat(frames) if frames else empty_vec()


def by_search(f: str, df: pl.DataFrame, g: Grid, w: int) -> pl.DataFrame:
    """Per tick the sample range [lo, hi) inside [t - w, t] by binary search; sums from prefix sums.

    Why: no sort of samples and ticks together and no rolling window (non-finite values are counted
    apart so one NaN does not poison every later window; short windows are summed in order, see
    ``window_sums``). Why numpy: its searchsorted and fancy indexing on plain arrays cost a fraction
    of polars' Series calls, and the prefix sums add in the same order as polars' cum_sum.
    """
    import numpy as np
    import polars as pl

    frames = []
    for part, t, (ks, ticks, hi, lo) in _spans(df, g, w):
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
        frame = pl.DataFrame(cols).with_columns(sid=pl.lit(part["sid"][0], pl.UInt32))
        frames.append(frame)
    if not frames:
        schema = {"k": pl.Int64, "t": pl.Int64, "sid": pl.UInt32, "n": pl.Int64, "r": pl.Float64}
        edges = {f"{a}{b}": pl.Float64 if a != "t" else pl.Int64 for a in "tvc" for b in "01"}
        return pl.DataFrame(schema={**schema, **edges})
    return pl.concat(frames, how="diagonal_relaxed")


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


def _spans(df: pl.DataFrame, g: Grid, w: int) -> Iterator[tuple[pl.DataFrame, Any, tuple[Any, Any, Any, Any]]]:
    """Per series of ``df`` (sorted by sid): its rows, their times and ``_tick_span`` of them, where a tick can see one."""
    for part in df.partition_by("sid", maintain_order=True):
        t = part["t"].to_numpy()
        span = _tick_span(t, g, w, int(part["run_end"][0]))
        if span is not None:
            yield part, t, span


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
