"""Which charts and tables each dashboard shows, built from ``report.data`` tables into a render-ready model.

The model holds only strings and ``data:`` URIs, so the templates need no logic beyond loops and the
report can be re-themed with ``--template-dir`` without touching Python.
"""

from __future__ import annotations

import json
import shlex
import signal as _signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Literal

import numpy as np

from llamamon import catalog
from llamamon.report import charts
from llamamon.report.charts import Axis, Chart, HLine, Line, Span
from llamamon.report.data import DASHBOARD_GROUPS, AlertSpan, ReportData, label_dict, label_text, merge_intervals
from llamamon.samples import RunInfo
from llamamon.severity import SEVERITIES
from llamamon.units import format_bytes, format_duration

if TYPE_CHECKING:
    import polars as pl

ImageFormat = Literal["svg", "png"]


@dataclass(slots=True)
class Panel:
    id: str
    title: str
    image: str  # data: URI, or a relative file name in Markdown mode
    alt: str
    note: str = ""


@dataclass(slots=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    group_header: list[tuple[str, int]] = field(default_factory=list)  # (run, colspan) above columns
    note: str = ""


@dataclass(slots=True)
class Dashboard:
    id: str
    title: str
    empty: str = ""
    panels: list[Panel] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return not self.empty


HOW_TO_RECORD: dict[str, str] = {
    "system": "No system metrics recorded: run the job under `llamamon record -- CMD` to sample CPU, memory, "
    "disks, network, its process tree and GPUs.",
    "training": "No training metrics recorded: call `llamamon.log(loss=..., step=...)` from the training loop, "
    "or print HF-style `{'loss': ...}` lines under `llamamon record`.",
    "inference": "No inference metrics recorded: use `llamamon.InferenceMonitor` in the server, or point "
    "`scrape:` in monitoring.yaml at its /metrics endpoint.",
}

TITLES = {"system": "System", "training": "Training", "inference": "Inference"}


# ---------------------------------------------------------------------------------------------- values


def unit_of(metric: str) -> str:
    m = catalog.get(metric)
    return m.unit if m is not None else ""


def axis_label(metric: str) -> str:
    m = catalog.get(metric)
    return m.axis_label if m is not None else metric


def format_value(value: float | None, unit: str) -> str:
    """A number for a table cell, in the metric's unit; "–" for none, and NaN or inf said as such.

    Why NaN is written out: a loss that ended NaN is the figure people look for, not a blank.
    """
    if value is None:
        return "–"
    if not np.isfinite(value):
        return "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "bytes":
        return format_bytes(value)
    if unit == "bytes_per_second":
        return format_bytes(value) + "/s"
    if unit == "seconds":
        return format_duration(value)
    suffix = {
        "milliseconds": " ms",
        "celsius": " °C",
        "watts": " W",
        "joules": " J",
        "megahertz": " MHz",
        "cores": " cores",
        "per_second": "/s",
    }.get(unit, "")
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3e}{suffix}"
    return f"{value:,.4g}{suffix}" if abs(value) < 1e4 else f"{value:,.0f}{suffix}"


def format_time(ts: float | None, zone: tzinfo) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, tz=zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def run_status(run: RunInfo) -> tuple[str, str]:
    """(text, css class) for a run's outcome: exit code, signal, or still running / unknown."""
    if run.signal:
        try:
            name = _signal.Signals(run.signal).name
        except ValueError:
            name = f"signal {run.signal}"
        return f"killed by {name} (signal {run.signal})", "bad"
    if run.exit_code is not None:
        return (
            (f"succeeded (exit {run.exit_code})", "good")
            if run.exit_code == 0
            else (
                f"failed (exit {run.exit_code})",
                "bad",
            )
        )
    if run.end is None:
        return "running, or stopped without recording its end", "unknown"
    return "ended (no exit code recorded)", "unknown"


# ---------------------------------------------------------------------------------------------- context


