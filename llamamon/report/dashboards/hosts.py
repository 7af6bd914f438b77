"""The System dashboard's panels for a job on many hosts: one small chart per host (small_multiples.py).

Why from 3 hosts: two hosts overlaid are a comparison a reader can follow (``report --run a --run b`` of two
machines); from three on, a job's nodes are alike by design and what matters is the one that is not.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamamon.report import charts
from llamamon.report.charts import Axis, HLine, Line, Span
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Panel
from llamamon.report.dashboards.values import axis_label, charts_unit_label, unit_of
from llamamon.report.data import label_dict
from llamamon.report.small_multiples import Grid, render_grid

GRID_FROM_HOSTS = 3


def hosts_of(ctx: Context) -> list[str]:
    """The report's hosts, in node-rank order where the launcher gave one, else by name."""
    runs = sorted(ctx.data.runs, key=lambda r: (r.node_rank is None, r.node_rank or 0, r.host))
    return list(dict.fromkeys(r.host for r in runs))


def per_host(ctx: Context) -> bool:
    return len(hosts_of(ctx)) >= GRID_FROM_HOSTS


def host_grid_panel(
    ctx: Context,
    pid: str,
    title: str,
    metrics: Sequence[str],
    *,
    thresholds: Sequence[HLine] = (),
    ylim: tuple[float | None, float | None] = (None, None),
    note: str = "",
) -> Panel | None:
    """One small chart per host of ``metrics`` (one line per run, metric and label set on that host), every
    chart on the same axes; None when none of the metrics was recorded."""
    import polars as pl

    present = [m for m in metrics if m in ctx.data.metrics()]
    if not present:
        return None
    host_of = {r.id: r.host for r in ctx.data.runs}
    df = ctx.data.series.filter(pl.col("metric").is_in(present))
    cells: dict[str, list[Line]] = {host: [] for host in hosts_of(ctx)}
    kinds: dict[tuple[str, str], int] = {}  # (metric, labels) -> colour: gpu=0 is one colour in every cell
    for (metric, run, labels), part in df.group_by("metric", "run", "labels", maintain_order=True):
        kind = kinds.setdefault((str(metric), str(labels)), len(kinds))
        x = ctx.x_of(str(run), part["time"])
        line = Line(label="", x=x, y=part["mean"].to_numpy(), colour=charts.colour(kind))
        cells.setdefault(host_of.get(str(run), str(run)), []).append(line)
    if not any(cells.values()):
        return None
    unit = unit_of(present[0])
    ylabel = axis_label(present[0]) if len(present) == 1 else (charts_unit_label(unit) or present[0])
    grid = Grid(
        title=f"{title}, per host",
        axis=Axis(ylabel, unit, ylim=ylim),
        cells=[(host, lines) for host, lines in cells.items() if lines],
        thresholds=list(thresholds),
        xlabel=f"time since run start ({ctx.elapsed_unit})" if ctx.multi else "",
        xlim=ctx.xlim() if ctx.multi else None,
        legend=_legend(kinds, len(present) > 1),
        spans=_host_spans(ctx, present, host_of),
    )
    alt = f"{title}: {', '.join(present)} over time, one chart per host ({len(grid.cells)} hosts)"
    return Panel(pid, grid.title, ctx.image(pid, lambda: render_grid(grid, ctx.zone)), alt, note)


def _host_spans(ctx: Context, metrics: list[str], host_of: dict[str, str]) -> dict[str, list[Span]]:
    """Per host, the alert spans that concern ``metrics`` on its runs (elapsed x, as the cells); an alert
    of no particular run shades every cell."""
    rows = ctx.alert_rows()
    sel = rows.select(metrics)
    if not ctx.multi or not sel.any():
        return {}
    out: dict[str, list[Span]] = {}
    first = min(b[0] for b in ctx.bounds.values())
    for run, start, end, severity, label in zip(
        rows.run[sel], rows.start[sel], rows.end[sel], rows.severity[sel], rows.label[sel], strict=True
    ):
        t0 = ctx.bounds.get(run or "", (first, 0.0))[0]
        span = Span((start - t0) / ctx.elapsed_div, (end - t0) / ctx.elapsed_div, str(severity), str(label))
        for host in [host_of[run]] if run in host_of else set(host_of.values()):
            out.setdefault(host, []).append(span)
    return out


def _legend(kinds: dict[tuple[str, str], int], by_metric: bool) -> list[tuple[str, str]]:
    """What the colours mean, when a cell has more than one line kind (GPUs, rx/tx); at most 8 shown."""
    if len(kinds) < 2:
        return []
    texts = charts.legend_labels([label_dict(labels) for _, labels in kinds])
    out = []
    for ((metric, _labels), i), text in zip(kinds.items(), texts, strict=True):
        label = " · ".join(bit for bit in ((metric if by_metric else ""), text) if bit)
        out.append((label or metric, charts.colour(i)))
    return out[:8]
