"""Matplotlib figures for the report, built on ``Figure`` directly (no pyplot: no global state, no leaks).

Every chart is drawn from the small tables of ``report.data``; none sees raw samples. Output is an
``data:`` URI (SVG by default, PNG on request) so the HTML stays one file that never fetches anything,
and so text drawn from user data can never become markup in the page.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Literal

import matplotlib
import numpy as np
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

# Okabe & Ito (2008) colour-blind-safe palette, ordered for contrast on white (yellow last).
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
SEVERITY_COLOURS: dict[str, str] = {"critical": "#D55E00", "warning": "#E69F00", "info": "#56B4E9"}
INK = "#1f2328"
MUTED = "#59636e"
GRID = "#d8dee4"

WIDTH_IN = 9.6
HEIGHT_IN = 2.9
DPI = 110

RC = {
    # Text stays text in the SVG (a third faster to write, smaller); the browser draws it with the first of
    # these it has, and the generic family last, never a serif default.
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial", "Liberation Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 8.5,
    "axes.labelcolor": MUTED,
    "axes.edgecolor": GRID,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.6,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "llamamon",
    "lines.linewidth": 1.4,
}

XMode = Literal["time", "elapsed", "step"]


@dataclass(slots=True)
class Line:
    """One curve: centre values, an optional min..max band (spikes), and where values were NaN/inf."""

    label: str
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    colour: str = PALETTE[0]
    style: str = "-"
    width: float = 1.4
    alpha: float = 1.0
    marks: np.ndarray | None = None  # x positions of non-finite values
    legend: bool = True  # False: told apart by the chart's style key (raw, smoothed, validation) instead


@dataclass(frozen=True, slots=True)
class HLine:
    """A threshold from monitoring.thresholds, drawn as a labelled dashed line."""

    value: float
    label: str
    severity: str = "warning"


@dataclass(frozen=True, slots=True)
class Span:
    """An alert's firing span in the chart's x coordinates."""

    start: float | np.datetime64
    end: float | np.datetime64
    severity: str
    label: str = ""


@dataclass(slots=True)
class Axis:
    ylabel: str
    unit: str = ""
    log: bool = False
    ylim: tuple[float | None, float | None] = (None, None)


@dataclass(slots=True)
class Chart:
    """What one panel draws; ``render_chart`` turns it into a figure."""

    title: str
    axis: Axis
    lines: list[Line] = field(default_factory=list)
    thresholds: list[HLine] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    x_mode: XMode = "time"
    x_unit: str = "s"  # for elapsed: "s", "min" or "h"
    x_origin: str = "run start"  # for elapsed: what x = 0 is
    height: float = HEIGHT_IN
    xlim: tuple[object, object] | None = None  # shared by every time chart of a report, so they line up
    # What each line style means ("smoothed", "-"), as grey legend entries after the coloured ones: a chart
    # whose every run has a raw, a smoothed and a validation line then needs one entry per run, not three.
    key: list[Line] = field(default_factory=list)  # drawn as legend samples only, never as data


def local_zone() -> tzinfo:
    """The machine's local zone (honours $TZ), in which all chart times are shown."""
    zone = datetime.now().astimezone().tzinfo
    return zone if zone is not None else timezone.utc


def zone_label(zone: tzinfo | None = None) -> str:
    """``CET, UTC+01:00``: the zone name and offset shown under every time axis."""
    now = datetime.now(zone or local_zone())
    offset = now.strftime("%z")
    off = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    name = now.tzname() or ""
    return off if not name or name in {off, "UTC"} else f"{name}, {off}"


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def legend_labels(label_sets: Sequence[Mapping[str, str]]) -> list[str]:
    """Per series, the labels that tell it from the chart's other series (``gpu=1``), as legend text.

    Labels every series shares (a scraped server's ``instance`` and ``model_name``) say nothing about
    which line is which and made legends too long to fit, so they are left out; a chart's only series
    keeps all of its labels.
    """
    if len(label_sets) > 1:
        shared = set(label_sets[0].items()).intersection(*(s.items() for s in label_sets[1:]))
    else:
        shared = set()
    return [", ".join(f"{k}={v}" if k else v for k, v in s.items() if (k, v) not in shared) for s in label_sets]


def _si(v: float, _pos: object = None) -> str:
    """Compact tick label with three significant figures: 0.42, 3.1k, 1.2M."""
    if v == 0:
        return "0"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _unit_formatter(unit: str) -> FuncFormatter | PercentFormatter | None:
    if unit == "ratio":
        return PercentFormatter(xmax=1.0, decimals=0)
    if unit in {"watts", "joules", "per_second", "megahertz", "", "cores", "celsius", "milliseconds", "seconds"}:
        return FuncFormatter(_si)
    return None