@dataclass(slots=True)
class Context:
    """What every chart builder needs: data, the x mode, run bounds and how to encode figures."""

    data: ReportData
    zone: tzinfo
    fmt: ImageFormat
    emit: Callable[[str, object], str] | None  # (panel id, figure) -> image reference; None: draw no figure
    run_labels: dict[str, str]
    multi: bool
    bounds: dict[str, tuple[float, float]]
    elapsed_unit: str = "s"
    elapsed_div: float = 1.0
    since: float | None = None  # --since: the data starts here, not at the runs' starts
    _alert_rows: AlertRows | None = None

    def image(self, pid: str, draw: Callable[[], object]) -> str:
        """The panel's image reference from the figure ``draw`` makes; "" without drawing it when there is no ``emit``."""
        return "" if self.emit is None else self.emit(pid, draw())

    @property
    def x_mode(self) -> Literal["time", "elapsed"]:
        return "elapsed" if self.multi else "time"

    def x_of(self, run: str, times: pl.Series) -> np.ndarray:
        """Chart x for UTC times: datetimes for one run, time since each run's start for several."""
        t = times.to_numpy()
        if not self.multi:
            return t
        t0 = self.bounds.get(run, (0.0, 0.0))[0]
        return (t.astype("datetime64[us]").astype(np.int64) / 1e6 - t0) / self.elapsed_div

    def x_of_ts(self, run: str | None, ts: float) -> float | np.datetime64:
        if not self.multi:
            return np.datetime64(int(ts * 1e6), "us")
        t0 = self.bounds.get(run or "", (min(b[0] for b in self.bounds.values()), 0.0))[0]
        return (ts - t0) / self.elapsed_div

    def chart(self, title: str, axis: Axis, **kw: object) -> Chart:
        c = Chart(title=title, axis=axis, x_mode=self.x_mode, **kw)  # type: ignore[arg-type]
        c.x_unit = self.elapsed_unit
        if self.since is not None:
            c.x_origin = "run start, or window start for runs begun before it"
        c.xlim = self.xlim()
        return c

    def xlim(self) -> tuple[object, object] | None:
        """The report's common time range: first to last sample of the run, or 0 to the longest run."""
        if not self.bounds:
            return None
        if self.multi:
            return (0.0, max(b[1] - b[0] for b in self.bounds.values()) / self.elapsed_div)
        t0, t1 = next(iter(self.bounds.values()))
        pad = max((t1 - t0) * 0.005, 0.5)
        return (self.x_of_ts(None, t0 - pad), self.x_of_ts(None, t1 + pad))

    def spans_for(self, metrics: Iterable[str], extra_rules: Sequence[str] = ()) -> list[Span]:
        """Alert spans that concern these metrics, merged to what the chart can resolve."""
        rows = self.alert_rows()
        sel = rows.select(metrics, extra_rules)
        if not sel.any():
            return []
        start, end = rows.start[sel], rows.end[sel]
        if self.multi:
            first = min(b[0] for b in self.bounds.values())
            t0 = np.array([self.bounds.get(r or "", (first, 0.0))[0] for r in rows.run[sel].tolist()])
            return merge_span_arrays(
                (start - t0) / self.elapsed_div, (end - t0) / self.elapsed_div, rows.label[sel], rows.severity[sel]
            )
        if len(start) < 2:
            return [Span(_datetime64(a), _datetime64(b), sv, lb) for a, b, sv, lb in _rows(rows, sel, start, end)]
        # Why truncated to whole microseconds: the spans sit at datetime64[us] positions on the chart.
        x0, x1 = np.trunc(start * 1e6) / 1e6, np.trunc(end * 1e6) / 1e6
        merged = merge_span_arrays(x0, x1, rows.label[sel], rows.severity[sel])
        return [Span(_datetime64(sp.start), _datetime64(sp.end), sp.severity, sp.label) for sp in merged]

    def alert_rows(self) -> AlertRows:
        """The alerts as arrays, built once per report: every chart asks which of them concern it."""
        if self._alert_rows is None:
            self._alert_rows = AlertRows(self.data.alerts, self.bounds, self.multi)
        return self._alert_rows


def _datetime64(seconds: float) -> np.datetime64:
    return np.datetime64(int(seconds * 1e6), "us")


def _rows(rows: AlertRows, sel: np.ndarray, start: np.ndarray, end: np.ndarray) -> list[tuple[float, float, str, str]]:
    return list(zip(start.tolist(), end.tolist(), rows.severity[sel].tolist(), rows.label[sel].tolist(), strict=True))


class AlertRows:
    """Alert spans as numpy arrays, one row per (span, run it is drawn for), with open ends closed.

    Why: a week of flapping data gives tens of thousands of spans and every time chart asks which
    concern it; testing each span per chart in Python cost seconds. Whether a span concerns a metric
    depends only on its rule, severity, metrics and ``metric`` label, so that is decided once per
    such group and broadcast to the rows.
    """

    def __init__(self, alerts: Sequence[AlertSpan], bounds: dict[str, tuple[float, float]], multi: bool) -> None:
        groups: dict[tuple[str, str, tuple[str, ...], str | None], int] = {}
        self.examples: list[AlertSpan] = []
        gid: list[int] = []
        runs: list[str | None] = []
        start: list[float] = []
        end: list[float] = []
        still: list[bool] = []
        last_end = max((b[1] for b in bounds.values()), default=None)
        for a in alerts:
            key = (a.rule, a.severity, a.metrics, a.metric)
            g = groups.get(key)
            if g is None:
                g = groups[key] = len(self.examples)
                self.examples.append(a)
            for run in [a.run] if a.run else (list(bounds) if multi else [None]):
                if a.end is not None:
                    stop = a.end
                elif run is None:
                    stop = last_end if last_end is not None else a.start
                else:
                    stop = bounds.get(run, (a.start, a.start))[1]
                gid.append(g)
                runs.append(run)
                start.append(a.start)
                end.append(stop)
                still.append(a.end is None)
        self.gid = np.asarray(gid, dtype=np.int64)
        self.run = np.asarray(runs, dtype=object)
        self.start = np.asarray(start, dtype=float)
        self.end = np.asarray(end, dtype=float)
        self.open = np.asarray(still, dtype=bool)
        self.label = np.asarray([self.examples[g].rule for g in gid], dtype=object)
        self.severity = np.asarray([self.examples[g].severity for g in gid], dtype=object)

    def select(self, metrics: Iterable[str], extra_rules: Sequence[str] = ()) -> np.ndarray:
        """Rows whose span concerns one of ``metrics`` or whose rule name contains one of ``extra_rules``."""
        wanted = set(metrics)
        hit = np.asarray(
            [
                any(a.concerns(m) for m in wanted) or any(r in a.rule.lower() for r in extra_rules)
                for a in self.examples
            ],
            dtype=bool,
        )
        return hit[self.gid] if len(self.gid) else np.zeros(0, dtype=bool)


def merge_span_arrays(
    x0: np.ndarray, x1: np.ndarray, labels: np.ndarray, severities: np.ndarray, columns: int = 1500
) -> list[Span]:
    """Join spans of the same rule and severity closer than one chart column: flapping shows as one band.

    Groups come out in the order of their first span, each group's bands in x order.
    """
    if len(x0) < 2:
        return [
            Span(float(a), float(b), str(s), str(lbl)) for a, b, s, lbl in zip(x0, x1, severities, labels, strict=True)
        ]
    gap = (float(x1.max()) - float(x0.min())) / columns
    out: list[Span] = []
    keys = list(zip(severities.tolist(), labels.tolist(), strict=True))
    for severity, label in dict.fromkeys(keys):
        mask = (severities == severity) & (labels == label)
        for a, b in merge_interval_arrays(x0[mask], x1[mask], gap):
            out.append(Span(a, b, severity, label))
    return out


