"""Conditions over samples, vectorised with polars: selectors, windows, operators on a tick grid.

Compiles a ``llamamon.rules.lang`` tree into polars operations that give, per series and tick, a value
and a truth flag (see ``llamamon.rules.engine`` for the semantics). Pure: frames in, frames out. polars
is imported inside functions (this module is reached from the CLI's command functions only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamamon import catalog
from llamamon.rules import histogram
from llamamon.rules.lang import COMPARISONS, Binary, Call, Node, Number, Selector, Unary, subtrees
from llamamon.samples import labels_from_str

if TYPE_CHECKING:
    import polars as pl

US = 1_000_000
LOOKBACK = 300.0  # seconds, Prometheus' default lookback delta
END = 2**62  # (us) the end of a series that belongs to no run


@dataclass(frozen=True, slots=True, eq=False)
class Grid:
    """Evaluation ticks in microseconds since the Unix epoch: ``start + k * step`` for k in 0..n-1, or,
    where ``ticks`` is given, those sorted times (the regular ticks with samples' own times among them).

    Why both: the regular grid is a division away from any time, which keeps a history of millions of
    samples cheap; the explicit ticks let a rule see a sample that falls between two regular ticks.
    """

    start: int
    step: int
    n: int
    ticks: Any = None  # sorted int64 numpy array of tick times, or None for the regular grid

    @classmethod
    def covering(cls, first_us: int, last_us: int, step_s: float) -> Grid:
        step = max(1, round(step_s * US))
        start = first_us - first_us % step  # align to multiples of step, like a clock
        return cls(start, step, (last_us - start) // step + 1)

    def with_times(self, times: Any) -> Grid:
        """This grid plus the given times (us) as ticks of their own; itself when they are all on it."""
        import numpy as np

        times = np.asarray(times, dtype=np.int64)
        if self.ticks is None:
            off = times[
                ((times - self.start) % self.step != 0) | (times < self.start) | (times > self.time(self.n - 1))
            ]
            if not off.size:
                return self
            ticks = np.union1d(self.start + self.step * np.arange(self.n, dtype=np.int64), off)
        else:
            ticks = np.union1d(self.ticks, times)
            if ticks.size == self.n:
                return self
        return Grid(int(ticks[0]), self.step, int(ticks.size), ticks)

    def time(self, k: int) -> int:
        return self.start + k * self.step if self.ticks is None else int(self.ticks[k])

    def times(self, ks: Any) -> Any:
        """Tick times of an array of tick indices."""
        return ks * self.step + self.start if self.ticks is None else self.ticks[ks]

    def first_at_or_after(self, t: Any) -> Any:
        """Per time in the int64 array ``t``: the index of the first tick at or after it (n where none)."""
        import numpy as np

        if self.ticks is not None:
            return np.searchsorted(self.ticks, t, side="left").astype(np.int64)
        k = t - self.start
        k += self.step - 1
        k //= self.step
        return np.clip(k, 0, self.n, out=k)

    def through(self, t: Any) -> Any:
        """Per time in the int64 array ``t``: how many ticks are at or before it (0..n)."""
        import numpy as np

        if self.ticks is not None:
            return np.searchsorted(self.ticks, t, side="right").astype(np.int64)
        k = t - self.start
        k //= self.step
        k += 1
        return np.clip(k, 0, self.n, out=k)

    def after(self, k: Any, duration_us: int) -> Any:
        """Per tick index in ``k``: the first tick at least ``duration_us`` later (n or more where none).

        Why a time, not a tick count: where samples add ticks of their own, ``for`` still means seconds.
        """
        import numpy as np

        if self.ticks is None:
            return k + -(-duration_us // self.step)
        k = np.asarray(k, dtype=np.int64)
        if duration_us == 0:
            return k
        later = np.searchsorted(self.ticks, self.ticks[np.minimum(k, self.n - 1)] + duration_us, side="left")
        return np.where(k >= self.n, self.n, later)


# ---------------------------------------------------------------------------------------------------
# Samples: the store's long frame -> series table + (sid, t, value) columns


@dataclass(slots=True)
class Samples:
    """Samples of the metrics some rules need, split into a small series table and long columns."""

    data: pl.DataFrame  # empty frame with the sample columns (t i64 us, value f64, stale bool)
    metric: list[str]  # per sid, canonical name
    labels: list[dict[str, str]]  # per sid, including run and host
    run_last: pl.DataFrame  # sid, run_last (us): the last sample of the sid's run; run_end: it, or END
    parts: list[pl.DataFrame]  # per sid: t, value, stale sorted by t

    @property
    def names(self) -> set[str]:
        return set(self.metric)

    def bounds(self) -> tuple[int, int] | None:
        """(first, last) sample time in microseconds, None without samples: the span a grid must cover."""
        spans = [(int(p["t"][0]), int(p["t"][-1])) for p in self.parts if p.height]
        return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None


def series_labels(labels: str, run: str, host: str) -> dict[str, str]:
    """A stored series' label set as rules match it: its labels plus ``run`` and ``host`` where known."""
    found = dict(labels_from_str(labels))
    if run:
        found["run"] = run
    if host:
        found["host"] = host
    return found


def prepare(
    frame: pl.LazyFrame | pl.DataFrame,
    metrics: Iterable[str] | None,
    aliases: dict[str, str] | None = None,
    ends: dict[str, float] | None = None,
) -> Samples:
    """Select the needed metrics from a store frame (time, metric, value, labels[, run, host, stale]).

    ``ends``: run id -> the run's end (Unix seconds) where its metadata has one; a run's series answer
    until then, or its last sample without one (a run still going, or killed).
    """
    import polars as pl

    lf = frame.lazy()
    names = set(lf.collect_schema().names())
    cols = [pl.col("time").cast(pl.Datetime("us", "UTC")).dt.epoch("us").alias("t"), "metric", "value"]
    cols.append(pl.col("labels").fill_null("") if "labels" in names else pl.lit("").alias("labels"))
    for extra in ("run", "host"):
        cols.append(pl.col(extra).cast(pl.String).fill_null("") if extra in names else pl.lit("").alias(extra))
    cols.append(pl.col("stale").fill_null(False) if "stale" in names else pl.lit(False).alias("stale"))
    lf = lf.select(cols)
    if metrics is not None:
        # Why no pass over the data to list names: the raw names that can mean a wanted metric are known
        # (itself, catalog aliases, config aliases), so the filter is pushed down into the scan.
        wanted = set(metrics)
        table = {**catalog.ALIASES, **(aliases or {})}
        raw = wanted | {alias for alias, target in table.items() if target in wanted}
        renamed = {alias: catalog.canonical(alias, aliases) for alias in raw if alias in table}
        renamed = {a: c for a, c in renamed.items() if a != c}
        lf = lf.filter(pl.col("metric").is_in(sorted(raw)))
    else:
        raw_names = lf.select(pl.col("metric").unique()).collect()["metric"].to_list()
        renamed = {n: catalog.canonical(n, aliases) for n in raw_names if catalog.canonical(n, aliases) != n}
    # Why per-column hashes: hashing a struct of strings, joining or sorting on 4 string columns over
    # millions of rows costs seconds; u64 hashes do not.
    key = pl.col("metric").hash(1) ^ pl.col("labels").hash(2) ^ pl.col("run").hash(3) ^ pl.col("host").hash(4)
    # Why runs of equal keys, not a group_by or partition_by: the store writes each series' samples
    # together, so a series is a few contiguous slices; finding where the key changes is one cheap pass,
    # and each series is zero-copy slices of one frame. Why two outputs of one scan (collect_all shares
    # it): the strings are only wanted where a run starts, so they never come back for every row.
    base = lf.select("t", pl.col("value").cast(pl.Float64), "stale", "metric", "labels", "run", "host", key=key)
    starts_lf = (
        base.with_row_index("offset")
        .filter(pl.col("key").ne_missing(pl.col("key").shift(1)))
        .select("key", "metric", "labels", "run", "host", pl.col("offset").cast(pl.Int64))
    )
    body, runs = pl.collect_all([base.select("t", "value", "stale"), starts_lf])
    runs = runs.with_columns(length=pl.col("offset").shift(-1).fill_null(body.height) - pl.col("offset"))
    if renamed:
        # Why rename here: replacing strings costs seconds over millions of rows, and nothing over the
        # few runs; the key is then recomputed so an alias and its canonical name are one series.
        runs = runs.with_columns(pl.col("metric").replace(renamed)).with_columns(key=key)
    slices: dict[int, list[pl.DataFrame]] = {}
    for k, offset, length in runs.select("key", "offset", "length").iter_rows():
        slices.setdefault(k, []).append(body.slice(offset, length))
    keys = runs.unique("key", keep="first", maintain_order=True).select("key", "metric", "labels", "run", "host")
    keys = (
        keys.sort("run", "host", "metric", "labels").with_row_index("sid").with_columns(pl.col("sid").cast(pl.UInt32))
    )
    parts: list[pl.DataFrame] = []
    last: list[int] = []
    for k in keys["key"]:
        chunks = slices[k]
        part = chunks[0] if len(chunks) == 1 else pl.concat(chunks, rechunk=False)
        part = part if part["t"].is_sorted() else part.sort("t")
        parts.append(part)
        # A staleness marker (a live run's end) ends the run just before it.
        last.append(int(part["t"][-1]) - bool(part["stale"][-1]))
    keys = keys.with_columns(last=pl.Series(last, dtype=pl.Int64))
    metric_list = keys["metric"].to_list()
    label_list: list[dict[str, str]] = []
    for lab, run, host in zip(keys["labels"], keys["run"], keys["host"], strict=True):
        label_list.append(series_labels(lab, run, host))
    run_last = keys.select("sid", "run", "last").with_columns(run_last=pl.col("last").max().over("run"))
    if ends:
        ended = pl.col("run").replace_strict(
            {r: round(e * US) for r, e in ends.items()}, default=None, return_dtype=pl.Int64
        )
        run_last = run_last.with_columns(run_last=pl.max_horizontal("run_last", ended))
    # Why no end without a run: samples made by hand (unit-test series) answer on through the lookback.
    run_end = pl.when(pl.col("run") != "").then(pl.col("run_last")).otherwise(pl.lit(END, pl.Int64))
    run_last = run_last.select("sid", "run_last", run_end=run_end)
    return Samples(body.clear(), metric_list, label_list, run_last, parts)


# ---------------------------------------------------------------------------------------------------
# Vectors: per series and tick a value and a truth flag


@dataclass(slots=True)
class Vec:
    df: pl.DataFrame  # k i64, sid u32, value f64, ok bool
    labels: list[dict[str, str]]  # per (local) sid


def _matches(m: Any, labels: dict[str, str]) -> bool:
    have = labels.get(m.label, "")
    if m.op == "=":
        return have == m.value
    if m.op == "!=":
        return have != m.value
    hit = re.fullmatch(m.value, have) is not None
    return hit if m.op == "=~" else not hit


def shape(node: Node) -> tuple:
    """A node's meaning without its position or spelling: equal shapes evaluate to equal results."""
    if isinstance(node, Number):
        return ("number", node.value)
    if isinstance(node, Selector):
        return ("selector", node.metric, node.matchers)
    if isinstance(node, Call):
        return ("call", node.func, tuple(shape(a) for a in node.args), node.window, node.q)
    if isinstance(node, Unary):
        return ("unary", node.op, shape(node.operand))
    return ("binary", node.op, shape(node.left), shape(node.right))


class Compiler:
    """Evaluates trees on a grid; ``trees`` (all that will be evaluated) lets repeated parts run once.

    Why: rules share selectors and windows (memory warning and critical read the same series); a part
    that occurs more than once among ``trees`` is kept until its last use, then dropped, so sharing
    does not hold every intermediate frame for the whole run.
    """

    def __init__(self, samples: Samples, grid: Grid, lookback: float, trees: Iterable[Node] = ()) -> None:
        self.s = samples
        self.grid = grid
        self.lookback = round(lookback * US)
        self._uses: dict[tuple, int] = {}
        for tree in trees:
            for sub in subtrees(tree):
                if not isinstance(sub, Number):
                    key = shape(sub)
                    self._uses[key] = self._uses.get(key, 0) + 1
        self._memo: dict[tuple, Vec | float] = {}

    def eval(self, node: Node) -> Vec | float:
        if isinstance(node, Number) or not self._uses:
            return self._eval(node)
        key = shape(node)
        uses = self._uses.get(key, 0)
        if uses <= 1 and key not in self._memo:
            return self._eval(node)
        result = self._memo.pop(key) if key in self._memo else self._eval(node)
        self._uses[key] = uses - 1
        if uses > 1:
            self._memo[key] = result
        return result

    def _eval(self, node: Node) -> Vec | float:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Selector):
            return self.instant(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Unary):
            return self.unary(node)
        return self.binary(node)

    # -- selectors -----------------------------------------------------------------------------------

    def select(self, sel: Selector) -> tuple[pl.DataFrame, list[dict[str, str]]]:
        """Samples of the series a selector matches, renumbered 0..n-1, and their labels."""
        import polars as pl

        sids = [
            i
            for i, (name, labels) in enumerate(zip(self.s.metric, self.s.labels, strict=True))
            if name == sel.metric and all(_matches(m, labels) for m in sel.matchers)
        ]
        # Why slices: the data is sorted by series, so each series is a zero-copy slice, not a join.
        last, end = self.s.run_last["run_last"], self.s.run_last["run_end"]
        parts = [
            self.s.parts[i].with_columns(
                sid=pl.lit(local, pl.UInt32), run_last=pl.lit(last[i], pl.Int64), run_end=pl.lit(end[i], pl.Int64)
            )
            for local, i in enumerate(sids)
        ]
        empty = self.s.data.with_columns(
            sid=pl.lit(0, pl.UInt32), run_last=pl.lit(None, pl.Int64), run_end=pl.lit(None, pl.Int64)
        ).clear()
        df = pl.concat(parts) if parts else empty
        return df, [dict(self.s.labels[i]) for i in sids]

    def instant(self, sel: Selector, df: pl.DataFrame | None = None, labels: list | None = None) -> Vec:
        import numpy as np
        import polars as pl

        metric = catalog.BY_NAME.get(sel.metric)
        hold = metric is not None and metric.group == "training"
        if df is None:
            df, labels = self.select(sel)
        else:
            hold = True
        g = self.grid
        if df.height == 0:
            return Vec(empty_vec(), labels or [])
        # Why numpy: a handful of integer array operations, where polars spent most of the time on
        # a per-series shift and on materialising each intermediate column of the same arithmetic.
        # (In place where possible: each temporary is a fresh array as long as the samples.)
        t, sid = df["t"].to_numpy(), df["sid"].to_numpy()
        # Ticks a sample answers for: from its own time until the next sample (or marker), the lookback,
        # and its run's last sample (after a run's end nothing of it answers, as after a staleness marker).
        k0 = g.first_at_or_after(t)
        # The next sample's (or staleness marker's) first tick is the next row's k0, within a series.
        k1 = np.empty_like(k0)
        k1[:-1], k1[-1] = k0[1:], g.n
        k1[:-1][sid[1:] != sid[:-1]] = g.n
        # Why the run's last sample for training metrics: they hold until the run ends (then the lookback,
        # for series of no run).
        until = np.maximum(t, df["run_last"].to_numpy()) if hold else t.copy()
        until += self.lookback
        np.minimum(until, df["run_end"].to_numpy(), out=until)
        np.minimum(k1, g.through(until), out=k1)
        answers = k1 > k0
        stale = df["stale"]
        if stale.any():
            answers &= ~stale.to_numpy()
        keep = np.flatnonzero(answers)
        every = keep.size == t.size  # (every sample answers some tick: no gathers needed)
        if not every:
            k0, k1 = k0[keep], k1[keep]
        span = k1 - k0
        value = df["value"]
        if span.size and span.max() > 1:
            # Each sample repeated for every tick it answers (a grid finer than the samples).
            keep = np.repeat(keep, span)
            k0 = np.arange(keep.size, dtype=np.int64) - np.repeat(np.cumsum(span) - span - k0, span)
            every = False
        out = pl.DataFrame(
            {
                "k": k0,
                "sid": sid if every else sid[keep],
                "value": value if every else value.gather(keep),
                "ok": np.ones(keep.size, bool),
            }
        )
        return Vec(out, labels or [])

    # -- functions -----------------------------------------------------------------------------------

    def call(self, node: Call) -> Vec | float:
        import polars as pl

        f = node.func
        if f in ("abs", "isnan", "isinf", "isfinite"):
            arg = self.eval(node.args[0])
            if not isinstance(arg, Vec):
                ok = {"isnan": math.isnan, "isinf": math.isinf, "isfinite": math.isfinite}
                return abs(arg) if f == "abs" else float(ok[f](arg))
            if f == "abs":
                return Vec(arg.df.with_columns(pl.col("value").abs()), arg.labels)
            test = {
                "isnan": pl.col("value").is_nan(),
                "isinf": pl.col("value").is_infinite(),
                "isfinite": pl.col("value").is_finite(),
            }[f]
            return Vec(arg.df.with_columns(ok=pl.col("ok") & test), arg.labels)
        if f == "last":
            return self.instant(node.args[0])  # type: ignore[arg-type]
        if f == "evals_since_best":
            return self.since_best(node.args[0])  # type: ignore[arg-type]
        own = self.window(node, histogram.selector_of(node))
        return histogram.with_buckets(node, own, self.eval, self.bucket_quantiles, _concat)

    def bucket_quantiles(self, node: Call, res: Vec, metric: catalog.Metric) -> Vec:
        """A quantile of a catalog histogram per series from its buckets' rates (``rules.histogram``)."""
        import polars as pl

        groups, member = histogram.group_buckets(res.labels)
        if not groups:
            return Vec(empty_vec(), [])
        g = pl.Series([m[0] if m else None for m in member], dtype=pl.UInt32)
        le = pl.Series([m[1] if m else None for m in member], dtype=pl.Float64)
        rates = res.df.with_columns(g=g.gather(res.df["sid"]), le=le.gather(res.df["sid"])).drop_nulls("g")
        per = rates.group_by("g", "k").agg("le", "value").sort("g", "k")
        values = [
            histogram.in_unit(metric, histogram.bucket_quantile(node.q, zip(les, vs, strict=True)))
            for les, vs in zip(per["le"].to_list(), per["value"].to_list(), strict=True)
        ]
        out = per.select("k", pl.col("g").alias("sid"), value=pl.Series(values, dtype=pl.Float64), ok=pl.lit(True))
        return Vec(out, groups)

    def since_best(self, sel: Selector) -> Vec:
        import polars as pl

        selected, labels = self.select(sel)
        df = selected.filter(~pl.col("stale"))
        idx = pl.int_range(pl.len()).over("sid")
        prev_best = pl.col("value").cum_min().shift(1).over("sid")
        new_best = prev_best.is_null() | (pl.col("value") < prev_best)
        df = df.with_columns(i=idx, nb=new_best)
        df = df.with_columns(best_i=pl.when("nb").then("i").otherwise(None).forward_fill().over("sid"))
        df = df.with_columns(value=(pl.col("i") - pl.col("best_i")).cast(pl.Float64), stale=pl.lit(False))
        df = df.drop("i", "nb", "best_i")
        if selected["stale"].any():
            # Why the markers back: they are not evaluations, but after a run's end nothing answers (as `last`).
            df = pl.concat([df, selected.filter("stale")]).sort("sid", "t", maintain_order=True)
        # Why hold: evaluations are sparse events; the count stays true until the next evaluation.
        return self.instant(sel, df, labels)

    def window(self, node: Call, sel: Selector) -> Vec:
        import polars as pl

        df, labels = self.select(sel)
        g = self.grid
        w = round(node.window * US)
        df = df.filter(~pl.col("stale")).select("sid", "t", "value", "run_end")
        n_series = len(labels)
        if n_series == 0 or g.n == 0:
            return Vec(empty_vec(), labels)
        f = node.func
        counter = f in ("rate", "increase")
        if counter and df["value"].null_count():
            # (null values, never from the store; the numpy reset sums in _by_search assume none)
            prev = pl.col("value").shift(1).over("sid")
            reset = pl.when(pl.col("value") < prev).then(prev).otherwise(0.0)
            df = df.with_columns(c=reset.cum_sum().over("sid"))
        if f in ("count", "sum", "avg", "rate", "increase", "delta"):
            out = self._by_search(f, df, w)
            if f in ("rate", "increase", "delta"):
                out = self._extrapolate(out, w, counter=counter, per_second=f == "rate")
            res = out.select("k", "sid", pl.col("r").cast(pl.Float64).alias("value"), pl.lit(True).alias("ok"))
            return Vec(res, labels)
        # Only min, max and quantiles get here (the rest go by binary search above).
        return Vec(self._rolling(node, df, w), labels)

    def _rolling(self, node: Call, df: pl.DataFrame, w: int) -> pl.DataFrame:
        """min/max/quantile over [t - w, t] per tick, mostly read off each sample's own trailing window.

        Why: where a tick's window holds exactly the samples of the window ending at its last sample
        (ticks on sample times, as when the grid steps at the sampling rate), one rolling pass over the
        samples alone answers it. Other ticks (between irregular samples, after a series ends) roll over
        their samples merged with those ticks, as Prometheus sees them; only their span is merged.
        """
        import numpy as np
        import polars as pl

        g = self.grid
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
        for part in df.partition_by("sid", maintain_order=True):
            t = part["t"].to_numpy()
            span = _tick_span(t, g, w, int(part["run_end"][0]))
            if span is None:
                continue
            ks, ticks, hi, lo = span
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
                frames.append(
                    pl.DataFrame({"k": ks, "value": out}).select("k", sid=sid, value="value", ok=pl.lit(True))
                )
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
                if regular:
                    # Why: at a constant interval d a time window is the last w // d + 1 samples, and polars'
                    # fixed-size rolling is several times cheaper than by time (same values, same order).
                    rolled = part.select(fixed(int(w // gaps[0]) + 1)).to_series()
                else:
                    rolled = part.select(expr).to_series()
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

    def _by_search(self, f: str, df: pl.DataFrame, w: int) -> pl.DataFrame:
        """Per tick the sample range [lo, hi) inside [t - w, t] by binary search; sums from prefix sums.

        Why: no sort of samples and ticks together and no rolling window (non-finite values are counted
        apart so one NaN does not poison every later window; short windows are summed in order, see
        ``_window_sums``). Why numpy: its searchsorted and fancy indexing on plain arrays cost a fraction
        of polars' Series calls, and the prefix sums add in the same order as polars' cum_sum.
        """
        import numpy as np
        import polars as pl

        g = self.grid
        frames = []
        for part in df.partition_by("sid", maintain_order=True):
            t = part["t"].to_numpy()
            span = _tick_span(t, g, w, int(part["run_end"][0]))
            if span is None:
                continue
            ks, ticks, hi, lo = span
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

    @staticmethod
    def _extrapolate(out: pl.DataFrame, w: int, *, counter: bool, per_second: bool) -> pl.DataFrame:
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

    # -- operators -----------------------------------------------------------------------------------

    def unary(self, node: Unary) -> Vec | float:
        import polars as pl

        arg = self.eval(node.operand)
        if not isinstance(arg, Vec):
            return -arg if node.op == "-" else float(not arg)
        if node.op == "-":
            return Vec(arg.df.with_columns(-pl.col("value")), arg.labels)
        return Vec(arg.df.with_columns(~pl.col("ok")), arg.labels)

    def binary(self, node: Binary) -> Vec | float:
        import polars as pl

        left, right = self.eval(node.left), self.eval(node.right)
        op = node.op
        if not isinstance(left, Vec) and not isinstance(right, Vec):
            return _scalar_op(op, left, right)
        if op in ("and", "or", "unless"):
            if not (isinstance(left, Vec) and isinstance(right, Vec)):
                raise TypeError("lang.parse rejects set operators without a metric on both sides")
            return _set_op(op, left, right)
        if isinstance(left, Vec) and isinstance(right, Vec):
            pairs, labels = _pairs(left.labels, right.labels)
            r = right.df.rename({"sid": "r_sid", "value": "r_value", "ok": "r_ok"})
            j = left.df.join(pairs, left_on="sid", right_on="l_sid", how="inner").join(
                r, on=["k", "r_sid"], how="inner"
            )
            lv, rv = pl.col("value"), pl.col("r_value")
            ok = pl.col("ok") & pl.col("r_ok")
            keep = lv
            sid = "o_sid"
        else:
            vec = left if isinstance(left, Vec) else right
            scalar = right if isinstance(left, Vec) else left
            if not isinstance(vec, Vec) or isinstance(scalar, Vec):
                raise TypeError("one side is a vector here")
            j = vec.df
            lv = pl.col("value") if isinstance(left, Vec) else pl.lit(scalar, pl.Float64)
            rv = pl.lit(scalar, pl.Float64) if isinstance(left, Vec) else pl.col("value")
            ok = pl.col("ok")
            keep = pl.col("value")
            labels = vec.labels
            sid = "sid"
        if op in COMPARISONS:
            value, ok = keep, ok & _compare(op, lv, rv)
        else:
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv}[op]
        res = j.select("k", pl.col(sid).alias("sid"), value.alias("value"), ok.alias("ok"))
        return Vec(res, labels)


def _concat(a: Vec, b: Vec) -> Vec:
    """Both vectors' series side by side (b's renumbered after a's)."""
    import polars as pl

    if not b.labels:
        return a
    if not a.labels:
        return b
    shifted = b.df.with_columns(pl.col("sid") + len(a.labels))
    return Vec(pl.concat([a.df, shifted.cast(a.df.schema)]), [*a.labels, *b.labels])


SHORT_WINDOW = 16


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


def neumaier_sum(values: Iterable[float]) -> float:
    """Compensated sum of finite values, as PromQL's sum_over_time adds (kahanSumInc, Neumaier's variant)."""
    acc = comp = 0.0
    for v in values:
        t = acc + v
        comp += (acc - t) + v if abs(acc) >= abs(v) else (v - t) + acc
        acc = t
    return acc + comp


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


def empty_vec() -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema={"k": pl.Int64, "sid": pl.UInt32, "value": pl.Float64, "ok": pl.Boolean})


def pack(sid: str = "sid") -> pl.Expr:
    """(sid, k) as one i64 that sorts like the pair; only for frames where ``packable`` holds."""
    import polars as pl

    return pl.col(sid).cast(pl.Int64) * 2**32 + pl.col("k")


def packable(*frames: pl.DataFrame) -> bool:
    return all(df.height == 0 or (df["k"].min() >= 0 and df["k"].max() < 2**32) for df in frames)  # type: ignore[operator]


def _lookup(j: pl.DataFrame, r: pl.DataFrame, how: str) -> pl.DataFrame | None:
    """``j.join(r, on=[k, r_sid], how=how)`` for the r_ok column by binary search, None if r has duplicates.

    Why: vectors come out ordered by (sid, k) with one row per pair; a search into the sorted packed
    keys (numpy's, on plain arrays) is several times cheaper than hashing millions of rows for a join.
    """
    import numpy as np
    import polars as pl

    rkey = r.select(pack("r_sid")).to_series().to_numpy()
    if not (np.diff(rkey) > 0).all():
        return None
    lkey = j.select(pack("r_sid").fill_null(-1)).to_series().to_numpy()  # -1: no partner, no match
    if rkey.size == 0:
        if how == "inner":
            return j.clear().with_columns(r_ok=pl.lit(None, pl.Boolean))
        return j.with_columns(r_ok=pl.lit(None, pl.Boolean))
    pos = _positions(rkey, lkey)
    hit = rkey[pos] == lkey
    if how == "inner":
        return j.filter(pl.Series(hit)).with_columns(r_ok=r["r_ok"].gather(pos[hit]))
    r_ok = r["r_ok"].gather(pos)
    return j.with_columns(r_ok=pl.when(pl.Series(hit)).then(r_ok).otherwise(None))


def _positions(rkey: Any, lkey: Any) -> Any:
    """Where each of ``lkey`` is in the strictly increasing packed keys ``rkey`` (any in-range index where absent).

    Why not always a binary search: a series usually holds every tick of its span, so a key's place is
    its series' first row plus its tick's distance from the series' first tick; one gather per key.
    """
    import numpy as np

    r_sid, r_k = rkey >> 32, rkey & 0xFFFFFFFF
    starts = np.flatnonzero(np.diff(r_sid, prepend=-1))
    ends = np.append(starts[1:], rkey.size)
    sids = r_sid[starts]
    if not (r_k[ends - 1] - r_k[starts] == ends - starts - 1).all() or sids[-1] > 2**20:
        return np.searchsorted(rkey, lkey, side="left").clip(0, rkey.size - 1)
    first_row = np.zeros(sids[-1] + 2, dtype=np.int64)
    first_k = np.zeros(sids[-1] + 2, dtype=np.int64)
    first_row[sids], first_k[sids] = starts, r_k[starts]
    l_sid = np.clip(lkey >> 32, -1, sids[-1] + 1)  # (-1: no partner; the checks against rkey miss it)
    pos = first_row[l_sid] + (lkey & 0xFFFFFFFF) - first_k[l_sid]
    return np.clip(pos, 0, rkey.size - 1, out=pos)


def _compare(op: str, a: pl.Expr, b: pl.Expr) -> pl.Expr:
    # Why explicit NaN handling: polars orders NaN above everything; PromQL follows IEEE (NaN compares false).
    nan = a.is_nan() | b.is_nan()
    if op == "!=":
        return nan | (a != b)
    cmp = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b}[op]
    return cmp & ~nan


