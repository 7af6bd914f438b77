"""The System dashboard's GPU cards: a panel per device, its strips on scales every card shares.

A card shows what says whether a GPU did its share: utilisation and memory, power against its limit,
temperature, PCIe/NVLink traffic, and the clock-event (throttle) reasons as a band on the same time axis,
so a drop in utilisation lines up with the power cap or the heat that caused it. The band's rows are the
reasons seen on any GPU, in the same order on every card, so the cards compare row for row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llamamon.report import charts
from llamamon.report.charts import Line
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Panel
from llamamon.report.gpu_charts import SHORT, BandRow, Card, Strip, render_card

if TYPE_CHECKING:
    import polars as pl

# (strip title, unit, [(metric, legend)], reference metric drawn dashed or None)
STRIPS: tuple[tuple[str, str, tuple[tuple[str, str], ...], str | None], ...] = (
    ("utilisation · memory", "ratio", (("gpu_utilization", "utilisation"), ("gpu_memory_usage", "memory")), None),
    ("power vs limit", "watts", (("gpu_power", "power"),), "gpu_power_limit"),
    ("temperature", "celsius", (("gpu_temperature", "temperature"),), None),
    (
        "PCIe / NVLink (all links)",
        "bytes_per_second",
        (
            ("gpu_pcie_rx_throughput", "PCIe rx"),
            ("gpu_pcie_tx_throughput", "PCIe tx"),
            ("gpu_nvlink_rx_throughput", "NVLink rx"),
            ("gpu_nvlink_tx_throughput", "NVLink tx"),
        ),
        None,
    ),
)
CAUSES = {
    "sw_power_cap": "power",
    "hw_power_brake_slowdown": "power",
    "sw_thermal_slowdown": "thermal",
    "hw_thermal_slowdown": "thermal",
}
STYLES = ("-", "--", ":", "-.")  # a strip's metrics apart when colours tell runs apart
IDLE = "gpu_idle"  # clocks down because there is no work: not a throttle, and on at every pause
CARD_METRICS = [m for _, _, ms, _ in STRIPS for m, _ in ms] + ["gpu_power_limit", "gpu_clock_event"]


def gpu_panels(ctx: Context) -> list[Panel]:
    """One card per GPU index recorded, in index order; none when no GPU was recorded."""
    import polars as pl

    df = ctx.data.series.filter(pl.col("metric").is_in(CARD_METRICS)).with_columns(
        gpu=pl.col("labels").str.json_path_match("$.gpu"), reason=pl.col("labels").str.json_path_match("$.reason")
    )
    df = df.filter(pl.col("gpu").is_not_null())
    gpus = sorted(set(df["gpu"].to_list()), key=lambda g: (len(g), g))
    if not gpus:
        return []
    strips = [s for s in STRIPS if df.filter(pl.col("metric").is_in([m for m, _ in s[2]])).height]
    limits = {title: _shared_ylim(df, unit, metrics, ref) for title, unit, metrics, ref in strips}
    reasons = _reasons_seen(df)
    panels = []
    for gpu in gpus:
        part = df.filter(pl.col("gpu") == gpu)
        card = Card(
            _title(ctx, gpu),
            [_strip(ctx, part, s, limits[s[0]]) for s in strips],
            _band(ctx, part, reasons),
            ctx.x_mode,
            _x_label(ctx),
            ctx.xlim(),
            [(ctx.run_labels.get(r, r), charts.colour(k)) for k, r in enumerate(ctx.run_labels)] if ctx.multi else [],
        )
        pid = f"gpu-{gpu}"
        shown = ", ".join(s[0] for s in strips)
        alt = f"{card.title}: {shown} and throttle reasons over time"
        # The short title: the Markdown summary lists panel titles joined by " · ", which the card's own uses.
        panels.append(Panel(pid, f"GPU {gpu}", ctx.image(pid, lambda c=card: render_card(c, ctx.zone)), alt))
    return panels


def _title(ctx: Context, gpu: str) -> str:
    """``GPU 3 · NVIDIA H100 80GB HBM3 · PCIe Gen5 x16``; a link that ran narrower than it can is said."""
    import polars as pl

    bits = [f"GPU {gpu}"]
    names = ctx.data.runs[0].gpu_names if ctx.data.runs else []
    if gpu.isdigit() and int(gpu) < len(names):
        bits.append(names[int(gpu)])
    s = ctx.data.summary.filter(pl.col("labels").str.json_path_match("$.gpu") == gpu)
    figure = {
        m: s.filter(pl.col("metric") == m)
        for m in ("gpu_pcie_link_gen_max", "gpu_pcie_link_width", "gpu_pcie_link_width_max")
    }
    if all(f.height for f in figure.values()):
        gen = int(figure["gpu_pcie_link_gen_max"]["max"].max())
        low, top = int(figure["gpu_pcie_link_width"]["min"].min()), int(figure["gpu_pcie_link_width_max"]["max"].max())
        bits.append(f"PCIe Gen{gen} x{top}" if low >= top else f"PCIe Gen{gen} ran at x{low} of x{top}")
    return " · ".join(bits)


def _x_label(ctx: Context) -> str:
    if ctx.x_mode == "time":
        return f"local time ({charts.zone_label(ctx.zone)})"
    return f"time since run start ({ctx.elapsed_unit})"


def _shared_ylim(
    df: pl.DataFrame, unit: str, metrics: tuple[tuple[str, str], ...], ref: str | None
) -> tuple[float, float]:
    """The strip's y range over every GPU's card, so equal heights mean equal values across cards."""
    import polars as pl

    if unit == "ratio":
        return (0.0, 1.02)
    names = [m for m, _ in metrics] + ([ref] if ref else [])
    rows = _summed_links(df.filter(pl.col("metric").is_in(names)))
    hi = rows["max"].drop_nans().max() if rows.height else None
    lo = rows["min"].drop_nans().min() if rows.height else None
    top = float(hi) if isinstance(hi, int | float) and np.isfinite(hi) else 1.0
    if unit == "celsius":
        bottom = float(lo) if isinstance(lo, int | float) else 0.0
        return (max(0.0, bottom - 5.0), top + 5.0)
    return (0.0, max(top * 1.08, 1e-9))


def _summed_links(df: pl.DataFrame) -> pl.DataFrame:
    """NVLink series summed over links per (run, GPU, time): one line per direction, not one per link."""
    import polars as pl

    keys = ["metric", "run", "gpu", "time"]
    nvlink = df.filter(pl.col("metric").str.starts_with("gpu_nvlink_"))
    if not nvlink.height:
        return df
    summed = nvlink.group_by(keys, maintain_order=True).agg(pl.col("mean", "min", "max").sum())
    return pl.concat([df.filter(~pl.col("metric").str.starts_with("gpu_nvlink_")), summed], how="diagonal_relaxed")


def _strip(
    ctx: Context,
    part: pl.DataFrame,
    spec: tuple[str, str, tuple[tuple[str, str], ...], str | None],
    ylim: tuple[float, float],
) -> Strip:
    title, unit, metrics, ref = spec
    strip = Strip(title, unit, ylim=ylim)
    rows = _summed_links(part)
    for i, (metric, legend) in enumerate(metrics):
        lines = _lines(ctx, rows, metric, legend, i)
        strip.lines += lines
        if ctx.multi and lines and len(metrics) > 1:
            strip.key.append(Line(legend, np.array([]), np.array([]), colour=charts.MUTED, style=STYLES[i]))
    if ref is not None:
        strip.limits = _lines(ctx, rows, ref, "limit", 0, band=False)
        for k, line in enumerate(strip.limits):
            line.colour, line.legend = charts.MUTED, k == 0
    return strip


def _lines(ctx: Context, rows: pl.DataFrame, metric: str, legend: str, i: int, *, band: bool = True) -> list[Line]:
    """One line per run of ``metric`` (the strip's ``i``-th) on this GPU.

    One run: a colour per metric, named in the strip's legend. Several: a colour per run (the card's legend,
    the same on every strip) and a line style per metric (the strip's grey key), so legends stay short.
    """
    import polars as pl

    out = []
    runs = list(ctx.run_labels)
    for run, series in rows.filter(pl.col("metric") == metric).sort("time").group_by("run", maintain_order=True):
        run_id = str(run[0])
        k = runs.index(run_id) if run_id in runs else 0
        out.append(
            Line(
                legend,
                ctx.x_of(run_id, series["time"]),
                series["mean"].to_numpy(),
                lo=series["min"].to_numpy() if band and not ctx.multi else None,
                hi=series["max"].to_numpy() if band and not ctx.multi else None,
                colour=charts.colour(k if ctx.multi else i),
                style=STYLES[i] if ctx.multi else "-",
                legend=not ctx.multi,
            )
        )
    return out


def _reasons_seen(df: pl.DataFrame) -> list[str]:
    """Throttle reasons on at some time on some GPU, power first, then heat, then the rest, by name."""
    import polars as pl

    events = df.filter((pl.col("metric") == "gpu_clock_event") & (pl.col("reason") != IDLE) & (pl.col("max") > 0))
    seen = set(events["reason"].drop_nulls().to_list())
    order = {"power": 0, "thermal": 1}
    return sorted(seen, key=lambda r: (order.get(CAUSES.get(r, ""), 2), r))


def _band(ctx: Context, part: pl.DataFrame, reasons: list[str]) -> list[BandRow]:
    import polars as pl

    rows = []
    events = part.filter(pl.col("metric") == "gpu_clock_event")
    for reason in reasons:
        for run, series in events.filter(pl.col("reason") == reason).sort("time").group_by("run", maintain_order=True):
            run_id = str(run[0])
            short = SHORT.get(reason, reason)
            name = f"{short} · {ctx.run_labels.get(run_id, run_id)}" if ctx.multi else short
            x = ctx.x_of(run_id, series["time"])
            rows.append(BandRow(name, CAUSES.get(reason, "other"), x, series["max"].to_numpy()))
    return rows