def merge_interval_arrays(starts: np.ndarray, ends: np.ndarray, gap: float) -> list[tuple[float, float]]:
    """``data.merge_intervals`` on arrays: sorted, intervals closer than ``gap`` joined."""
    if not len(starts):
        return []
    order = np.lexsort((ends, starts))
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] - reach[:-1] > gap
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(s) - 1)
    return list(zip(s[first].tolist(), reach[last].tolist(), strict=True))


def _series_lines(
    ctx: Context,
    metrics: Sequence[str],
    *,
    label_by_metric: bool = False,
    label_filter: str | None = None,
    keys: list[tuple[str, str]] | None = None,
) -> list[Line]:
    """One line per (metric, run, label set) from the bucketed series, colours cycling per line.

    ``keys``, when given, receives each line's (run, labels), in line order.
    """
    import polars as pl

    df = ctx.data.series.filter(pl.col("metric").is_in(list(metrics)))
    groups = [
        (i, key, part)
        for i, (key, part) in enumerate(df.group_by("metric", "run", "labels", maintain_order=True).__iter__())
        if label_filter is None or label_filter in key[2]
    ]
    legends = charts.legend_labels([label_dict(key[2]) for _, key, _ in groups])
    lines: list[Line] = []
    for (i, (metric, run, labels), part), legend in zip(groups, legends, strict=True):
        if keys is not None:
            keys.append((run, labels))
        bits = []
        if label_by_metric or len(metrics) > 1:
            bits.append(metric)
        if ctx.multi:
            bits.append(ctx.run_labels.get(run, run))
        if legend:
            bits.append(legend)
        lines.append(
            Line(
                label=" · ".join(bits),
                x=ctx.x_of(run, part["time"]),
                y=part["mean"].to_numpy(),
                lo=part["min"].to_numpy(),
                hi=part["max"].to_numpy(),
                colour=charts.colour(i),
            )
        )
    return lines


def _has(ctx: Context, *metrics: str) -> bool:
    return bool(ctx.data.metrics() & set(metrics))


def _panel(ctx: Context, pid: str, chart: Chart, alt: str, note: str = "") -> Panel:
    single = _single_values(chart)
    if single:
        why = "One value recorded per series, so the number is shown instead of a chart."
        image = ctx.image(pid, lambda: charts.value_card(chart.title, single, why))
        return Panel(pid, chart.title, image, f"{chart.title}: {'; '.join(' '.join(e) for e in single)}")
    return Panel(pid, chart.title, ctx.image(pid, lambda: charts.render_chart(chart, ctx.zone)), alt, note)


def _single_values(chart: Chart) -> list[tuple[str, str]]:
    """(what, value) per line when no line has two finite points (a curve needs two), else nothing."""
    points = [ln.y[np.isfinite(ln.y)] for ln in chart.lines]
    if not points or any(len(p) > 1 for p in points):
        return []
    return [
        (ln.label or chart.axis.ylabel, format_value(float(p[0]), chart.axis.unit) if len(p) else "–")
        for ln, p in zip(chart.lines, points, strict=True)
    ]


def _metric_panel(
    ctx: Context,
    pid: str,
    title: str,
    metrics: Sequence[str],
    *,
    thresholds: Sequence[HLine] = (),
    ylim: tuple[float | None, float | None] = (None, None),
    log: bool = False,
    note: str = "",
    unit: str | None = None,
    ylabel: str | None = None,
) -> Panel | None:
    present = [m for m in metrics if m in ctx.data.metrics()]
    if not present:
        return None
    lines = _series_lines(ctx, present)
    if not lines:
        return None
    unit = unit_of(present[0]) if unit is None else unit
    if ylabel is None:
        ylabel = axis_label(present[0]) if len(present) == 1 else (charts_unit_label(unit) or present[0])
    chart = ctx.chart(title, Axis(ylabel, unit, log=log, ylim=ylim))
    chart.lines = lines
    chart.thresholds = list(thresholds)
    chart.spans = ctx.spans_for(present)
    alt = f"{title}: {', '.join(present)} over time"
    return _panel(ctx, pid, chart, alt, note)


# Prometheus name suffix -> the unit of a series the catalog does not know (a scraped server's own).
_SUFFIX_UNITS = (
    ("_total", "count"),
    ("_perc", "ratio"),
    ("_ratio", "ratio"),
    ("_bytes", "bytes"),
    ("_seconds", "seconds"),
)


def display_unit(metric: str) -> str:
    """The catalog's unit, else one its Prometheus-style name says; ``count`` for counters, "" unknown."""
    if catalog.get(metric) is not None:
        return unit_of(metric)
    return next((unit for suffix, unit in _SUFFIX_UNITS if metric.endswith(suffix)), "")


def _panels_by_unit(ctx: Context, pid: str, title: str, metrics: Sequence[str]) -> list[Panel | None]:
    """One panel per unit among ``metrics``, so 20k-token counters and 0-2 % ratios get an axis each.

    A single unit keeps the plain id and title; otherwise each panel is ``<pid>-<unit>``, "<title> (<unit>)".
    """
    by_unit: dict[str, list[str]] = {}
    for m in metrics:
        if m in ctx.data.metrics():
            by_unit.setdefault(display_unit(m), []).append(m)
    panels = []
    for unit, group in sorted(by_unit.items()):
        axis_unit = unit if unit in catalog.UNITS else ""
        ylabel = "count (cumulative)" if unit == "count" and len(group) > 1 else None
        if len(by_unit) == 1:
            panels.append(_metric_panel(ctx, pid, title, group, unit=axis_unit, ylabel=ylabel))
            continue
        name = {"count": "counters", "": "other"}.get(unit) or charts_unit_label(unit) or unit
        panels.append(
            _metric_panel(ctx, f"{pid}-{unit or 'other'}", f"{title} ({name})", group, unit=axis_unit, ylabel=ylabel)
        )
    return panels