def _scalar_op(op: str, a: float, b: float) -> float:
    return float(holds(op, a, b)) if op in COMPARISONS else arith(op, a, b)


def window_extreme(f: str, values: Iterable[float]) -> float:
    """min/max over a window as PromQL's min_over_time/max_over_time: NaN only when every value is NaN."""
    kept = [v for v in values if v == v]
    if not kept:
        return math.nan
    return min(kept) if f == "min" else max(kept)


def window_quantile(values: Iterable[float], q: float) -> float:
    """PromQL's quantile_over_time: NaN sorts first, ``lo * (1 - w) + hi * w`` (so inf * 0 gives NaN)."""
    vals = sorted(values, key=lambda v: (v == v, v if v == v else 0.0))
    rank = q * (len(vals) - 1)
    lo = math.floor(rank)
    hi = min(len(vals) - 1, lo + 1)
    weight = rank - lo
    return vals[lo] * (1 - weight) + vals[hi] * weight


def divide(a: float, b: float) -> float:
    """IEEE division, as polars divides (x/0 is ±inf, 0/0 NaN); shared with the live evaluator."""
    if b != 0:
        return a / b
    if a == 0 or a != a:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return divide(a, b)


def holds(op: str, a: float, b: float) -> bool:
    """A comparison on two numbers; Python's float comparisons are IEEE already (NaN false, != true)."""
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "==":
        return a == b
    return a != b


