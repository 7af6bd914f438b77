"""The polars queries behind the chart tables: the summary and time columns of every series, the per-step
columns, latency quantiles and histograms, GPU energy and the validation table.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

BUCKETS = 800
HIST_BINS = 40


@functools.cache
def schemas() -> dict[str, dict[str, Any]]:
    """The tables' schemas, by table; built on first use, as they need polars types (imported lazily)."""
    import polars as pl

    ts = pl.Datetime("us", "UTC")
    text, real, count = pl.String, pl.Float64, pl.UInt32
    series = {"run": text, "metric": text, "labels": text}
    spread = {"time": ts, "min": real, "mean": real, "max": real}
    return {
        "summary": {"run": text, "group": text, "metric": text, "labels": text, "n": count, "nonfinite": count}
        | {"min": real, "mean": real, "p95": real, "max": real, "last": real, "first_time": ts, "last_time": ts},
        "series": series | {"bucket": pl.Int64} | spread | {"n": count, "nonfinite": count},
        "steps": series | {"step": pl.Int64} | spread | {"nonfinite": count},
        "quantiles": {"run": text, "metric": text, "time": ts, "p50": real, "p95": real, "p99": real, "n": count},
        "histogram": {"run": text, "metric": text, "lo": real, "hi": real, "count": count},
    }