def charts_unit_label(unit: str) -> str:
    return catalog.UNITS[unit].axis_label if unit in catalog.UNITS else ""


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _ms(value: float) -> str:
    return f"{value:g} ms"


def _hline(
    value: float | None, name: str, fmt: Callable[[float], str] = "{:g}".format, severity: str = "warning"
) -> list[HLine]:
    """The threshold line for a configured value, or none when the threshold is unset."""
    return [] if value is None else [HLine(value, f"{name} {fmt(value)}", severity)]


# ---------------------------------------------------------------------------------------------- system


def system_dashboard(ctx: Context) -> Dashboard:
    d = Dashboard("system", TITLES["system"])
    if not ctx.data.has_group("system", "process", "gpu"):
        d.empty = HOW_TO_RECORD["system"]
        return d
    th = ctx.data.thresholds
    mem_lines = _hline(th.memory_warning, "warning", _pct) + _hline(th.memory_critical, "critical", _pct, "critical")
    gpu_util = _hline(th.gpu_utilization_min, "utilization_min", _pct)
    gpu_mem = _hline(th.gpu_memory_max, "memory_max", _pct)
    candidates = [
        _metric_panel(ctx, "cpu", "CPU", ["cpu_usage"], ylim=(0, 1.02)),
        _metric_panel(ctx, "memory", "Memory", ["memory_usage", "swap_usage"], thresholds=mem_lines, ylim=(0, 1.02)),
        _metric_panel(ctx, "gpu-util", "GPU utilisation", ["gpu_utilization"], thresholds=gpu_util, ylim=(0, 1.02)),
        _metric_panel(ctx, "gpu-mem", "GPU memory", ["gpu_memory_usage"], thresholds=gpu_mem, ylim=(0, 1.02)),
        _metric_panel(ctx, "gpu-temp", "GPU temperature", ["gpu_temperature"]),
        _metric_panel(ctx, "gpu-power", "GPU power", ["gpu_power"], note=_energy_note(ctx)),
        _metric_panel(ctx, "gpu-clock", "GPU clocks", ["gpu_sm_clock", "gpu_memory_clock"]),
        _metric_panel(ctx, "gpu-throttle", "GPU clock events (throttling)", ["gpu_clock_event"], ylim=(-0.05, 1.05)),
        _metric_panel(ctx, "disk-io", "Disk I/O", ["disk_read_throughput", "disk_write_throughput"]),
        _metric_panel(ctx, "disk-usage", "Disk usage", ["disk_usage"], ylim=(0, 1.02)),
        _metric_panel(ctx, "network", "Network", _network_metrics(ctx)),
        _metric_panel(ctx, "proc-cpu", "Process tree CPU", ["process_cpu_usage"]),
        _metric_panel(ctx, "proc-rss", "Process tree memory (RSS)", ["process_memory_rss"]),
        _metric_panel(ctx, "proc-gpu", "Process tree GPU memory", ["gpu_process_memory_used"]),
        _metric_panel(
            ctx, "proc-io", "Process tree disk I/O", ["process_io_read_throughput", "process_io_write_throughput"]
        ),
        *_panels_by_unit(
            ctx, "cache", "Cache", sorted(m for m in ctx.data.metrics() if "cache" in m and _in_system(m))
        ),
    ]
    d.panels = [p for p in candidates if p is not None]
    if not _has(ctx, "gpu_utilization", "gpu_memory_usage", "gpu_power"):
        d.facts.append(("GPU", _gpu_reason(ctx.data.runs)))
    energy = _energy_table(ctx)
    if energy is not None:
        d.tables.append(energy)
    proc = _process_table(ctx)
    if proc is not None:
        d.tables.append(proc)
    d.tables.append(summary_table(ctx, ("system", "process", "gpu"), "System summary"))
    return d


def _network_metrics(ctx: Context) -> list[str]:
    """Received and sent when recorded apart (their sum would only repeat them), else the total."""
    split = [m for m in ("network_rx_throughput", "network_tx_throughput") if m in ctx.data.metrics()]
    return split or ["network_throughput"]


def _in_system(metric: str) -> bool:
    return catalog.group_of(metric) in {"system", "process", "gpu", "custom"}


def _gpu_reason(runs: Sequence[RunInfo]) -> str:
    for r in runs:
        reason = r.gpu.get("reason") if isinstance(r.gpu, dict) else None
        if reason:
            return f"No GPU data: {reason}"
    return "No GPU data recorded (no NVIDIA GPU/driver seen, or recorded with --no-gpu)."


def _energy_note(ctx: Context) -> str:
    df = ctx.data.energy
    if not df.height:
        return ""
    total = float(df["wh"].sum())
    return f"Energy used (power integrated over time): {total:,.1f} Wh in total."


def _energy_table(ctx: Context) -> Table | None:
    df = ctx.data.energy
    if not df.height:
        return None
    rows = [
        [ctx.run_labels.get(r, r), label_text(lbl) or "all", f"{wh:,.2f} Wh"]
        for r, lbl, wh in df.select("run", "labels", "wh").iter_rows()
    ]
    return Table("GPU energy used", ["run", "GPU", "energy"], rows, note="Power integrated over time (trapezoids).")


PROCESS_METRICS = [
    "process_cpu_usage",
    "process_memory_rss",
    "gpu_process_memory_used",
    "process_tree_size",
    "process_threads",
    "process_io_read_throughput",
    "process_io_write_throughput",
]


