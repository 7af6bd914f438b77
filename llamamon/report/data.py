"""Polars queries that reduce the store to the small tables each dashboard draws.

Matplotlib never sees raw samples: time series are cut into ``buckets`` columns per run (about one
per pixel of chart width) keeping min, mean and max of each, so a one-second spike in a week of data
still reaches the chart as the max of its column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamamon import catalog
from llamamon.report import buckets as buckets_of
from llamamon.report.source import scan_samples
from llamamon.samples import AlertEvent, Labels, RunInfo
from llamamon.store.runs import run_ends

if TYPE_CHECKING:
    import polars as pl


DASHBOARDS: tuple[str, ...] = ("system", "training", "inference")
# Store groups whose metrics each dashboard draws.
DASHBOARD_GROUPS: dict[str, tuple[str, ...]] = {
    "system": ("system", "process", "gpu"),
    "training": ("training",),
    "inference": ("inference",),
}
BUCKETS = 800
HIST_BINS = 40


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The monitoring.thresholds values the charts draw as lines (ratios 0..1, latency in ms)."""

    memory_warning: float | None = 0.80
    memory_critical: float | None = 0.90
    gpu_utilization_min: float | None = None
    gpu_memory_max: float | None = None
    validation_loss_max: float | None = None
    learning_rate_min: float | None = None
    latency_max: float | None = None
    batch_queue_max: float | None = None


def thresholds_from_config(cfg: Any | None) -> Thresholds:
    """Thresholds from a loaded Config; built-in defaults for what it does not set (or without one)."""
    if cfg is None:
        return Thresholds()
    th = getattr(getattr(cfg, "monitoring", None), "thresholds", None)

    def pick(section: str, key: str, default: float | None) -> float | None:
        value = getattr(getattr(th, section, None), key, default)
        return None if value is None else float(value)

    base = Thresholds()
    return Thresholds(
        memory_warning=pick("memory", "warning", base.memory_warning),
        memory_critical=pick("memory", "critical", base.memory_critical),
        gpu_utilization_min=pick("gpu", "utilization_min", base.gpu_utilization_min),
        gpu_memory_max=pick("gpu", "memory_max", base.gpu_memory_max),
        validation_loss_max=pick("training", "validation_loss_max", base.validation_loss_max),
        learning_rate_min=pick("training", "learning_rate_min", base.learning_rate_min),
        latency_max=pick("inference", "latency_max", base.latency_max),
        batch_queue_max=pick("inference", "batch_queue_max", base.batch_queue_max),
    )


@dataclass(frozen=True, slots=True)
class AlertSpan:
    """One alert instance's firing span: what the timeline draws and the charts shade."""

    rule: str
    severity: str
    labels: Labels
    start: float
    end: float | None
    run: str | None = None
    summary: str = ""
    metrics: tuple[str, ...] = ()  # the metrics the rule's condition reads: the charts to shade

    @property
    def metric(self) -> str | None:
        return dict(self.labels).get("metric")

    def concerns(self, metric: str) -> bool:
        return metric in self.metrics or self.metric == metric or metric in self.rule.lower()


# The rules engine run over the report's samples (store columns): given a function that returns the
# samples of some metric names, and the names of the metrics recorded when known.
AlertReplay = Callable[
    [Callable[["set[str] | None"], "pl.LazyFrame"], "set[str] | None", "dict[str, float]"], list[AlertSpan]
]


def alert_spans(events: Iterable[AlertEvent]) -> list[AlertSpan]:
    """Pair firing and resolved events (by fingerprint and run) into spans; still-firing ones stay open."""
    open_spans: dict[tuple[str, str | None], AlertSpan] = {}
    spans: list[AlertSpan] = []
    for ev in sorted(events, key=lambda e: (e.ended_at or e.started_at) if e.state == "resolved" else e.started_at):
        key = (ev.fingerprint, ev.run)
        if ev.state == "firing":
            if key not in open_spans:
                open_spans[key] = AlertSpan(ev.rule, ev.severity, ev.labels, ev.started_at, None, ev.run, ev.summary)
        else:
            began = open_spans.pop(key, None)
            start = began.start if began else ev.started_at
            spans.append(AlertSpan(ev.rule, ev.severity, ev.labels, start, ev.ended_at, ev.run, ev.summary))
    spans.extend(open_spans.values())
    return sorted(spans, key=lambda s: (s.start, s.rule))


