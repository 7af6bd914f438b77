"""Small multiples: one small chart per host in a grid, for a job on many hosts (``report --group``).

Why not overlays: 64 hosts' CPU curves on one axis are a hairball where the one idle node hides; a grid
of small charts on the same scales shows each node's shape, and the odd one out stands out at a glance.

Why one matplotlib axis for the whole grid, each cell a box of it: an axis costs its ticks, title and
layout (about 40 ms each here), so 64 axes per panel made a 64-host report spend most of its time laying
out ticks. Cells drawn in one axis's coordinates cost their lines and a few labels, so the grid's cost
grows with the data, not with matplotlib's per-axis machinery. The price: tick labels are text placed
by hand, on the left column and the bottom row.

Why every cell's lines go into one collection, cut to the cell's pixel width first: 64 hosts x 8 GPUs of 800
points each were 4,096 lines of 3 million points in an 8 x 8 grid of charts an inch wide; one ``plot`` per
line and one collection per cell's frame cost seconds of matplotlib bookkeeping and the SVG a path each of
points no screen can show. A cell's line keeps each pixel column's lowest and highest point, so a spike a
column wide still shows as it did.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from llamamon.report.charts import (
    GRID,
    INK,
    MUTED,
    RC,
    SEVERITY_COLOURS,
    WIDTH_IN,
    Axis,
    HLine,
    Line,
    Span,
    _breaks,
    _unit_formatter,
    binary_scale,
)

CELL_HEIGHT_IN = 1.1
TITLE_IN = 0.42
LEGEND_IN = 0.24
BOTTOM_IN = 0.5
LEFT_IN = 0.85
GAP_X = 0.08  # between cells, in cell widths
GAP_Y = 0.42  # in cell heights: room for the host's name above each cell
DPI = 110


@dataclass(slots=True)
class Grid:
    """What one small-multiples panel draws: per host, its lines; the scales and x range shared."""

    title: str
    axis: Axis
    cells: list[tuple[str, list[Line]]]
    thresholds: list[HLine] = field(default_factory=list)
    xlabel: str = ""
    xlim: tuple[float, float] | None = None
    legend: list[tuple[str, str]] = field(default_factory=list)  # (label, colour) told apart in every cell
    spans: dict[str, list[Span]] = field(default_factory=dict)  # per host: alert spans, in x's coordinates


def columns_for(cells: int) -> int:
    """4 columns up to 16 hosts, then 8: a 64-host job is an 8 x 8 grid a page wide."""
    return max(1, min(cells, 4 if cells <= 16 else 8))


def render_grid(grid: Grid, _zone: tzinfo | None = None) -> Figure:
    """Draw the grid: a title row, an optional legend row, then the cells, same y and x scale in each."""
    ncols = columns_for(len(grid.cells))
    nrows = math.ceil(len(grid.cells) / ncols)
    legend = LEGEND_IN if grid.legend else 0.0
    height = TITLE_IN + legend + BOTTOM_IN + CELL_HEIGHT_IN * nrows
    scale_name, scale = _scale(grid)
    cells = [(host, [_as_float(ln, scale) for ln in lines]) for host, lines in grid.cells]
    xlim = grid.xlim or _span(xs for _, lines in cells for xs, _ in lines) or (0.0, 1.0)
    ylim = _ylim(grid, [ys for _, lines in cells for _, ys in lines], scale)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
        ax = fig.add_axes(
            (
                LEFT_IN / WIDTH_IN,
                BOTTOM_IN / height,
                1 - (LEFT_IN + 0.2) / WIDTH_IN,
                1 - (TITLE_IN + legend + BOTTOM_IN) / height,
            )
        )
        ax.set_axis_off()
        fig.text(LEFT_IN / WIDTH_IN, 1 - 0.1 / height, grid.title, ha="left", va="top", fontsize=10, weight="bold")
        place = _Placer(ncols, xlim, ylim, grid.axis.log)
        yticks = _ticks(ylim, grid.axis.log)
        pieces = _Pieces()
        for i, (host, lines) in enumerate(cells):
            _draw_cell(ax, place, i, host, lines, grid, yticks, scale, pieces)
        pieces.add_to(ax, _cell_pixels(ncols))
        _tick_labels(ax, place, len(cells), yticks, _formatter(grid.axis.unit, scale_name), grid.xlabel)
        ax.set_xlim(-0.02, ncols * (1 + GAP_X) - GAP_X + 0.02)
        ax.set_ylim(-(nrows - 1) * (1 + GAP_Y) - 0.05, 1 + GAP_Y * 0.9)
        _labels(fig, grid, scale_name, height)
    return fig


@dataclass(frozen=True, slots=True)
class _Placer:
    """Data -> the grid axis's coordinates: cell ``i``'s box is [col*(1+gap), +1] x [-row*(1+gap), +1]."""

    ncols: int
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log: bool

    def origin(self, i: int) -> tuple[float, float]:
        return (i % self.ncols) * (1 + GAP_X), -(i // self.ncols) * (1 + GAP_Y)

    def x(self, i: int, xs: np.ndarray) -> np.ndarray:
        x0, x1 = self.xlim
        return self.origin(i)[0] + np.clip((xs - x0) / ((x1 - x0) or 1.0), 0.0, 1.0)

    def y(self, i: int, ys: np.ndarray) -> np.ndarray:
        y0, y1 = self.ylim
        if self.log:
            ys, y0, y1 = np.log10(np.where(ys > 0, ys, np.nan)), math.log10(y0), math.log10(y1)
        return self.origin(i)[1] + np.clip((ys - y0) / ((y1 - y0) or 1.0), 0.0, 1.0)


def _as_float(line: Line, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The line's x as float (datetimes as seconds) and y in the axis's scale, with NaN at its gaps."""
    x, y = _breaks(line.x, line.y / scale)
    if np.issubdtype(x.dtype, np.datetime64):
        x = x.astype("datetime64[us]").astype(np.int64) / 1e6  # NaT becomes a huge negative: masked below
        x[np.isnan(y)] = np.nan
    return x.astype(float), y.astype(float)