BINARY = (("B", 1.0), ("KiB", 1024.0), ("MiB", 1024.0**2), ("GiB", 1024.0**3), ("TiB", 1024.0**4))


def binary_scale(peak: float) -> tuple[str, float]:
    """The binary unit (B … TiB) and divisor that keep a byte axis's largest value below 1024."""
    chosen = BINARY[0]
    for name, div in BINARY:
        if abs(peak) >= div:
            chosen = (name, div)
    return chosen


def _breaks(x: np.ndarray, *arrays: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Insert NaN where the x gap is far above the usual spacing, so a stopped recorder is not a ramp."""
    if len(x) < 3:
        return (x, *arrays)
    xs = x.astype("datetime64[us]").astype(np.int64) if np.issubdtype(x.dtype, np.datetime64) else x.astype(float)
    gaps = np.diff(xs)
    usual = np.median(gaps)
    cut = np.nonzero(gaps > max(usual * 6, 0))[0] + 1 if usual > 0 else np.array([], dtype=int)
    if not len(cut):
        return (x, *arrays)
    filler = np.datetime64("NaT") if np.issubdtype(x.dtype, np.datetime64) else np.nan
    out_x = np.insert(x, cut, filler)
    outs = [None if a is None else np.insert(a.astype(float), cut, np.nan) for a in arrays]
    return (out_x, *outs)


LEFT_IN = 0.95
RIGHT_IN = 0.25
BOTTOM_IN = 0.62
TITLE_IN = 0.36
LEGEND_ROW_IN = 0.22


def _figure(height: float, title: str, legend_rows: int = 0) -> tuple[Figure, matplotlib.axes.Axes]:
    """A figure with fixed margins in inches, so stacked charts share the same plot width and x positions.

    The title sits in its own row at the top left and the legend, if any, in rows between it and the plot,
    so neither can cover the other however many series there are.
    """
    height += LEGEND_ROW_IN * legend_rows
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    top = TITLE_IN + LEGEND_ROW_IN * legend_rows + 0.04
    fig.subplots_adjust(
        left=LEFT_IN / WIDTH_IN,
        right=1 - RIGHT_IN / WIDTH_IN,
        bottom=BOTTOM_IN / height,
        top=1 - top / height,
    )
    fig.text(
        LEFT_IN / WIDTH_IN, 1 - 0.1 / height, title, ha="left", va="top", fontsize=10, fontweight="bold", color=INK
    )
    return fig, fig.add_subplot()


def render_chart(chart: Chart, zone: tzinfo | None = None) -> Figure:
    """Draw one panel: bands, lines, thresholds, alert spans, unit-aware axes."""
    zone = zone or local_zone()
    entries = [ln.label for ln in chart.lines if ln.legend]
    entries += [f"{ln.label}: NaN/inf" for ln in chart.lines if ln.marks is not None and len(ln.marks)]
    entries += [k.label for k in chart.key]
    columns = legend_columns(entries)
    rows = 0 if len(entries) <= 1 else math.ceil(len(entries) / columns)
    with matplotlib.rc_context(RC):
        fig, ax = _figure(chart.height, chart.title, rows)
        _draw(ax, chart, zone, columns)
    return fig


LEGEND_COLUMNS = 4
LEGEND_WIDTH_IN = WIDTH_IN - LEFT_IN - RIGHT_IN
LEGEND_CHAR_IN = 0.072  # one character of the legend's 8 pt sans-serif, a wide one (digits, "=")
LEGEND_ENTRY_IN = 0.5  # the line sample and the space between columns
LEGEND_CHARS = int((LEGEND_WIDTH_IN - LEGEND_ENTRY_IN) / LEGEND_CHAR_IN)  # what one entry alone can show


def legend_columns(labels: Sequence[str]) -> int:
    """As many legend columns (at most LEGEND_COLUMNS) as the longest entry leaves room for in the width."""
    widest = min(max((len(t) for t in labels), default=0), LEGEND_CHARS) * LEGEND_CHAR_IN + LEGEND_ENTRY_IN
    return max(1, min(LEGEND_COLUMNS, len(labels), int(LEGEND_WIDTH_IN // widest)))


def _fit(label: str) -> str:
    """A legend entry cut to what fits in one row, with an ellipsis, rather than past the figure's edge."""
    return label if len(label) <= LEGEND_CHARS else label[: LEGEND_CHARS - 1] + "…"


def _draw(ax: matplotlib.axes.Axes, chart: Chart, zone: tzinfo, columns: int) -> None:
    labelled: set[str] = set()
    for span in chart.spans:
        shade = SEVERITY_COLOURS.get(span.severity, "#999999")
        ax.axvspan(span.start, span.end, color=shade, alpha=0.14, linewidth=0, zorder=0)  # type: ignore[arg-type]
        if span.label and span.label not in labelled:
            labelled.add(span.label)
            ax.annotate(
                span.label,
                xy=(span.start, 1.0),  # type: ignore[arg-type]
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=7.5,
                color=shade,
                zorder=5,
            )
    scale_name, scale = "", 1.0
    if chart.axis.unit in {"bytes", "bytes_per_second"} and not chart.axis.log:
        peak = max(
            (float(np.nanmax(np.abs(ln.hi if ln.hi is not None else ln.y))) for ln in chart.lines if len(ln.y)),
            default=0.0,
        )
        scale_name, scale = binary_scale(peak)
        if chart.axis.unit == "bytes_per_second":
            scale_name += "/s"
    for line in chart.lines:
        x, y, lo, hi = _breaks(
            line.x,
            line.y / scale,
            None if line.lo is None else line.lo / scale,
            None if line.hi is None else line.hi / scale,
        )
        if lo is not None and hi is not None and np.any(np.nan_to_num(hi - lo) > 0):
            ax.fill_between(x, lo, hi, color=line.colour, alpha=0.18 * line.alpha, linewidth=0, zorder=1)
        ax.plot(
            x,
            y,
            line.style,
            color=line.colour,
            linewidth=line.width,
            alpha=line.alpha,
            label=_fit(line.label) if line.legend else "_nolegend_",
            zorder=2,
        )
        if line.marks is not None and len(line.marks):
            ax.plot(
                line.marks,
                np.full(len(line.marks), 0.95),
                "x",
                color=SEVERITY_COLOURS["critical"],
                markersize=7,
                markeredgewidth=1.8,
                transform=ax.get_xaxis_transform(),
                label=_fit(f"{line.label}: NaN/inf"),
                zorder=4,
            )
    for th in chart.thresholds:
        style = (0, (5, 3)) if th.severity != "critical" else (0, (2, 2))
        ax.axhline(th.value, color=SEVERITY_COLOURS.get(th.severity, MUTED), linestyle=style, linewidth=1.2, zorder=3)
        ax.annotate(
            th.label,
            xy=(1.0, th.value),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=7.5,
            color=SEVERITY_COLOURS.get(th.severity, MUTED),
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0},
            zorder=5,
        )
    if chart.axis.log:
        ax.set_yscale("log")
    elif not scale_name:
        fmt = _unit_formatter(chart.axis.unit)
        if fmt is not None:
            ax.yaxis.set_major_formatter(fmt)
    lo_lim, hi_lim = chart.axis.ylim
    if lo_lim is not None or hi_lim is not None:
        ax.set_ylim(bottom=lo_lim, top=hi_lim)
    ylabel = chart.axis.ylabel
    if scale_name:
        ylabel = re.sub(r"\((bytes|bytes/s)\)$", f"({scale_name})", ylabel)
        if ylabel == chart.axis.ylabel:
            ylabel = f"{ylabel} ({scale_name})"
    ax.set_ylabel(ylabel)
    if chart.x_mode == "time":
        locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=10)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone, show_offset=True))
        ax.set_xlabel(f"local time ({zone_label(zone)})")
    elif chart.x_mode == "elapsed":
        ax.set_xlabel(f"time since {chart.x_origin} ({chart.x_unit})")
    else:
        ax.set_xlabel("step")
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
    for k in chart.key:
        ax.plot([], [], k.style, color=k.colour, linewidth=k.width, alpha=k.alpha, label=_fit(k.label))
    _handles, labels = ax.get_legend_handles_labels()
    if len(labels) > 1:
        ax.legend(
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncols=columns,
            borderaxespad=0.15,
            handlelength=1.6,
            columnspacing=1.6,
        )
    if chart.xlim is not None:
        ax.set_xlim(*chart.xlim)  # type: ignore[arg-type]
    else:
        ax.margins(x=0.01)