def merge_intervals(intervals: Iterable[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """Sorted, with intervals closer than ``gap`` joined: what a chart can show at its resolution."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@dataclass(slots=True)
class ReportData:
    """Everything the dashboards need, already small: at most a few thousand rows per table."""

    runs: list[RunInfo]
    skipped: list[str]
    summary: pl.DataFrame
    series: pl.DataFrame
    steps: pl.DataFrame
    quantiles: pl.DataFrame
    histogram: pl.DataFrame
    energy: pl.DataFrame
    validation: pl.DataFrame
    alerts: list[AlertSpan] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Per run and scraped histogram metric: p50/p95/p99 of the run's requests from its buckets (report.buckets).
    latency: pl.DataFrame | None = None

    def has_group(self, *groups: str) -> bool:
        return self.summary.height > 0 and self.summary.filter(self.summary["group"].is_in(groups)).height > 0

    def metrics(self) -> set[str]:
        return set(self.summary["metric"].to_list()) if self.summary.height else set()

    @property
    def run_bounds(self) -> dict[str, tuple[float, float]]:
        """Per run: first and last sample time (Unix seconds) over all its metrics."""
        import polars as pl

        if not self.summary.height:
            return {}
        b = self.summary.group_by("run").agg(pl.col("first_time").min(), pl.col("last_time").max())
        return {
            r: (t0.timestamp(), t1.timestamp()) for r, t0, t1 in b.select("run", "first_time", "last_time").iter_rows()
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


def _empty(schema: dict[str, Any]) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema=schema)


def load_report_data(
    metrics_dir: Path,
    runs: list[RunInfo],
    dashboards: Iterable[str] = DASHBOARDS,
    alerts: Iterable[AlertSpan] | AlertReplay | None = (),
    thresholds: Thresholds | None = None,
    buckets: int = BUCKETS,
    since: float | None = None,
) -> ReportData:
    """Summaries first (one read of every sample), then the chart tables from pruned partitions.

    ``alerts``: spans, or a replay to run over the runs' samples (read once, for both). ``since``
    (Unix seconds): only samples from then on are charted and summarised; alerts are still replayed
    over the whole runs, so a ``for:`` or a plateau begun earlier counts, and those still firing
    inside the window are kept.
    """
    import polars as pl

    dashboards = tuple(dashboards)
    _init_schemas()
    run_ids = [r.id for r in runs]
    lf, skipped = scan_samples(metrics_dir, runs=run_ids, since=since)
    wanted_groups = {g for d in dashboards for g in DASHBOARD_GROUPS.get(d, ())}
    data = ReportData(
        runs=runs,
        skipped=skipped,
        summary=_empty(_SUMMARY_SCHEMA),
        series=_empty(_SERIES_SCHEMA),
        steps=_empty(_STEPS_SCHEMA),
        quantiles=_empty(_QUANTILE_SCHEMA),
        histogram=_empty(_HIST_SCHEMA),
        energy=_empty({"run": pl.String, "labels": pl.String, "wh": pl.Float64}),
        validation=_empty({"run": pl.String, "step": pl.Int64}),
        alerts=[] if alerts is None or callable(alerts) else _in_window(alerts, since),
        thresholds=thresholds or Thresholds(),
    )
    replay = alerts if callable(alerts) else None
    if lf is None:
        if replay is not None and since is not None:
            data.alerts = _replay_stored(replay, metrics_dir, runs, since)
        return data
    lf = lf.select("time", "metric", "value", "labels", "step", "group", "run", "host").with_columns(_key())
    # One read of every sample into 24 bytes a row (key, time, value); summaries and chart columns are computed
    # from it in memory instead of re-decoding the Parquet files and hashing strings once per statistic.
    compact, names = pl.collect_all(
        [
            lf.select("key", "time", "value"),
            _names(lf),
        ],
        engine="streaming",
    )
    summary, series = summarize(compact, names, buckets)
    data.summary = summary.drop("key")
    if replay is not None:
        if since is None:
            # The alert rules read the same samples: from memory, joined back to their names.
            samples = partial(_samples_of, compact, names)
            data.alerts = _sorted(replay(samples, set(summary["metric"].to_list()), run_ends(runs)))
        else:
            data.alerts = _replay_stored(replay, metrics_dir, runs, since)
    if not summary.height:
        return data
    data.series = series
    energy = _energy(compact, summary).collect()
    del compact

    bounds = summary.group_by("run").agg(pl.col("first_time").min().alias("t0"), pl.col("last_time").max().alias("t1"))
    charted = lf.filter(pl.col("group").is_in(sorted(wanted_groups)))
    hist_metrics = [m.name for m in catalog.METRICS if m.kind == "histogram"]
    raw_latency = charted.filter(pl.col("metric").is_in(hist_metrics) & ~pl.col("labels").str.contains('"quantile"'))
    queries = [
        _by_step(charted.filter(pl.col("group") == "training"), buckets),
        _latency_quantiles(raw_latency, bounds, max(buckets // 8, 20)),
        _histogram(raw_latency, data.summary),
        _validation(lf.filter(pl.col("group").is_in(["training", "custom"]))),
    ]
    queries.append(charted.filter(pl.col("metric").is_in(buckets_of.bucket_metrics())))
    (data.steps, data.quantiles, data.histogram, validation, scraped) = pl.collect_all(queries, engine="streaming")
    over_time, data.latency, bars = buckets_of.tables(
        scraped.select("run", "metric", "labels", "time", "value"), bounds, max(buckets // 8, 20)
    )
    data.quantiles = pl.concat([data.quantiles, over_time.cast(_QUANTILE_SCHEMA)])  # type: ignore[arg-type]
    data.histogram = pl.concat([data.histogram, bars])
    # The stored parts of a histogram are read through it, never charted or summarised as series of their own.
    parts = [p for m in catalog.METRICS for p in catalog.histogram_parts(m.name)]
    data.summary = data.summary.filter(~pl.col("metric").is_in(parts))
    data.series = data.series.filter(~pl.col("metric").is_in(parts))
    data.energy = energy
    data.validation = _pivot_validation(validation)
    return data


def _samples_of(compact: pl.DataFrame, names: pl.DataFrame, metrics: set[str] | None) -> pl.LazyFrame:
    """The in-memory samples of these metrics (all without) with their names (store columns), for the rules."""
    import polars as pl

    named = names.select("key", "run", "metric", "labels", "host")
    if metrics is None:
        return compact.lazy().join(named.lazy(), on="key", how="inner", maintain_order="left")
    named = named.filter(pl.col("metric").is_in(sorted(metrics)))
    # Why filter by key before the join: the rules need a few series of many; joining every sample costs double.
    picked = compact.lazy().filter(pl.col("key").is_in(named["key"].implode()))
    return picked.join(named.lazy(), on="key", how="inner", maintain_order="left")


def _sorted(spans: Iterable[AlertSpan]) -> list[AlertSpan]:
    return sorted(spans, key=lambda s: (s.start, s.rule))


def _in_window(spans: Iterable[AlertSpan], since: float | None) -> list[AlertSpan]:
    """Spans still firing at or after ``since`` (all of them without a window)."""
    return _sorted(s for s in spans if since is None or s.end is None or s.end >= since)


def _replay_stored(replay: AlertReplay, metrics_dir: Path, runs: list[RunInfo], since: float) -> list[AlertSpan]:
    """Alerts of a windowed report: replayed over the runs' whole samples (a second read), kept if in the window."""
    import polars as pl

    lf, _skipped = scan_samples(metrics_dir, runs=[r.id for r in runs])
    if lf is None:
        return []

    def samples(metrics: set[str] | None) -> pl.LazyFrame:
        return lf if metrics is None else lf.filter(pl.col("metric").is_in(sorted(metrics)))

    return _in_window(replay(samples, None, run_ends(runs)), since)


_SUMMARY_SCHEMA: dict[str, Any] = {}
_SERIES_SCHEMA: dict[str, Any] = {}
_STEPS_SCHEMA: dict[str, Any] = {}
_QUANTILE_SCHEMA: dict[str, Any] = {}
_HIST_SCHEMA: dict[str, Any] = {}


def _init_schemas() -> None:
    """Fill the table schemas on first use (they need polars types, and polars is imported lazily)."""
    import polars as pl

    if _SUMMARY_SCHEMA:
        return

    ts = pl.Datetime("us", "UTC")
    _SUMMARY_SCHEMA.update(
        run=pl.String,
        group=pl.String,
        metric=pl.String,
        labels=pl.String,
        n=pl.UInt32,
        nonfinite=pl.UInt32,
        min=pl.Float64,
        mean=pl.Float64,
        p95=pl.Float64,
        max=pl.Float64,
        last=pl.Float64,
        first_time=ts,
        last_time=ts,
    )
    _SERIES_SCHEMA.update(
        run=pl.String,
        metric=pl.String,
        labels=pl.String,
        bucket=pl.Int64,
        time=ts,
        min=pl.Float64,
        mean=pl.Float64,
        max=pl.Float64,
        n=pl.UInt32,
        nonfinite=pl.UInt32,
    )
    _STEPS_SCHEMA.update(
        run=pl.String,
        metric=pl.String,
        labels=pl.String,
        step=pl.Int64,
        time=ts,
        min=pl.Float64,
        mean=pl.Float64,
        max=pl.Float64,
        nonfinite=pl.UInt32,
    )
    _QUANTILE_SCHEMA.update(
        run=pl.String, metric=pl.String, time=ts, p50=pl.Float64, p95=pl.Float64, p99=pl.Float64, n=pl.UInt32
    )
    _HIST_SCHEMA.update(run=pl.String, metric=pl.String, lo=pl.Float64, hi=pl.Float64, count=pl.UInt32)


def _key() -> pl.Expr:
    """One u64 per (run, metric, label set): grouping by it instead of three strings saves seconds and gigabytes."""
    import polars as pl

    return (pl.col("run").hash(11) ^ pl.col("metric").hash(23) ^ pl.col("labels").hash(37)).alias("key")


def _names(lf: pl.LazyFrame) -> pl.LazyFrame:
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

    _init_schemas()
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
        .select(*_SUMMARY_SCHEMA, "key")
        .cast(_SUMMARY_SCHEMA)  # type: ignore[arg-type]
    )
    series = (
        cols.with_columns(_mean(pl.col("sum"), pl.col("count")))
        .join(names.select("key", "run", "metric", "labels"), on="key", how="inner")
        .sort("run", "metric", "labels", "bucket")
        .select(list(_SERIES_SCHEMA))
        .cast(_SERIES_SCHEMA)  # type: ignore[arg-type]
    )
    return summary, series


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
        frame.with_columns(bucket.alias("bucket"))
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


def _by_step(lf: pl.LazyFrame, buckets: int) -> pl.LazyFrame:
    """Training metrics against step, cut into columns (the smoothed line is drawn from them: report.smoothing)."""
    import polars as pl

    keys = ["run", "metric", "labels"]
    ranged = (
        lf.filter(pl.col("step").is_not_null())
        .sort(*keys, "step", "time")
        .with_columns(
            pl.col("step").min().over(keys).alias("s0"),
            pl.col("step").max().over(keys).alias("s1"),
        )
        .with_columns(((pl.col("step") - pl.col("s0")) * buckets // (pl.col("s1") - pl.col("s0") + 1)).alias("b"))
    )
    v = _fv()
    return (
        _with_finite(ranged)
        .group_by(*keys, "b")
        .agg(
            pl.col("step").max().alias("step"),
            pl.col("time").max().alias("time"),
            v.min().alias("min"),
            v.mean().alias("mean"),
            v.max().alias("max"),
            _nonfinite(),
        )
        .drop("b")
        .sort(*keys, "step")
        .cast(_STEPS_SCHEMA)  # type: ignore[arg-type]
    )


def _latency_quantiles(lf: pl.LazyFrame, bounds: pl.DataFrame, buckets: int) -> pl.LazyFrame:
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
        .cast(_QUANTILE_SCHEMA)  # type: ignore[arg-type]
    )


def _histogram(lf: pl.LazyFrame, summary: pl.DataFrame) -> pl.LazyFrame:
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
        .cast(_HIST_SCHEMA)  # type: ignore[arg-type]
    )


MAX_GAP_S = 60.0


def _energy(compact: pl.DataFrame, summary: pl.DataFrame) -> pl.LazyFrame:
    """Wh per GPU: power integrated over time (trapezoids); gaps over a minute (recorder stopped) count as zero."""
    import polars as pl

    power = summary.filter(pl.col("metric") == "gpu_power").select("key", "run", "labels")
    dt = pl.col("time").diff().dt.total_microseconds().over("key") / 1e6
    return (
        compact.lazy()
        .filter(pl.col("key").is_in(power["key"].implode()) & pl.col("value").is_finite())
        .sort("key", "time")
        .with_columns(dt.alias("dt"), pl.col("value").shift(1).over("key").alias("prev"))
        .filter(pl.col("dt").is_not_null() & (pl.col("dt") <= MAX_GAP_S))
        .group_by("key")
        .agg((((pl.col("value") + pl.col("prev")) / 2 * pl.col("dt")).sum() / 3600.0).alias("wh"))
        .join(power.lazy(), on="key")
        .select("run", "labels", "wh")
        .sort("run", "labels")
    )


def _validation(lf: pl.LazyFrame) -> pl.LazyFrame:
    import polars as pl

    is_val = pl.col("metric").str.starts_with("validation_") | pl.col("metric").str.starts_with("eval_")
    return (
        lf.filter(is_val & pl.col("step").is_not_null())
        .group_by("run", "step", "metric")
        .agg(pl.col("value").get(pl.col("time").arg_max()).alias("value"))
    )


VALIDATION_ROWS = 20


def _pivot_validation(df: pl.DataFrame) -> pl.DataFrame:
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


def label_text(labels: str) -> str:
    """Stored label JSON -> ``gpu=0, reason=power`` for legends and tables."""
    return ", ".join(f"{k}={v}" if k else v for k, v in label_dict(labels).items())


def label_dict(labels: str) -> dict[str, str]:
    """Stored label JSON -> dict (a legend's raw material); text that is not JSON is one unnamed label."""
    import json

    if not labels:
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(labels).items()}
    except (ValueError, AttributeError):
        return {"": labels}