def _scale(grid: Grid) -> tuple[str, float]:
    if grid.axis.unit not in {"bytes", "bytes_per_second"} or grid.axis.log:
        return "", 1.0
    peaks = [float(np.nanmax(np.abs(ln.y))) for _, lines in grid.cells for ln in lines if np.isfinite(ln.y).any()]
    name, scale = binary_scale(max(peaks, default=0.0))
    return (name + "/s" if grid.axis.unit == "bytes_per_second" else name), scale


def _span(arrays: object) -> tuple[float, float] | None:
    lows, highs = [], []
    for values in arrays:  # type: ignore[attr-defined]
        ok = values[np.isfinite(values)]
        if len(ok):
            lows.append(float(ok.min()))
            highs.append(float(ok.max()))
    return (min(lows), max(highs)) if lows else None


def _ylim(grid: Grid, ys: list[np.ndarray], scale: float) -> tuple[float, float]:
    """The axis's configured limits where set, else the data's and the thresholds', padded a little."""
    lo, hi = _span(ys) or (0.0, 1.0)
    for th in grid.thresholds:
        lo, hi = min(lo, th.value / scale), max(hi, th.value / scale)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    if not (grid.axis.log and lo - pad <= 0):
        lo -= pad
    want_lo, want_hi = grid.axis.ylim
    return (lo if want_lo is None else want_lo, hi + pad if want_hi is None else want_hi)


def _ticks(ylim: tuple[float, float], log: bool) -> list[float]:
    lo, hi = ylim
    if log:
        return [10.0**e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)][:4]
    return [t for t in MaxNLocator(3).tick_values(lo, hi) if lo <= t <= hi]