def value_card(title: str, entries: Sequence[tuple[str, str]], note: str) -> Figure:
    """A panel whose series have one point each: the numbers as text, not a dot on empty axes.

    ``entries``: (what, value as text) per series; ``note`` says why there is no curve.
    """
    height = max(1.2, 0.8 + 0.42 * len(entries))
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
        fig.text(LEFT_IN / WIDTH_IN, 1 - 0.1 / height, title, ha="left", va="top", fontsize=10, fontweight="bold")
        for i, (what, value) in enumerate(entries):
            y = 1 - (0.5 + 0.42 * i) / height
            fig.text(LEFT_IN / WIDTH_IN, y, value, ha="left", va="top", fontsize=16, fontweight="bold", color=INK)
            fig.text(0.42, y - 0.05 / height, what, ha="left", va="top", fontsize=9, color=MUTED)
        fig.text(1 - RIGHT_IN / WIDTH_IN, 0.06 / height, note, ha="right", va="bottom", fontsize=7.5, color=MUTED)
    return fig


def bar_histogram(
    title: str, groups: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], xlabel: str, marker: HLine | None
) -> Figure:
    """Overlaid step histograms, one per run: (label, bin lows, bin highs, counts)."""
    with matplotlib.rc_context(RC):
        fig, ax = _figure(HEIGHT_IN, title, math.ceil(len(groups) / LEGEND_COLUMNS) if len(groups) > 1 else 0)
        for i, (label, lo, hi, counts) in enumerate(groups):
            edges = np.append(lo, hi[-1]) if len(lo) else np.array([0.0, 1.0])
            full = np.zeros(len(lo))
            full[: len(counts)] = counts
            ax.stairs(full, edges, fill=len(groups) == 1, color=colour(i), alpha=0.55 if len(groups) == 1 else 1.0)
            ax.stairs(full, edges, color=colour(i), linewidth=1.4, label=label)
        if marker is not None:
            ax.axvline(marker.value, color=SEVERITY_COLOURS["warning"], linestyle=(0, (5, 3)), linewidth=1.2)
            ax.annotate(
                marker.label,
                xy=(marker.value, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -10),
                textcoords="offset points",
                fontsize=7.5,
                color=SEVERITY_COLOURS["warning"],
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("requests")
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
        if len(groups) > 1:
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=min(len(groups), LEGEND_COLUMNS))
    return fig


