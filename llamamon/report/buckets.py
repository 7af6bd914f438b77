"""Latency quantiles of scraped histograms for the report, from their stored buckets.

A scraped histogram is stored whole (``catalog.histogram_parts``: cumulative ``<metric>_bucket{le}``
counted over the run, seconds). The requests that finished in a span are the buckets' increase over it,
summed over the series (instances, models) by ``le``; their quantiles are Prometheus'
``histogram_quantile`` (``rules.histogram.bucket_quantile``), over the whole run for the key figures
and per time column for the charts, never quantiles of per-interval quantiles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.rules.histogram import bucket_quantile, in_unit

if TYPE_CHECKING:
    import polars as pl

QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def bucket_metrics() -> list[str]:
    """The stored bucket series names of every catalog histogram."""
    return [catalog.histogram_parts(m.name)[0] for m in catalog.METRICS if m.kind == "histogram"]


def _quantiles(metric: str, les: list[float], counts: list[float]) -> dict[str, float]:
    known = catalog.BY_NAME[metric]
    pairs = list(zip(les, counts, strict=True))
    out = {name: in_unit(known, bucket_quantile(q, pairs)) for name, q in QUANTILES}
    out["n"] = max(counts, default=0.0)
    return out


def tables(rows: pl.DataFrame, bounds: pl.DataFrame, columns: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(per time column, per run, histogram bars) from bucket rows (run, metric, labels, time, value).

    Per time column: the increase from the previous column's last value (the series' first for the first
    column); per run: from the first sample to the last. Bars: the run's requests per bucket, in the
    catalog unit (the +Inf bucket has no upper bound to draw and is left out).
    """
    import polars as pl

    if not rows.height:
        return (
            pl.DataFrame(schema=_time_schema()),
            pl.DataFrame(schema=_run_schema()),
            pl.DataFrame(schema=_bar_schema()),
        )
    rows = rows.with_columns(
        metric=pl.col("metric").str.replace(r"_bucket$", ""),
        le=pl.col("labels").str.json_path_match("$.le").cast(pl.Float64, strict=False),
    ).drop_nulls("le")
    span = (pl.col("t1") - pl.col("t0")).dt.total_microseconds() + 1
    offset = (pl.col("time") - pl.col("t0")).dt.total_microseconds()
    keys = ("run", "metric", "labels")
    cols = (
        rows.join(bounds, on="run", how="inner")
        .sort(*keys, "time")
        .with_columns(column=offset * columns // span)
        .group_by(*keys, "column", maintain_order=True)
        .agg(pl.col("le").first(), pl.col("time").min(), pl.col("value").last().alias("last"))
        .join(rows.group_by(*keys).agg(pl.col("value").sort_by("time").first().alias("first")), on=keys)
        .with_columns(inc=pl.col("last") - pl.col("last").shift(1).over(keys).fill_null(pl.col("first")))
    )
    per_column = (
        cols.group_by("run", "metric", "column", "le")
        .agg(pl.col("inc").sum(), pl.col("time").min())
        .sort("le")
        .group_by("run", "metric", "column")
        .agg("le", "inc", pl.col("time").min())
        .sort("run", "metric", "time")
    )
    over_time = pl.DataFrame(
        [
            {"run": r, "metric": m, "time": t, **_quantiles(m, les, incs)}
            for r, m, t, les, incs in per_column.select("run", "metric", "time", "le", "inc").iter_rows()
        ],
        schema=_time_schema(),
    )
    totals = (
        cols.group_by(*keys)
        .agg((pl.col("last").last() - pl.col("first").first()).alias("inc"), pl.col("le").first())
        .group_by("run", "metric", "le")
        .agg(pl.col("inc").sum())
        .sort("run", "metric", "le")
    )
    runs = totals.group_by("run", "metric", maintain_order=True).agg("le", "inc")
    per_run = pl.DataFrame(
        [{"run": r, "metric": m, **_quantiles(m, les, incs)} for r, m, les, incs in runs.iter_rows()],
        schema=_run_schema(),
    )
    bars = []
    for run, metric, les, incs in runs.iter_rows():
        known = catalog.BY_NAME[metric]
        lo, below = 0.0, 0.0
        for le, cumulative in zip(les, incs, strict=True):
            if le == float("inf"):
                break
            count = max(cumulative - below, 0.0)
            bars.append((run, metric, in_unit(known, lo), in_unit(known, le), round(count)))
            lo, below = le, max(cumulative, below)
    return over_time, per_run, pl.DataFrame(bars, schema=_bar_schema(), orient="row")


def _time_schema() -> dict:
    import polars as pl

    return {"run": pl.String, "metric": pl.String, "time": pl.Datetime("us", "UTC")} | _figures()


def _run_schema() -> dict:
    import polars as pl

    return {"run": pl.String, "metric": pl.String} | _figures()


def _figures() -> dict:
    import polars as pl

    return {"p50": pl.Float64, "p95": pl.Float64, "p99": pl.Float64, "n": pl.Float64}


def _bar_schema() -> dict:
    import polars as pl

    return {"run": pl.String, "metric": pl.String, "lo": pl.Float64, "hi": pl.Float64, "count": pl.UInt32}
