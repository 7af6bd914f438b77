"""What a report shows, read from the store: the small tables each dashboard draws (``report.tables``), the
alert spans and the thresholds.

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
from llamamon.report import tables
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
    straggler_ratio: float | None = 1.25  # the straggler view's limit, the training_straggler rule's too


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
        straggler_ratio=pick("training", "straggler_ratio", base.straggler_ratio),
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


def _empty(schema: dict[str, Any]) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema=schema)


def load_report_data(
    metrics_dir: Path,
    runs: list[RunInfo],
    dashboards: Iterable[str] = DASHBOARDS,
    alerts: Iterable[AlertSpan] | AlertReplay | None = (),
    thresholds: Thresholds | None = None,
    buckets: int = tables.BUCKETS,
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
    schema = tables.schemas()
    run_ids = [r.id for r in runs]
    lf, skipped = scan_samples(metrics_dir, runs=run_ids, since=since)
    wanted_groups = {g for d in dashboards for g in DASHBOARD_GROUPS.get(d, ())}
    data = ReportData(
        runs=runs,
        skipped=skipped,
        summary=_empty(schema["summary"]),
        series=_empty(schema["series"]),
        steps=_empty(schema["steps"]),
        quantiles=_empty(schema["quantiles"]),
        histogram=_empty(schema["histogram"]),
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
    lf = lf.select("time", "metric", "value", "labels", "step", "group", "run", "host").with_columns(
        tables.series_key()
    )
    # One read of every sample into 24 bytes a row (key, time, value); summaries and chart columns are computed
    # from it in memory instead of re-decoding the Parquet files and hashing strings once per statistic.
    compact, names = pl.collect_all(
        [
            lf.select("key", "time", "value"),
            tables.series_names(lf),
        ],
        engine="streaming",
    )
    summary, series = tables.summarize(compact, names, buckets)
    data.summary = summary.drop("key")
    recorded = set(summary["metric"].to_list())
    if replay is not None:
        if since is None:
            # The alert rules read the same samples: from memory, joined back to their names. No name keeps the
            # function (and so the samples) once the rules are done: ``del compact`` below must free them.
            data.alerts = _sorted(replay(partial(_samples_of, compact, names), recorded, run_ends(runs)))
        else:
            data.alerts = _replay_stored(replay, metrics_dir, runs, since)
    if not summary.height:
        return data
    data.series = series
    energy = tables.energy(compact, summary).collect()
    del compact

    bounds = summary.group_by("run").agg(pl.col("first_time").min().alias("t0"), pl.col("last_time").max().alias("t1"))
    # Why each query only over metrics the summary lists (none at all without one): every query is a pass over
    # the files' metric column, and most jobs record no histogram, no validation metric and no stored buckets.
    charted = lf.filter(pl.col("group").is_in(sorted(wanted_groups)))
    hist_metrics = sorted(m.name for m in catalog.METRICS if m.kind == "histogram" and m.name in recorded)
    raw_latency = _only_if(
        charted.filter(pl.col("metric").is_in(hist_metrics) & ~pl.col("labels").str.contains('"quantile"')),
        bool(hist_metrics),
    )
    evaluated = any(m.startswith(("validation_", "eval_")) for m in recorded)
    stored_buckets = sorted(recorded.intersection(buckets_of.bucket_metrics()))
    queries = [
        tables.by_step(charted.filter(pl.col("group") == "training"), names, buckets),
        tables.latency_quantiles(raw_latency, bounds, max(buckets // 8, 20)),
        tables.histogram(raw_latency, data.summary),
        tables.validation(_only_if(lf.filter(pl.col("group").is_in(["training", "custom"])), evaluated)),
    ]
    queries.append(_only_if(charted.filter(pl.col("metric").is_in(stored_buckets)), bool(stored_buckets)))
    (data.steps, data.quantiles, data.histogram, validation, scraped) = pl.collect_all(queries, engine="streaming")
    over_time, data.latency, bars = buckets_of.tables(
        scraped.select("run", "metric", "labels", "time", "value"), bounds, max(buckets // 8, 20)
    )
    data.quantiles = pl.concat([data.quantiles, over_time.cast(schema["quantiles"])])  # type: ignore[arg-type]
    data.histogram = pl.concat([data.histogram, bars])
    # The stored parts of a histogram are read through it, never charted or summarised as series of their own.
    parts = [p for m in catalog.METRICS for p in catalog.histogram_parts(m.name)]
    data.summary = data.summary.filter(~pl.col("metric").is_in(parts))
    data.series = data.series.filter(~pl.col("metric").is_in(parts))
    data.energy = energy
    data.validation = tables.pivot_validation(validation)
    return data


def _only_if(frame: pl.LazyFrame, needed: bool) -> pl.LazyFrame:
    """``frame``, or an empty frame of its schema that reads nothing where its rows are known to be none."""
    import polars as pl

    return frame if needed else pl.LazyFrame(schema=frame.collect_schema())


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