def _days(ts: float) -> float:
    """Unix seconds -> matplotlib date number (days), for bars that need plain floats."""
    return float(mdates.date2num(np.datetime64(int(ts * 1e6), "us")))


def alert_timeline(
    rows: Sequence[tuple[str, Sequence[tuple[float, float]], str, bool]],
    start: float,
    end: float,
    zone: tzinfo | None = None,
) -> Figure:
    """One row per alert instance: (label, firing intervals, severity, last one still firing), in local time."""
    zone = zone or local_zone()
    height = max(1.3, 0.32 * len(rows) + 0.9)
    min_width = max(end - start, 1.0) / 1500 / 86400
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        for i, (_label, intervals, severity, open_) in enumerate(rows):
            shade = SEVERITY_COLOURS.get(severity, "#999999")
            bars = [(_days(s), max((e - s) / 86400, min_width)) for s, e in intervals]
            ax.broken_barh(bars, (i - 0.3, 0.6), facecolors=shade, linewidth=0)
            if open_ and bars:
                ax.broken_barh([bars[-1]], (i - 0.3, 0.6), facecolors="none", edgecolor=INK, hatch="//", linewidth=0.6)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(_days(start), _days(max(end, start + 1)))
        locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=10)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone, show_offset=True))
        ax.set_xlabel(f"local time ({zone_label(zone)})")
        ax.grid(axis="y", visible=False)
    return fig


def to_data_uri(fig: Figure, fmt: Literal["svg", "png"] = "svg") -> str:
    """The figure as a ``data:`` URI, ready for ``<img src>`` under a CSP of ``img-src data:``."""
    buf = io.BytesIO()
    # Saving reads rcParams too (svg.fonttype, svg.hashsalt), so it runs under the same style as drawing.
    with matplotlib.rc_context(RC):
        if fmt == "svg":
            fig.savefig(buf, format="svg", metadata={"Date": None})
            mime = "image/svg+xml"
        else:
            fig.savefig(buf, format="png", dpi=DPI * 1.4, metadata={"Software": None})
            mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def elapsed_unit(seconds: float) -> tuple[str, float]:
    """Unit and divisor for an elapsed-time axis spanning ``seconds``."""
    if seconds >= 3 * 3600:
        return "h", 3600.0
    if seconds >= 3 * 60:
        return "min", 60.0
    return "s", 1.0