@dataclass(slots=True)
class _Pieces:
    """Every cell's segments, drawn as one collection per kind once all cells are placed."""

    grid: list[np.ndarray] = field(default_factory=list)
    frame: list[np.ndarray] = field(default_factory=list)
    # (the line's place among its cell's lines, x, y, colour, style)
    lines: list[tuple[int, np.ndarray, np.ndarray, tuple[float, float, float, float], str]] = field(
        default_factory=list
    )
    thresholds: list[tuple[np.ndarray, str]] = field(default_factory=list)

    def add_to(self, ax: matplotlib.axes.Axes, pixels: int) -> None:
        """The collections, each added without recomputing the axis's data limits (the grid sets its own).

        Why the stretches of one colour and style are one path, broken by NaN (which starts a new stroke): the
        SVG writer's cost is per path, and 512 GPUs' lines were thousands of paths. Cells never overlap, so the
        lines are joined by their place in their cell and drawn in that order: each cell's drawing order stays.
        """
        ax.add_collection(LineCollection([_joined(self.grid)], colors=GRID, linewidths=0.5, zorder=0), autolim=False)
        ax.add_collection(LineCollection([_joined(self.frame)], colors=MUTED, linewidths=0.6, zorder=1), autolim=False)
        paths: dict[tuple[int, tuple[float, float, float, float], str], list[np.ndarray]] = {}
        for place, xs, ys, rgba, style in sorted(self.lines, key=lambda line: line[0]):
            paths.setdefault((place, rgba, style), []).extend(decimate(xs, ys, pixels))
        paths = {kind: parts for kind, parts in paths.items() if parts}
        if paths:
            data = LineCollection(
                [_joined(parts) for parts in paths.values()],
                colors=[rgba for _, rgba, _ in paths],
                linestyles=[style for _, _, style in paths],
                linewidths=0.9,
                zorder=2,
            )
            ax.add_collection(data, autolim=False)
        if self.thresholds:
            ax.add_collection(
                LineCollection(
                    [seg for seg, _ in self.thresholds],
                    colors=[c for _, c in self.thresholds],
                    linewidths=0.8,
                    linestyles=(0, (4, 3)),
                    zorder=3,
                ),
                autolim=False,
            )


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """(n, 2) point arrays as one, a NaN row between two: one path of separate strokes."""
    gap = np.full((1, 2), np.nan)
    return np.concatenate([p for part in parts for p in (gap, part)][1:]) if parts else np.zeros((0, 2))


def _cell_pixels(ncols: int) -> int:
    """A cell's width in pixels at the figure's resolution: the points per line worth drawing (twice that)."""
    axis_in = WIDTH_IN - LEFT_IN - 0.2
    return max(1, int(axis_in / (ncols * (1 + GAP_X) - GAP_X + 0.04) * DPI))


def decimate(xs: np.ndarray, ys: np.ndarray, pixels: int) -> list[np.ndarray]:
    """The line's unbroken stretches (split at NaN) as (n, 2) point arrays, each cut to the lowest and the
    highest point of every one of ``pixels`` columns across the cell, in x order."""
    ok = np.isfinite(xs) & np.isfinite(ys)
    cuts = np.flatnonzero(np.diff(ok.astype(np.int8)) != 0) + 1
    out = []
    for idx in np.split(np.arange(len(xs)), cuts):
        if not len(idx) or not ok[idx[0]]:
            continue
        x, y = xs[idx], ys[idx]
        if len(x) > 2 * pixels:
            col = np.minimum(((x - x[0]) / ((x[-1] - x[0]) or 1.0) * pixels).astype(np.int64), pixels - 1)
            order = np.lexsort((y, col))  # by column, then value: each column's first is its low, last its high
            starts = np.flatnonzero(np.r_[True, col[order][1:] != col[order][:-1]])
            ends = np.r_[starts[1:], len(order)] - 1
            keep = np.unique(np.r_[order[starts], order[ends]])
            x, y = x[keep], y[keep]
        out.append(np.column_stack((x, y)))
    return out