def _process_table(ctx: Context) -> Table | None:
    import polars as pl

    s = ctx.data.summary.filter(
        pl.col("metric").is_in(
            ["process_cpu_usage", "process_memory_rss", "gpu_process_memory_used", "process_tree_size"]
        )
    )
    if not s.height:
        return None
    rows = []
    for run, metric, labels, mean, mx, last in s.select("run", "metric", "labels", "mean", "max", "last").iter_rows():
        unit = unit_of(metric)
        rows.append(
            [
                ctx.run_labels.get(run, run),
                label_text(labels) or "whole tree",
                metric,
                format_value(mean, unit),
                format_value(mx, unit),
                format_value(last, unit),
            ]
        )
    return Table("Job process tree", ["run", "process", "metric", "mean", "max", "last"], rows)


# ---------------------------------------------------------------------------------------------- training


def training_dashboard(ctx: Context) -> Dashboard:
    d = Dashboard("training", TITLES["training"])
    if not ctx.data.has_group("training"):
        d.empty = HOW_TO_RECORD["training"]
        return d
    th = ctx.data.thresholds
    panels: list[Panel | None] = []
    panels.append(_loss_panel(ctx))
    lr_th = _hline(th.learning_rate_min, "learning_rate_min")
    panels.append(_step_panel(ctx, "lr", "Learning rate", "learning_rate", log=True, thresholds=lr_th))
    panels.append(_step_panel(ctx, "grad-norm", "Gradient norm", "grad_norm"))
    tp = ["steps_per_second", "samples_per_second", "tokens_per_second"]
    for metric in tp:
        panels.append(_metric_panel(ctx, f"tp-{metric}", f"Throughput: {metric.replace('_', ' ')}", [metric]))
    util = _metric_panel(
        ctx,
        "train-gpu-util",
        "GPU utilisation (same time axis as throughput)",
        ["gpu_utilization"],
        ylim=(0, 1.02),
        thresholds=_hline(th.gpu_utilization_min, "utilization_min", _pct),
    )
    panels.append(util)
    d.panels = [p for p in panels if p is not None]
    if ctx.data.validation.height and len(ctx.data.validation.columns) > 2:
        d.tables.append(_validation_table(ctx))
    # The step is the x axis of these metrics, not one of them: its min/mean/p95 say nothing.
    d.tables.append(summary_table(ctx, ("training",), "Training summary", exclude=("step",)))
    return d


StepKey = tuple[str, str]  # (run, labels) of one curve against step


def _step_lines(ctx: Context, metric: str, *, smooth: bool) -> tuple[list[Line], list[StepKey]]:
    """Per curve a raw line (band: min-max per column) and, with ``smooth``, its smoothed line; and the curves' keys.

    The smoothed line (``report.smoothing``) is left out where its weight is 0 (too few points): it would
    only repeat the raw one. Every line of a curve has the curve's colour; the keys come in colour order.
    """
    import polars as pl

    from llamamon.report.smoothing import debiased_ema, smoothing_weight

    df = ctx.data.steps.filter(pl.col("metric") == metric)
    lines: list[Line] = []
    keys: list[StepKey] = []
    groups = list(df.group_by("run", "labels", maintain_order=True).__iter__())
    legends = charts.legend_labels([label_dict(labels) for (_run, labels), _part in groups])
    for i, (((run, labels), part), legend) in enumerate(zip(groups, legends, strict=True)):
        c = charts.colour(i)
        name = " · ".join(b for b in (ctx.run_labels.get(run, run) if ctx.multi else "", legend) if b)
        steps = part["step"].to_numpy().astype(float)
        marks = part.filter(pl.col("nonfinite") > 0)["step"].to_numpy().astype(float)
        mean = part["mean"].to_numpy()
        weight = smoothing_weight(len(mean)) if smooth else 0.0
        lines.append(
            Line(
                f"{name or metric} (raw)" if weight else (name or metric),
                steps,
                mean,
                part["min"].to_numpy(),
                part["max"].to_numpy(),
                colour=c,
                alpha=0.45 if weight else 1.0,
                width=0.9 if weight else 1.4,
                marks=marks if len(marks) else None,
            )
        )
        if weight:
            lines.append(Line(f"{name or metric} (smoothed)", steps, debiased_ema(mean, weight), colour=c, width=2.0))
        keys.append((run, labels))
    return lines, keys


