"""What the history evaluator reads: the evaluation ticks (``Grid``) and the samples of the metrics some rules
need, split into a small series table and per-series columns (``Samples``, made by ``prepare``).

Why apart from the compiler: the grid and the samples are the history's input, shared by the conditions
(``rules.history_compiler``), the episodes (``rules.history``) and the promtool runner; the compiler is
the part that changes with the language. polars is imported inside functions (this module is reached
from the CLI's command functions only).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamamon import catalog
from llamamon.rules.model import stored_names
from llamamon.rules.promql import US, series_labels

if TYPE_CHECKING:
    import polars as pl

END = 2**62  # (us) the end of a series that belongs to no run
# At most this many ticks off a grid's regular ones are searched apart from them (``Grid.regular``).
FEW_EXTRA = 16


@dataclass(frozen=True, slots=True, eq=False)
class Grid:
    """Evaluation ticks in microseconds since the Unix epoch: ``start + k * step`` for k in 0..n-1, or,
    where ``ticks`` is given, those sorted times (the regular ticks with samples' own times among them).

    Why both: the regular grid is a division away from any time, which keeps a history of millions of
    samples cheap; the explicit ticks let a rule see a sample that falls between two regular ticks.
    Explicit ticks that are the ``regular`` grid's plus a few ``extra`` (a run's end) still place a time
    by a division, and a search among those few; evenly spaced ones are a regular grid again.
    """

    start: int
    step: int
    n: int
    ticks: Any = None  # sorted int64 numpy array of tick times, or None for the regular grid
    regular: Grid | None = None  # with ticks: the regular grid among them, where the others are few
    extra: Any = None  # with regular: the sorted ticks off it

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
            off = self._off(times)
            if not off.size:
                return self
            ticks = np.union1d(self.start + self.step * np.arange(self.n, dtype=np.int64), off)
        else:
            ticks = np.union1d(self.ticks, times)
            if ticks.size == self.n:
                return self
        gaps = np.diff(ticks)
        if gaps.size and (gaps == gaps[0]).all():
            return Grid(int(ticks[0]), int(gaps[0]), int(ticks.size))
        regular = self if self.ticks is None else self.regular
        extra = regular._off(ticks) if regular is not None else None
        if extra is None or extra.size > FEW_EXTRA:
            return Grid(int(ticks[0]), self.step, int(ticks.size), ticks)
        return Grid(int(ticks[0]), self.step, int(ticks.size), ticks, regular, extra)

    def _off(self, times: Any) -> Any:
        """Those of the times that are no tick of this regular grid."""
        start, last = self.start, self.time(self.n - 1)
        return times[((times - start) % self.step != 0) | (times < start) | (times > last)]

    def time(self, k: int) -> int:
        return self.start + k * self.step if self.ticks is None else int(self.ticks[k])

    def times(self, ks: Any) -> Any:
        """Tick times of an array of tick indices."""
        return ks * self.step + self.start if self.ticks is None else self.ticks[ks]

    def first_at_or_after(self, t: Any) -> Any:
        """Per time in the int64 array ``t``: the index of the first tick at or after it (n where none)."""
        import numpy as np

        if self.regular is not None:
            return self.regular.first_at_or_after(t) + np.searchsorted(self.extra, t, side="left")
        if self.ticks is not None:
            return np.searchsorted(self.ticks, t, side="left").astype(np.int64, copy=False)
        k = t - self.start
        k += self.step - 1
        k //= self.step
        return np.clip(k, 0, self.n, out=k)

    def through(self, t: Any) -> Any:
        """Per time in the int64 array ``t``: how many ticks are at or before it (0..n)."""
        import numpy as np

        if self.regular is not None:
            return self.regular.through(t) + np.searchsorted(self.extra, t, side="right")
        if self.ticks is not None:
            return np.searchsorted(self.ticks, t, side="right").astype(np.int64, copy=False)
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
        raw = stored_names(metrics, aliases)
        renamed = {a: c for a in raw if (c := catalog.canonical(a, aliases)) != a}
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