def _agree(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(b[k] == v for k, v in a.items() if k in b)


def _pairs(
    left: list[dict[str, str]], right: list[dict[str, str]], *, exact: bool = False
) -> tuple[pl.DataFrame, list[dict[str, str]]]:
    """Series pairs that agree on every shared label (``exact``: identical labels), and merged labels."""
    import polars as pl

    rows: list[tuple[int, int, int]] = []
    out: list[dict[str, str]] = []
    seen: dict[tuple, int] = {}
    for i, a in enumerate(left):
        for j, b in enumerate(right):
            if (a == b) if exact else _agree(a, b):
                merged = {**b, **a}
                key = tuple(sorted(merged.items()))
                if key not in seen:
                    seen[key] = len(out)
                    out.append(merged)
                    rows.append((i, j, seen[key]))
    pairs = pl.DataFrame(rows, schema={"l_sid": pl.UInt32, "r_sid": pl.UInt32, "o_sid": pl.UInt32}, orient="row")
    return pairs, out


def _set_op(op: str, left: Vec, right: Vec) -> Vec:
    import polars as pl

    links = pl.DataFrame(
        [(i, j) for i, a in enumerate(left.labels) for j, b in enumerate(right.labels) if _agree(a, b)],
        schema={"sid": pl.UInt32, "r_sid": pl.UInt32},
        orient="row",
    )
    r = right.df.rename({"sid": "r_sid", "value": "r_value", "ok": "r_ok"})
    if op in ("and", "unless") and links["sid"].is_unique().all():
        # Why: one partner per left series (the usual case) needs a single join, no grouping.
        how = "inner" if op == "and" else "left"
        # Why a gather, not a join: the partner of each left series is one small lookup table.
        partner_of = [None] * len(left.labels)
        for i, k in links.iter_rows():
            partner_of[i] = k
        j = left.df.with_columns(r_sid=pl.Series(partner_of, dtype=pl.UInt32).gather(left.df["sid"]))
        if how == "inner":
            j = j.filter(pl.col("r_sid").is_not_null())
        found = _lookup(j, r, how) if packable(j, r) else None
        j = found if found is not None else j.join(r.drop("r_value"), on=["k", "r_sid"], how=how)
        partner = pl.col("r_ok") if op == "and" else ~pl.col("r_ok").fill_null(False)
        ok = pl.col("ok") & partner
        return Vec(j.select("k", "sid", "value", ok.alias("ok")), left.labels)
    if op in ("and", "unless"):
        matched = (
            left.df.select("k", "sid")
            .join(links, on="sid", how="inner")
            .join(r, on=["k", "r_sid"], how="inner")
            .group_by("k", "sid")
            .agg(pl.col("r_ok").any().alias("r_any"))
        )
        how = "inner" if op == "and" else "left"
        j = left.df.join(matched, on=["k", "sid"], how=how)
        ok = pl.col("ok") & (pl.col("r_any") if op == "and" else ~pl.col("r_any").fill_null(False))
        return Vec(j.select("k", "sid", "value", ok.alias("ok")), left.labels)
    # or: matched series merge into one output series; unmatched ones pass through.
    # Why exact for or: "a or b" lists both sides' series; only identical label sets are one alert.
    pairs, merged = _pairs(left.labels, right.labels, exact=True)
    out_labels = list(merged)
    lmap = [(int(a), int(o)) for a, o in zip(pairs["l_sid"], pairs["o_sid"], strict=True)]
    rmap = [(int(b), int(o)) for b, o in zip(pairs["r_sid"], pairs["o_sid"], strict=True)]
    for i, lab in enumerate(left.labels):
        if not any(a == i for a, _ in lmap):
            lmap.append((i, len(out_labels)))
            out_labels.append(lab)
    for j, lab in enumerate(right.labels):
        if not any(b == j for b, _ in rmap):
            rmap.append((j, len(out_labels)))
            out_labels.append(lab)
    schema = {"sid": pl.UInt32, "o_sid": pl.UInt32}
    lm = pl.DataFrame(lmap, schema=schema, orient="row")
    rm = pl.DataFrame(rmap, schema=schema, orient="row")
    both = pl.concat(
        [
            left.df.join(lm, on="sid").with_columns(side=pl.lit(0, pl.Int8)),
            right.df.join(rm, on="sid").with_columns(side=pl.lit(1, pl.Int8)),
        ]
    )
    both = both.sort("k", "o_sid", pl.col("ok").not_(), "side").unique(
        ["k", "o_sid"], keep="first", maintain_order=True
    )
    merged_ok = both.group_by("k", "o_sid").agg(pl.col("ok").any())
    res = both.drop("ok").join(merged_ok, on=["k", "o_sid"]).select("k", pl.col("o_sid").alias("sid"), "value", "ok")
    return Vec(res, out_labels)