def _time_to_step(ctx: Context, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import polars as pl

    df = ctx.data.steps.filter(pl.col("metric") == metric)
    out = {}
    for (run,), part in df.group_by("run", maintain_order=True).__iter__():
        t = part["time"].to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
        order = np.argsort(t)
        out[run] = (t[order], part["step"].to_numpy().astype(float)[order])
    return out


def _step_spans(ctx: Context, metric: str, rules: Sequence[str]) -> list[Span]:
    """Alert spans mapped from time onto the step axis, through the metric's own step/time pairs."""
    rows = ctx.alert_rows()
    sel = rows.select({metric}, rules)
    if not sel.any():
        return []
    picked: list[np.ndarray] = []
    x0: list[np.ndarray] = []
    x1: list[np.ndarray] = []
    for run, (t, s) in _time_to_step(ctx, metric).items():
        # This run's spans and those of no run; a span still open ends at the metric's last step.
        idx = np.flatnonzero(sel & np.asarray([r is None or r == run for r in rows.run.tolist()], dtype=bool))
        ends = np.where(rows.open[idx], t[-1], rows.end[idx])
        s0 = np.interp(rows.start[idx], t, s)
        picked.append(idx)
        x0.append(s0)
        x1.append(np.maximum(np.interp(ends, t, s), s0 + 1e-9))
    if not picked:
        return []
    idx = np.concatenate(picked)
    order = np.argsort(idx, kind="stable")  # span order, as the alerts came
    idx = idx[order]
    return merge_span_arrays(np.concatenate(x0)[order], np.concatenate(x1)[order], rows.label[idx], rows.severity[idx])


def _loss_panel(ctx: Context) -> Panel | None:
    import polars as pl

    metrics = ctx.data.metrics()
    if "loss" not in metrics and "validation_loss" not in metrics:
        return None
    th = ctx.data.thresholds
    stepped = ctx.data.steps.filter(pl.col("metric").is_in(["loss", "validation_loss"])).height > 0
    if not stepped:
        return _time_loss_panel(ctx)
    lines, keys = _step_lines(ctx, "loss", smooth=True)
    val, val_keys = _step_lines(ctx, "validation_loss", smooth=False)
    smoothed = any(ln.label.endswith(" (smoothed)") for ln in lines)
    chart = Chart("Loss by step", Axis("loss"), x_mode="step")
    chart.key = _loss_legend(lines, keys, val, val_keys, ctx.multi)
    chart.lines = lines + val
    chart.thresholds = _hline(th.validation_loss_max, "validation_loss_max")
    chart.spans = _step_spans(ctx, "loss", ("plateau", "nan")) + _step_spans(ctx, "validation_loss", ())
    chart.height = 3.4
    note = "Loss per step (band: min–max per column)"
    if smoothed:
        note += " and its debiased moving average, weighted by the number of points (as TensorBoard smooths)"
    note += "; validation loss dashed, in its run's colour." if val else "."
    if any(ln.marks is not None for ln in lines):
        note += " Red crosses mark steps where loss was NaN or infinite."
    return _panel(ctx, "loss", chart, "Training and validation loss by step", note)


def _time_loss_panel(ctx: Context) -> Panel | None:
    """Loss and validation loss against time, for runs that logged no step: colours and legend as by step."""
    keys: list[StepKey] = []
    val_keys: list[StepKey] = []
    lines = _series_lines(ctx, ["loss"], keys=keys)
    val = _series_lines(ctx, ["validation_loss"], keys=val_keys)
    for ln in lines:
        ln.label = ln.label or "loss"
    chart = ctx.chart("Loss", Axis("loss"))
    chart.key = _loss_legend(lines, keys, val, val_keys, ctx.multi)
    chart.lines = lines + val
    chart.thresholds = _hline(ctx.data.thresholds.validation_loss_max, "validation_loss_max")
    chart.spans = ctx.spans_for(["loss", "validation_loss"])
    note = "No step numbers were recorded, so loss is drawn against time"
    note += "; validation loss dashed, in its run's colour." if val else "."
    return _panel(ctx, "loss", chart, "Loss and validation loss over time", note)


def _loss_legend(
    lines: list[Line], keys: list[StepKey], val: list[Line], val_keys: list[StepKey], multi: bool
) -> list[Line]:
    """Give validation lines their run's colour and dashes; one legend entry per run and a style key (returned).

    Why: three runs with a raw, a smoothed and a validation line each made nine legend entries that said
    the same things thrice. One curve alone keeps its three self-describing entries instead.
    """
    colours = {key: charts.colour(i) for i, key in enumerate(keys)}
    by_run = {run: charts.colour(i) for i, (run, _labels) in reversed(list(enumerate(keys)))}
    spare = len(keys)
    for v, (run, labels) in zip(val, val_keys, strict=True):
        matched = colours.get((run, labels)) or by_run.get(run)
        if matched is None:
            matched = charts.colour(spare)
            spare += 1
        v.colour, v.style, v.width = matched, "o--", 1.3
        v.label = f"validation loss · {v.label}" if multi else "validation loss"
        v.legend = not ((run, labels) in colours or run in by_run) or (len(keys) == 1 and not multi)
    if len(keys) == 1 and not multi:
        return []
    key: list[Line] = []
    smoothed = [ln for ln in lines if ln.label.endswith(" (smoothed)")]
    for ln in lines:
        is_raw = ln.label.endswith(" (raw)")
        ln.legend = not is_raw
        ln.label = ln.label.removesuffix(" (raw)").removesuffix(" (smoothed)")
    empty = np.zeros(0)
    if smoothed:
        key.append(Line("raw", empty, empty, colour=charts.MUTED, width=0.9, alpha=0.45))
        key.append(Line("smoothed", empty, empty, colour=charts.MUTED, width=2.0))
    if any(not v.legend for v in val):
        key.append(Line("validation", empty, empty, colour=charts.MUTED, style="o--", width=1.3))
    return key


def _step_panel(
    ctx: Context, pid: str, title: str, metric: str, *, log: bool = False, thresholds: Sequence[HLine] = ()
) -> Panel | None:
    import polars as pl

    if metric not in ctx.data.metrics():
        return None
    if ctx.data.steps.filter(pl.col("metric") == metric).height == 0:
        return _metric_panel(ctx, pid, title, [metric], log=log, thresholds=thresholds)
    lines, _ = _step_lines(ctx, metric, smooth=False)
    chart = Chart(title, Axis(axis_label(metric), unit_of(metric), log=log), x_mode="step")
    chart.lines = lines
    chart.thresholds = list(thresholds)
    chart.spans = _step_spans(ctx, metric, ())
    return _panel(ctx, pid, chart, f"{title} by step")


def _validation_table(ctx: Context) -> Table:
    df = ctx.data.validation
    metric_cols = [c for c in df.columns if c not in ("run", "step")]
    cols = (["run"] if ctx.multi else []) + ["step", *metric_cols]
    rows = []
    for rec in df.iter_rows(named=True):
        row = [ctx.run_labels.get(rec["run"], rec["run"])] if ctx.multi else []
        row.append(f"{rec['step']:,}")
        row.extend(format_value(rec[c], unit_of(c)) for c in metric_cols)
        rows.append(row)
    return Table("Validation metrics", cols, rows, note=f"Last {len(rows)} evaluations per run.")


# ---------------------------------------------------------------------------------------------- inference


def inference_dashboard(ctx: Context) -> Dashboard:
    d = Dashboard("inference", TITLES["inference"])
    if not ctx.data.has_group("inference"):
        d.empty = HOW_TO_RECORD["inference"]
        return d
    th = ctx.data.thresholds
    panels: list[Panel | None] = [
        _latency_panel(ctx, "latency", "inference_latency", "Request latency"),
        _histogram_panel(ctx, "latency-hist", "inference_latency", "Latency distribution"),
        _latency_panel(ctx, "ttft", "time_to_first_token", "Time to first token"),
        _metric_panel(ctx, "requests", "Requests per second", ["batch_throughput"]),
        _metric_panel(ctx, "tokens", "Tokens per second", ["token_throughput"]),
        _metric_panel(ctx, "errors", "Error and timeout rate", ["error_rate", "timeout_rate"], ylim=(0, None)),
        _metric_panel(ctx, "cache-hit", "Cache hit rate", ["cache_hit_rate", "kv_cache_usage"], ylim=(0, 1.02)),
        _metric_panel(
            ctx,
            "queue",
            "Batch queue",
            ["batch_queue_size", "requests_running"],
            thresholds=_hline(th.batch_queue_max, "batch_queue_max"),
        ),
    ]
    d.panels = [p for p in panels if p is not None]
    d.tables.append(summary_table(ctx, ("inference",), "Inference summary"))
    return d


def _latency_panel(ctx: Context, pid: str, metric: str, title: str) -> Panel | None:
    import polars as pl

    th = ctx.data.thresholds
    thresholds = _hline(th.latency_max, "latency_max", _ms) if metric == "inference_latency" else []
    q = ctx.data.quantiles.filter(pl.col("metric") == metric)
    if not q.height:
        labelled = ctx.data.series.filter((pl.col("metric") == metric) & pl.col("labels").str.contains('"quantile"'))
        if not labelled.height:
            return None
        return _metric_panel(ctx, pid, title, [metric], thresholds=thresholds)
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
    return _panel(ctx, pid, chart, f"{title}: p50, p95 and p99 over time")


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


# ---------------------------------------------------------------------------------------------- alerts, summary


TIMELINE_ROWS = 40
ALERT_TABLE_ROWS = 100
SEVERITY_RANK = {sev: i for i, sev in enumerate(SEVERITIES)}


def alerts_section(ctx: Context) -> tuple[Panel | None, Table | None]:
    """A timeline with one row per alert instance (rule + labels + run) and a table of the same instances."""
    alerts = ctx.data.alerts
    if not alerts:
        return None, None
    bounds = ctx.bounds.values()
    start = min([a.start for a in alerts] + [b[0] for b in bounds])
    if ctx.since is not None and bounds:
        start = min(b[0] for b in bounds)  # alerts begun before the window are drawn from its start
    end = max([a.end or a.start for a in alerts] + [b[1] for b in bounds])
    instances: dict[tuple[str, str, str | None], list[AlertSpan]] = {}
    as_json: dict[tuple[tuple[str, str], ...], str] = {}  # a flapping alert repeats its label set thousands of times
    for a in alerts:
        text = as_json.get(a.labels)
        if text is None:
            text = as_json[a.labels] = _labels_json(a)
        instances.setdefault((a.rule, text, a.run), []).append(a)

    def firing(spans: list[AlertSpan]) -> float:
        return sum((s.end if s.end is not None else end) - s.start for s in spans)

    ranked = sorted(
        instances.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[1][0].severity, -1), -firing(kv[1]), kv[0][0])
    )
    gap = (end - start) / 1500
    rows = []
    for (rule, labels, run), spans in ranked[:TIMELINE_ROWS]:
        label = rule + (f" ({label_text(labels)})" if labels else "")
        if ctx.multi and run:
            label += f" · {ctx.run_labels.get(run, run)}"
        intervals = merge_intervals(((s.start, s.end if s.end is not None else end) for s in spans), gap)
        rows.append((label[:70], intervals, spans[0].severity, spans[-1].end is None))
    note = "Hatched bars are still firing at the end of the data."
    if len(ranked) > TIMELINE_ROWS:
        note += f" The {TIMELINE_ROWS} most severe and longest-firing of {len(ranked)} alert instances are shown."
    image = ctx.image("alert-timeline", lambda: charts.alert_timeline(rows, start, end, ctx.zone))
    panel = Panel("alert-timeline", "Alert timeline", image, "Alert firing spans", note)
    table_rows = []
    for (rule, labels, run), spans in ranked[:ALERT_TABLE_ROWS]:
        last = spans[-1]
        row = [ctx.run_labels.get(run or "", run or "")] if ctx.multi else []
        row += [
            last.severity,
            rule,
            label_text(labels),
            f"{len(spans):,}",
            format_time(spans[0].start, ctx.zone),
            format_time(last.end, ctx.zone) if last.end is not None else "still firing",
            format_duration(firing(spans)),
            last.summary,
        ]
        table_rows.append(row)
    cols = (["run"] if ctx.multi else []) + [
        "severity",
        "rule",
        "labels",
        "times fired",
        "first fired",
        "last resolved",
        "time firing",
        "summary (last)",
    ]
    table_note = f"{len(alerts):,} firing spans of {len(ranked):,} alert instances."
    if len(ranked) > ALERT_TABLE_ROWS:
        table_note += f" The first {ALERT_TABLE_ROWS} by severity and time firing are listed."
    return panel, Table("Alerts", cols, table_rows, note=table_note)


