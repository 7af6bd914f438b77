"""Chart panels every dashboard builds the same way: a metric's series over time, one panel per unit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llamamon import catalog
from llamamon.report import charts
from llamamon.report.charts import Axis, Chart, HLine, Line
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Panel
from llamamon.report.dashboards.values import axis_label, charts_unit_label, display_unit, format_value, unit_of
from llamamon.report.data import label_dict
from llamamon.report.rank_bands import MAX_LINES, time_band


def series_lines(
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


def has_metrics(ctx: Context, *metrics: str) -> bool:
    return bool(ctx.data.metrics() & set(metrics))


def chart_panel(ctx: Context, pid: str, chart: Chart, alt: str, note: str = "") -> Panel:
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


def metric_panel(
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
    lines, banded = _many_series(ctx, present)
    lines = lines or series_lines(ctx, present)
    if not lines:
        return None
    if banded:
        note = " ".join(bit for bit in (note, BAND_NOTE.format(n=banded)) if bit)
    unit = unit_of(present[0]) if unit is None else unit
    if ylabel is None:
        ylabel = axis_label(present[0]) if len(present) == 1 else (charts_unit_label(unit) or present[0])
    chart = ctx.chart(title, Axis(ylabel, unit, log=log, ylim=ylim))
    chart.lines = lines
    chart.thresholds = list(thresholds)
    chart.spans = ctx.spans_for(present)
    alt = f"{title}: {', '.join(present)} over time"
    return chart_panel(ctx, pid, chart, alt, note)


BAND_NOTE = (
    "{n} series: their median with the p10–p90 band, and dotted the lowest and highest value of any of them"
    " (the System dashboard's per-host charts show which host)."
)


def _many_series(ctx: Context, metrics: Sequence[str]) -> tuple[list[Line], int]:
    """One metric of more than MAX_LINES series (a job's 512 GPUs): its band lines and how many series, else none.

    x is computed for all rows at once (time since each run's start for several runs), not per series.
    """
    import polars as pl

    if len(metrics) != 1:
        return [], 0
    df = ctx.data.series.filter(pl.col("metric") == metrics[0])
    n = df.select("run", "labels").n_unique() if df.height else 0
    if n <= MAX_LINES:
        return [], 0
    if not ctx.multi:
        return time_band(df, df["time"].to_numpy(), n), n
    first = min(b[0] for b in ctx.bounds.values())
    starts = pl.DataFrame({"run": list(ctx.bounds), "t0": [b[0] for b in ctx.bounds.values()]})
    t0 = df.select("run").join(starts, on="run", how="left", maintain_order="left")["t0"].fill_null(first)
    seconds = df["time"].dt.epoch("us").cast(pl.Float64) / 1e6
    return time_band(df, ((seconds - t0) / ctx.elapsed_div).to_numpy(), n), n


def panels_by_unit(ctx: Context, pid: str, title: str, metrics: Sequence[str]) -> list[Panel | None]:
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
            panels.append(metric_panel(ctx, pid, title, group, unit=axis_unit, ylabel=ylabel))
            continue
        name = {"count": "counters", "": "other"}.get(unit) or charts_unit_label(unit) or unit
        panels.append(
            metric_panel(ctx, f"{pid}-{unit or 'other'}", f"{title} ({name})", group, unit=axis_unit, ylabel=ylabel)
        )
    return panels


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def ms(value: float) -> str:
    return f"{value:g} ms"


def threshold_lines(
    value: float | None, name: str, fmt: Callable[[float], str] = "{:g}".format, severity: str = "warning"
) -> list[HLine]:
    """The threshold line for a configured value, or none when the threshold is unset."""
    return [] if value is None else [HLine(value, f"{name} {fmt(value)}", severity)]