def _with_finite(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``fv`` (the value, null where NaN/inf) and ``bad`` (NaN/inf): statistics then skip nulls.

    Why columns and not ``value.filter(is_finite)`` inside each aggregation: a filter inside ``agg``
    sends polars down its slow per-group path, three times slower on millions of rows than plain
    ``min``/``mean``/``max`` of a column, which null-skipping gives the same answers.
    """
    import polars as pl

    finite = pl.col("value").is_finite()
    return frame.with_columns(pl.when(finite).then(pl.col("value")).alias("fv"), (~finite).alias("bad"))


def _fv() -> pl.Expr:
    import polars as pl

    return pl.col("fv")


def _nonfinite() -> pl.Expr:
    import polars as pl

    return pl.col("bad").sum().cast(pl.UInt32).alias("nonfinite")


def series_key() -> pl.Expr:
    """One u64 per (run, metric, label set): grouping by it instead of three strings saves seconds and gigabytes."""
    import polars as pl

    return (pl.col("run").hash(11) ^ pl.col("metric").hash(23) ^ pl.col("labels").hash(37)).alias("key")


def series_names(lf: pl.LazyFrame) -> pl.LazyFrame:
    """The strings of every key: run, group, metric, labels and host (a run is recorded on one host).

    Why from the rows where the key changes: the store writes each series' samples together, so those
    are a few thousand of millions, and every key's first row is one of them; grouping all rows by key
    to pick strings cost more than reading the samples.
    """
    import polars as pl

    changed = (pl.col("key") != pl.col("key").shift(1)).fill_null(True)
    return lf.select("key", "run", "group", "metric", "labels", "host").filter(changed).unique("key", keep="any")


def summarize(compact: pl.DataFrame, names: pl.DataFrame, buckets: int = BUCKETS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The summary (min, mean, p95, max and last of every run, metric and label set, over finite values)
    and the chart columns (min, mean, max per run-relative time column), from one grouping of the samples.

    ``compact`` holds (key, time, value) of every sample, ``names`` maps each key to its strings. Why one
    grouping: the per-column statistics add up to the per-series ones, so only p95 and the last value
    need another (cheap) look at the samples.
    """
    import polars as pl

    cols = _columns(compact, names, buckets).collect()
    spans = cols.group_by("key").agg(
        pl.col("time").min().alias("first_time"), pl.col("time_max").max().alias("last_time")
    )
    names = names.join(spans, on="key", how="inner")
    v = pl.col("value")
    p95 = (
        compact.lazy().filter(v.is_finite()).group_by("key").agg(v.quantile(0.95, interpolation="linear").alias("p95"))
    )
    # The last value is the one at each series' last time (the first such row, if several share it):
    # a filter on those few times, then a match on (key, time), instead of a sort per series.
    ends = names.select("key", pl.col("last_time").alias("time"))
    last = (
        compact.lazy()
        .filter(pl.col("time").is_in(ends["time"].unique().implode()))
        .join(ends.lazy(), on=["key", "time"], how="inner", maintain_order="left")
        .group_by("key")
        .agg(v.first().alias("last"))
    )
    per_key = (
        cols.lazy()
        .group_by("key")
        .agg(
            pl.col("n").sum().alias("n"),
            pl.col("nonfinite").sum().alias("nonfinite"),
            pl.col("min").min().alias("min"),
            _mean(pl.col("sum").sum(), pl.col("count").sum()),
            pl.col("max").max().alias("max"),
        )
    )
    stats, p95, last = pl.collect_all([per_key, p95, last])
    summary = (
        names.join(stats, on="key", how="inner")
        .join(p95, on="key", how="left")
        .join(last, on="key", how="left")
        .sort("run", "group", "metric", "labels")
        .select(*schemas()["summary"], "key")
        .cast(schemas()["summary"])  # type: ignore[arg-type]
    )
    series = (
        cols.with_columns(_mean(pl.col("sum"), pl.col("count")))
        .join(_series_order(names), on="key", how="inner")
        .sort("order", "bucket")
        .select(list(schemas()["series"]))
        .cast(schemas()["series"])  # type: ignore[arg-type]
    )
    return summary, series


def _series_order(names: pl.DataFrame) -> pl.DataFrame:
    """key, run, metric, labels and ``order``: each series' place in (run, metric, labels) order.

    Why the order as a number: sorting millions of columns by three strings took three times as long as
    sorting the few thousand series by them and the columns by (that ordinal, bucket or step).
    """
    return names.select("key", "run", "metric", "labels").sort("run", "metric", "labels").with_row_index("order")


def _mean(total: pl.Expr, count: pl.Expr) -> pl.Expr:
    """Mean of the finite values: null, not 0/0, where there were none (as ``mean`` of only nulls)."""
    import polars as pl

    return pl.when(count > 0).then(total / count).alias("mean")


def _columns(compact: pl.DataFrame, names: pl.DataFrame, buckets: int) -> pl.LazyFrame:
    """Per series and run-relative time column: first and last time, min, sum, count and max of finite values."""
    import polars as pl

    frame = _with_finite(compact.lazy())
    if names["run"].n_unique() == 1:
        # One run (the usual case): its bounds are the first and last time of all samples, constants.
        t0, t1 = compact["time"].min(), compact["time"].max()
        span_us = int((t1 - t0).total_seconds() * 1e6) + 1  # type: ignore[operator, union-attr]
        bucket = (pl.col("time") - pl.lit(t0)).dt.total_microseconds() * buckets // span_us
    else:
        per_key = compact.group_by("key").agg(pl.col("time").min().alias("t0"), pl.col("time").max().alias("t1"))
        per_key = per_key.join(names.select("key", "run"), on="key")
        per_key = per_key.with_columns(pl.col("t0").min().over("run"), pl.col("t1").max().over("run"))
        frame = frame.join(per_key.select("key", "t0", "t1").lazy(), on="key", how="inner")
        span = (pl.col("t1") - pl.col("t0")).dt.total_microseconds() + 1
        bucket = (pl.col("time") - pl.col("t0")).dt.total_microseconds() * buckets // span
    v = _fv()
    return (
        # Why u32 (a column is 0 to ``buckets`` - 1): grouping by a u64 and a u32 costs a third less than by two
        # 64-bit keys, over every sample.
        frame.with_columns(bucket.cast(pl.UInt32).alias("bucket"))
        .group_by("key", "bucket")
        .agg(
            pl.col("time").min().alias("time"),
            pl.col("time").max().alias("time_max"),
            v.min().alias("min"),
            v.sum().alias("sum"),
            v.count().alias("count"),
            v.max().alias("max"),
            pl.len().cast(pl.UInt32).alias("n"),
            _nonfinite(),
        )
    )


def by_step(lf: pl.LazyFrame, names: pl.DataFrame, buckets: int) -> pl.LazyFrame:
    """Training metrics against step, cut into columns (the smoothed line is drawn from them: report.smoothing).

    ``lf`` has the ``key`` of ``series_key``, ``names`` its strings (``series_names``). Why by key, and the
    step range of each series as a join instead of a sort and windows over run, metric and labels: those
    needed every training row with its three strings in memory at once (512 ranks' were a gigabyte); the
    range is a small grouping, and joining it back and grouping streams.
    """
    import polars as pl

    stepped = lf.filter(pl.col("step").is_not_null()).select("key", "step", "time", "value")
    ranges = stepped.group_by("key").agg(pl.col("step").min().alias("s0"), pl.col("step").max().alias("s1"))
    # (a u32 column number, as ``_columns``' buckets: cheaper to group by)
    column = ((pl.col("step") - pl.col("s0")) * buckets // (pl.col("s1") - pl.col("s0") + 1)).cast(pl.UInt32)
    v = _fv()
    return (
        _with_finite(stepped.join(ranges, on="key", how="inner").with_columns(column.alias("b")))
        .group_by("key", "b")
        .agg(
            pl.col("step").max().alias("step"),
            pl.col("time").max().alias("time"),
            v.min().alias("min"),
            v.mean().alias("mean"),
            v.max().alias("max"),
            _nonfinite(),
        )
        .join(_series_order(names).lazy(), on="key", how="inner")
        .sort("order", "step")
        .select(list(schemas()["steps"]))
        .cast(schemas()["steps"])  # type: ignore[arg-type]
    )


def latency_quantiles(lf: pl.LazyFrame, bounds: pl.DataFrame, buckets: int) -> pl.LazyFrame:
    """p50/p95/p99 per time column from individual request latencies (histogram-kind metrics)."""
    import polars as pl

    span = (pl.col("t1") - pl.col("t0")).dt.total_microseconds() + 1
    offset = (pl.col("time") - pl.col("t0")).dt.total_microseconds()
    v = _fv()
    return (
        _with_finite(lf.join(bounds.lazy(), on="run", how="inner"))
        .with_columns((offset * buckets // span).alias("bucket"))
        .group_by("run", "metric", "bucket")
        .agg(
            pl.col("time").min().alias("time"),
            v.quantile(0.50).alias("p50"),
            v.quantile(0.95).alias("p95"),
            v.quantile(0.99).alias("p99"),
            pl.len().cast(pl.UInt32).alias("n"),
        )
        .drop("bucket")
        .sort("run", "metric", "time")
        .cast(schemas()["quantiles"])  # type: ignore[arg-type]
    )


def histogram(lf: pl.LazyFrame, summary: pl.DataFrame) -> pl.LazyFrame:
    """Counts in equal bins from the smallest value to the largest p95-based bound, per run and metric."""
    import polars as pl

    ranges = summary.group_by("metric").agg(
        pl.col("min").min().alias("lo"),
        pl.max_horizontal(pl.col("p95").max() * 1.5, pl.col("p95").max()).alias("cap"),
        pl.col("max").max().alias("top"),
    )
    ranges = ranges.with_columns(pl.min_horizontal("cap", "top").alias("hi")).select("metric", "lo", "hi")
    width = (pl.col("hi") - pl.col("lo")) / HIST_BINS
    b = ((pl.col("value") - pl.col("lo")) / pl.when(width > 0).then(width).otherwise(1.0)).floor()
    return (
        lf.filter(pl.col("value").is_finite())
        .join(ranges.lazy(), on="metric", how="inner")
        .with_columns(b.clip(0, HIST_BINS - 1).cast(pl.Int64).alias("bin"), width.alias("w"))
        .group_by("run", "metric", "bin")
        .agg(pl.len().cast(pl.UInt32).alias("count"), pl.col("lo").first(), pl.col("w").first())
        .with_columns(
            (pl.col("lo") + pl.col("bin") * pl.col("w")).alias("lo"),
            (pl.col("lo") + (pl.col("bin") + 1) * pl.col("w")).alias("hi"),
        )
        .select("run", "metric", "lo", "hi", "count")
        .sort("run", "metric", "lo")
        .cast(schemas()["histogram"])  # type: ignore[arg-type]
    )


MAX_GAP_S = 60.0


def energy(compact: pl.DataFrame, summary: pl.DataFrame) -> pl.LazyFrame:
    """Wh per GPU: power integrated over time (trapezoids); gaps over a minute (recorder stopped) count as zero."""
    import polars as pl

    power = summary.filter(pl.col("metric") == "gpu_power").select("key", "run", "labels")
    # Why the previous row where the key is the same, not windows over the key: sorted by (key, time), that is
    # the GPU's previous sample, and two windows over millions of rows cost a group_by each.
    same = pl.col("key") == pl.col("key").shift(1)
    dt = pl.when(same).then(pl.col("time").diff().dt.total_microseconds() / 1e6)
    return (
        compact.lazy()
        .filter(pl.col("key").is_in(power["key"].implode()) & pl.col("value").is_finite())
        .sort("key", "time")
        .with_columns(dt.alias("dt"), pl.col("value").shift(1).alias("prev"))
        .filter(pl.col("dt").is_not_null() & (pl.col("dt") <= MAX_GAP_S))
        .group_by("key")
        .agg((((pl.col("value") + pl.col("prev")) / 2 * pl.col("dt")).sum() / 3600.0).alias("wh"))
        .join(power.lazy(), on="key")
        .select("run", "labels", "wh")
        .sort("run", "labels")
    )


def validation(lf: pl.LazyFrame) -> pl.LazyFrame:
    import polars as pl

    is_val = pl.col("metric").str.starts_with("validation_") | pl.col("metric").str.starts_with("eval_")
    return (
        lf.filter(is_val & pl.col("step").is_not_null())
        .group_by("run", "step", "metric")
        .agg(pl.col("value").get(pl.col("time").arg_max()).alias("value"))
    )


VALIDATION_ROWS = 20


def pivot_validation(df: pl.DataFrame) -> pl.DataFrame:
    """Validation metrics as one row per evaluation step (the last few per run), one column per metric."""
    import polars as pl

    if not df.height:
        return pl.DataFrame(schema={"run": pl.String, "step": pl.Int64})
    # Sorted first so the columns come in a fixed order (validation loss, then the others by name), not in
    # whatever order the group_by finished.
    order = [pl.col("metric") != "validation_loss", "metric", "run", "step"]
    wide = df.sort(order).pivot(on="metric", index=["run", "step"], values="value")
    wide = wide.sort("run", "step")
    return wide.group_by("run", maintain_order=True).tail(VALIDATION_ROWS)