def _labels_json(a: AlertSpan) -> str:
    import json

    return json.dumps(dict(a.labels)) if a.labels else ""


STATS = ("min", "mean", "p95", "max", "last")


def summary_table(ctx: Context, groups: Sequence[str], title: str, exclude: Sequence[str] = ()) -> Table:
    """Min, mean, p95, max and last per metric but ``exclude``; several runs side by side, one column group per run."""
    import polars as pl

    s = ctx.data.summary.filter(pl.col("group").is_in(list(groups)) & ~pl.col("metric").is_in(list(exclude)))
    runs = [r.id for r in ctx.data.runs if r.id in set(s["run"].to_list())]
    keys = s.select("metric", "labels").unique(maintain_order=True).sort("metric", "labels")
    by = {
        (r, m, lbl): rec
        for r, m, lbl, rec in zip(s["run"], s["metric"], s["labels"], s.iter_rows(named=True), strict=False)
    }
    rows = []
    for metric, labels in keys.iter_rows():
        unit = unit_of(metric)
        row = [metric, label_text(labels)]
        for run in runs:
            rec = by.get((run, metric, labels))
            row.extend(format_value(rec[k] if rec else None, unit) for k in STATS)
        rows.append(row)
    cols = ["metric", "labels"] + list(STATS) * max(len(runs), 1)
    header = [(ctx.run_labels.get(r, r), len(STATS)) for r in runs] if ctx.multi else []
    note = ""
    bad = s.filter(pl.col("nonfinite") > 0)
    if bad.height:
        names = ", ".join(sorted(set(bad["metric"].to_list())))
        note = f"NaN or infinite values were left out of the statistics for: {names}."
    return Table(title, cols, rows, header, note)


