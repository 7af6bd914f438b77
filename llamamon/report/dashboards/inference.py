"""The Inference dashboard: latency quantiles and histogram, throughput, errors, the batch queue."""

from __future__ import annotations

import numpy as np

from llamamon.report import charts
from llamamon.report.charts import Axis, HLine, Line
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Dashboard, Panel, dashboard_for
from llamamon.report.dashboards.panels import chart_panel, metric_panel, ms, threshold_lines
from llamamon.report.dashboards.summary import summary_table
from llamamon.report.dashboards.values import axis_label, unit_of


def inference_dashboard(ctx: Context) -> Dashboard:
    d = dashboard_for(ctx.data, "inference")
    if d.empty:
        return d
    th = ctx.data.thresholds
    panels: list[Panel | None] = [
        _latency_panel(ctx, "latency", "inference_latency", "Request latency"),
        _histogram_panel(ctx, "latency-hist", "inference_latency", "Latency distribution"),
        _latency_panel(ctx, "ttft", "time_to_first_token", "Time to first token"),
        _latency_panel(ctx, "itl", "inter_token_latency", "Inter-token latency"),
        _latency_panel(ctx, "tpot", "request_time_per_output_token", "Time per output token, per request"),
        metric_panel(ctx, "requests", "Requests per second", ["batch_throughput"]),
        metric_panel(ctx, "tokens", "Tokens per second", ["token_throughput"]),
        metric_panel(ctx, "errors", "Error and timeout rate", ["error_rate", "timeout_rate"], ylim=(0, None)),
        metric_panel(ctx, "cache-hit", "Cache hit rate", ["cache_hit_rate", "kv_cache_usage"], ylim=(0, 1.02)),
        metric_panel(
            ctx,
            "queue",
            "Batch queue",
            ["batch_queue_size", "requests_running"],
            thresholds=threshold_lines(th.batch_queue_max, "batch_queue_max"),
        ),
    ]
    d.panels = [p for p in panels if p is not None]
    d.tables.append(summary_table(ctx, ("inference",), "Inference summary"))
    return d


def _latency_panel(ctx: Context, pid: str, metric: str, title: str) -> Panel | None:
    import polars as pl

    th = ctx.data.thresholds
    thresholds = threshold_lines(th.latency_max, "latency_max", ms) if metric == "inference_latency" else []
    q = ctx.data.quantiles.filter(pl.col("metric") == metric)
    if not q.height:
        labelled = ctx.data.series.filter((pl.col("metric") == metric) & pl.col("labels").str.contains('"quantile"'))
        if not labelled.height:
            return None
        return metric_panel(ctx, pid, title, [metric], thresholds=thresholds)
    chart = ctx.chart(title, Axis(axis_label(metric), unit_of(metric)))
    styles = {"p50": ("-", 1.6), "p95": ("--", 1.4), "p99": (":", 1.6)}
    for i, ((run,), part) in enumerate(q.group_by("run", maintain_order=True).__iter__()):
        for j, (col, (style, width)) in enumerate(styles.items()):
            name = f"{col}{(' · ' + ctx.run_labels.get(run, run)) if ctx.multi else ''}"
            c = charts.colour(i) if ctx.multi else charts.colour(j)
            chart.lines.append(
                Line(name, ctx.x_of(run, part["time"]), part[col].to_numpy(), colour=c, style=style, width=width)
            )
    chart.thresholds = thresholds
    chart.spans = ctx.spans_for([metric], ("latency",))
    return chart_panel(ctx, pid, chart, f"{title}: p50, p95 and p99 over time")


def _histogram_panel(ctx: Context, pid: str, metric: str, title: str) -> Panel | None:
    import polars as pl

    h = ctx.data.histogram.filter(pl.col("metric") == metric)
    if not h.height:
        return None
    groups = []
    for (run,), part in h.group_by("run", maintain_order=True).__iter__():
        groups.append(
            (
                ctx.run_labels.get(run, run),
                part["lo"].to_numpy(),
                part["hi"].to_numpy(),
                part["count"].to_numpy().astype(float),
            )
        )
    th = ctx.data.thresholds
    marker = HLine(th.latency_max, f"latency_max {th.latency_max:g} ms") if th.latency_max is not None else None
    image = ctx.image(pid, lambda: charts.bar_histogram(title, _aligned(groups), axis_label(metric), marker))
    latency = ctx.data.latency
    if latency is not None and metric in set(latency["metric"].to_list()):
        # Bars of a scraped histogram are its own buckets: the +Inf one has no bound to draw.
        note = "Bars are the server's buckets; requests above its last finite bound are not drawn."
    else:
        note = "Values above 1.5 × p95 fall in the last bin."
    return Panel(pid, title, image, f"Histogram of {metric}", note)


def _aligned(groups: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> list[tuple[str, ...]]:
    """Put every run's counts on the common bin edges (runs share the metric's bins)."""
    if not groups:
        return []
    lows = np.unique(np.concatenate([g[1] for g in groups]))
    width = np.median(np.diff(lows)) if len(lows) > 1 else 1.0
    out = []
    for label, lo, _hi, counts in groups:
        full = np.zeros(len(lows))
        idx = np.searchsorted(lows, lo)
        full[idx] = counts
        out.append((label, lows, lows + width, full))
    return out  # type: ignore[return-value]
