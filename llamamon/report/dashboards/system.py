"""The System dashboard: host, process tree and GPUs."""

from __future__ import annotations

from llamamon import catalog
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.gpus import gpu_panels
from llamamon.report.dashboards.header import gpu_reason
from llamamon.report.dashboards.hosts import host_grid_panel, per_host
from llamamon.report.dashboards.model import Dashboard, Panel, Table, dashboard_for
from llamamon.report.dashboards.panels import has_metrics, metric_panel, panels_by_unit, pct, threshold_lines
from llamamon.report.dashboards.summary import summary_table
from llamamon.report.dashboards.values import display_unit, format_value, unit_of
from llamamon.report.data import label_text


def system_dashboard(ctx: Context) -> Dashboard:
    d = dashboard_for(ctx.data, "system")
    if d.empty:
        return d
    th = ctx.data.thresholds
    mem_lines = threshold_lines(th.memory_warning, "warning", pct) + threshold_lines(
        th.memory_critical, "critical", pct, "critical"
    )
    gpu_util = threshold_lines(th.gpu_utilization_min, "utilization_min", pct)
    gpu_mem = threshold_lines(th.gpu_memory_max, "memory_max", pct)
    # A job on many hosts: one small chart per host, not one line per host on one chart.
    grid = per_host(ctx)
    panel = host_grid_panel if grid else metric_panel
    cache = sorted(m for m in ctx.data.metrics() if "cache" in m and _in_system(m))
    candidates = [
        panel(ctx, "cpu", "CPU", ["cpu_usage"], ylim=(0, 1.02)),
        panel(ctx, "memory", "Memory", ["memory_usage", "swap_usage"], thresholds=mem_lines, ylim=(0, 1.02)),
        panel(ctx, "gpu-util", "GPU utilisation", ["gpu_utilization"], thresholds=gpu_util, ylim=(0, 1.02)),
        panel(ctx, "gpu-mem", "GPU memory", ["gpu_memory_usage"], thresholds=gpu_mem, ylim=(0, 1.02)),
        panel(ctx, "gpu-temp", "GPU temperature", ["gpu_temperature"]),
        panel(ctx, "gpu-power", "GPU power", ["gpu_power"], note=_energy_note(ctx)),
        panel(ctx, "gpu-clock", "GPU clocks", ["gpu_sm_clock", "gpu_memory_clock"]),
        panel(ctx, "gpu-throttle", "GPU clock events (throttling)", ["gpu_clock_event"], ylim=(-0.05, 1.05)),
        # A card per GPU for one or two hosts; a many-host job's GPUs are in the per-host grids above.
        *(gpu_panels(ctx) if not grid else ()),
        panel(ctx, "disk-io", "Disk I/O", ["disk_read_throughput", "disk_write_throughput"]),
        panel(ctx, "disk-usage", "Disk usage", ["disk_usage"], ylim=(0, 1.02)),
        panel(ctx, "network", "Network", _network_metrics(ctx)),
        panel(ctx, "proc-cpu", "Process tree CPU", ["process_cpu_usage"]),
        panel(ctx, "proc-rss", "Process tree memory (RSS)", ["process_memory_rss"]),
        panel(ctx, "proc-gpu", "Process tree GPU memory", ["gpu_process_memory_used"]),
        panel(ctx, "proc-io", "Process tree disk I/O", ["process_io_read_throughput", "process_io_write_throughput"]),
        *(_host_cache_panels(ctx, cache) if grid else panels_by_unit(ctx, "cache", "Cache", cache)),
    ]
    d.panels = [p for p in candidates if p is not None]
    if not has_metrics(ctx, "gpu_utilization", "gpu_memory_usage", "gpu_power"):
        d.facts.append(("GPU", gpu_reason(ctx.data.runs)))
    energy = _energy_table(ctx)
    if energy is not None:
        d.tables.append(energy)
    proc = _process_table(ctx)
    if proc is not None:
        d.tables.append(proc)
    d.tables.append(summary_table(ctx, ("system", "process", "gpu"), "System summary"))
    return d


def _host_cache_panels(ctx: Context, metrics: list[str]) -> list[Panel | None]:
    """The cache metrics per host, a grid per unit (as ``panels_by_unit`` gives one chart per unit)."""
    by_unit: dict[str, list[str]] = {}
    for m in metrics:
        by_unit.setdefault(display_unit(m), []).append(m)
    return [
        host_grid_panel(ctx, f"cache-{unit or 'other'}", f"Cache ({unit or 'other'})", ms)
        for unit, ms in sorted(by_unit.items())
    ]


def _network_metrics(ctx: Context) -> list[str]:
    """Received and sent when recorded apart (their sum would only repeat them), else the total."""
    split = [m for m in ("network_rx_throughput", "network_tx_throughput") if m in ctx.data.metrics()]
    return split or ["network_throughput"]


def _in_system(metric: str) -> bool:
    return catalog.group_of(metric) in {"system", "process", "gpu", "custom"}


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