# llamamon's own metrics (notification_failures, ...) are stored with the job's custom ones, but are not the job's.
OWN_METRICS = tuple(m.name for m in catalog.METRICS if m.group == "run")


def custom_table(ctx: Context) -> Table | None:
    if not ctx.data.has_group("custom"):
        return None
    table = summary_table(ctx, ("custom",), "Other metrics the job logged", exclude=OWN_METRICS)
    return table if table.rows else None


# ---------------------------------------------------------------------------------------------- header


def dashboard_order(selected: Sequence[str], data: ReportData) -> list[str]:
    """What the runs are about first: Training for a training run, Inference for a server, System after.

    Dashboards with data come before empty ones (whose hint is all they show); among them the order is
    training, inference, system, so a run that trained and served shows both before its host charts.
    """
    rank = {"training": 0, "inference": 1, "system": 2}
    return sorted(selected, key=lambda d: (not data.has_group(*DASHBOARD_GROUPS.get(d, (d,))), rank.get(d, len(rank))))


def run_header(run: RunInfo, data: ReportData, zone: tzinfo) -> dict[str, object]:
    status, cls = run_status(run)
    start = run.start or None
    end = run.end
    bounds = data.run_bounds.get(run.id)
    if end is None and bounds:
        end = bounds[1]
    duration = format_duration(end - run.start) if end is not None and run.start else "–"
    commit = run.git_commit or "–"
    if run.git_commit and run.git_dirty:
        commit += " (uncommitted changes)"
    return {
        "id": run.id,
        "name": run.name or run.id,
        "named": bool(run.name) and run.name != run.id,  # the id is then printed beside the name, else once
        "status": status,
        "status_class": cls,
        "start": format_time(start, zone),
        "duration": duration + ("" if run.end is not None else " so far"),
        "host": run.host or "–",
        "cpu": run.cpu_model or "–",
        "gpus": ", ".join(run.gpu_names) if run.gpu_names else _gpu_reason([run]),
        "command": shlex.join(run.command) if run.command else "–",
        "commit": commit,
        "tags": sorted(run.tags.items()),
        "config": config_items(run.config),
        "cwd": run.cwd,
    }


def config_items(config: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """The job's hyperparameters (``llamamon.init(config=...)``) as (dotted key, text) rows, nesting flattened."""
    rows: list[tuple[str, str]] = []
    for key, value in sorted(config.items()):
        if isinstance(value, dict) and value:
            rows.extend(config_items(value, f"{prefix}{key}."))
        else:
            rows.append((prefix + key, value if isinstance(value, str) else json.dumps(value)))
    return rows


def alert_counts(alerts: Sequence[AlertSpan]) -> list[tuple[str, int, list[str]]]:
    """(severity, count, distinct rules) from most to least severe, for the header."""
    out = []
    for sev in reversed(SEVERITIES):
        rules = sorted({a.rule for a in alerts if a.severity == sev})
        n = sum(1 for a in alerts if a.severity == sev)
        if n:
            out.append((sev, n, rules))
    others = sorted({a.severity for a in alerts} - set(SEVERITIES))
    for sev in others:
        out.append(
            (sev, sum(1 for a in alerts if a.severity == sev), sorted({a.rule for a in alerts if a.severity == sev}))
        )
    return out


def build_context(
    ctx_data: ReportData,
    fmt: ImageFormat,
    emit: Callable[[str, object], str] | None,
    zone: tzinfo | None = None,
    since: float | None = None,
) -> Context:
    zone = zone or charts.local_zone()
    bounds = ctx_data.run_bounds
    multi = len(ctx_data.runs) > 1
    labels = {r.id: (r.name or r.id) for r in ctx_data.runs}
    if len(set(labels.values())) < len(labels):
        labels = {r.id: r.id for r in ctx_data.runs}
    longest = max((b[1] - b[0] for b in bounds.values()), default=0.0)
    unit, div = charts.elapsed_unit(longest)
    return Context(ctx_data, zone, fmt, emit, labels, multi, bounds, unit, div, since)