def _draw_cell(
    ax: matplotlib.axes.Axes,
    place: _Placer,
    i: int,
    host: str,
    lines: Sequence[tuple[np.ndarray, np.ndarray]],
    grid: Grid,
    yticks: list[float],
    scale: float,
    pieces: _Pieces,
) -> None:
    """Place one cell's frame, grid, lines and thresholds in ``pieces``; draw its spans and its host's name."""
    x0, y0 = place.origin(i)
    pieces.frame += [np.array([(x0, y0), (x0 + 1, y0)]), np.array([(x0, y0), (x0, y0 + 1)])]
    pieces.grid += [np.array([(x0, y), (x0 + 1, y)]) for y in place.y(i, np.asarray(yticks, dtype=float))]
    for span in grid.spans.get(host, []):
        a, b = place.x(i, np.asarray([span.start, span.end], dtype=float))
        shade = SEVERITY_COLOURS.get(span.severity, "#999999")
        ax.add_patch(Rectangle((a, y0), max(b - a, 0.004), 1.0, color=shade, alpha=0.18, linewidth=0, zorder=0))
    for j, ((xs, ys), line) in enumerate(zip(lines, grid.cells[i][1], strict=True)):
        pieces.lines.append((j, place.x(i, xs), place.y(i, ys), to_rgba(line.colour, line.alpha), line.style))
    if grid.thresholds:
        ys = place.y(i, np.asarray([th.value / scale for th in grid.thresholds], dtype=float))
        for th, y in zip(grid.thresholds, ys, strict=True):
            pieces.thresholds.append((np.array([(x0, y), (x0 + 1, y)]), SEVERITY_COLOURS.get(th.severity, MUTED)))
    ax.text(x0, y0 + 1.06, host, fontsize=7.5, color=INK, ha="left", va="bottom", clip_on=False)


def _formatter(unit: str, scale_name: str) -> Callable[[float], str]:
    """Tick text as the one-chart panels write it (a percent formatter needs an axis: written out here)."""
    if unit == "ratio":
        return lambda v: f"{v * 100:.0f}%"
    fmt = None if scale_name else _unit_formatter(unit)
    return (lambda v: str(fmt(v, None))) if fmt is not None else "{:g}".format


def _tick_labels(
    ax: matplotlib.axes.Axes, place: _Placer, n: int, yticks: list[float], fmt: Callable[[float], str], xlabel: str
) -> None:
    """Y values at the left of each row, x values under the bottom cell of each column."""
    for i in range(0, n, place.ncols):
        x0, _ = place.origin(i)
        for value, y in zip(yticks, place.y(i, np.asarray(yticks, dtype=float)), strict=True):
            ax.text(x0 - 0.02, y, fmt(value), fontsize=6.5, color=MUTED, ha="right", va="center")
    xticks = [t for t in MaxNLocator(3).tick_values(*place.xlim) if place.xlim[0] <= t <= place.xlim[1]]
    for i in range(max(0, n - place.ncols), n):
        _, y0 = place.origin(i)
        for value, x in zip(xticks, place.x(i, np.asarray(xticks, dtype=float)), strict=True):
            ax.text(x, y0 - 0.04, f"{value:g}", fontsize=6.5, color=MUTED, ha="center", va="top")


def _labels(fig: Figure, grid: Grid, scale_name: str, height: float) -> None:
    ylabel = grid.axis.ylabel
    if scale_name:  # "bytes/s" or "disk (bytes)" -> "MiB/s" or "disk (MiB)", as the one-chart panels say
        scaled = re.sub(r"\((bytes|bytes/s)\)$", f"({scale_name})", ylabel)
        ylabel = (
            scale_name if ylabel in ("bytes", "bytes/s") else scaled if scaled != ylabel else f"{ylabel} ({scale_name})"
        )
    fig.text(0.1 / WIDTH_IN, 0.5, ylabel, rotation=90, ha="left", va="center", fontsize=8, color=MUTED)
    fig.text(0.5, 0.05 / height, grid.xlabel, ha="center", va="bottom", fontsize=8, color=MUTED)
    if grid.thresholds:
        names = ", ".join(th.label for th in grid.thresholds)
        fig.text(1 - 0.2 / WIDTH_IN, 1 - 0.1 / height, f"dashed: {names}", ha="right", va="top", fontsize=7.5)
    if grid.legend:
        handles = [Line2D([], [], color=c, linewidth=1.2) for _, c in grid.legend]
        fig.legend(
            handles,
            [label for label, _ in grid.legend],
            loc="upper left",
            bbox_to_anchor=(LEFT_IN / WIDTH_IN, 1 - TITLE_IN / height),
            ncols=min(8, len(handles)),
            fontsize=7.5,
            frameon=False,
            handlelength=1.4,
        )
