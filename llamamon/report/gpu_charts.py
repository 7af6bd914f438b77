"""The per-GPU card of the System dashboard: one small figure per device, all drawn on the same scales.

Why a card of small multiples rather than one more line per GPU on the shared charts: with 8 GPUs the
shared charts hold 8 crossing lines each, and the GPU that throttles or idles is hard to pick out. A card
per device, with every card's axes on the same limits, lets the eye compare cards in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

import matplotlib
import numpy as np
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, PercentFormatter

from llamamon.report import charts
from llamamon.report.charts import Line

STRIP_IN = 1.15  # one strip's plot height
LEFT_IN = 1.1  # room for the band's reason names
BAND_ROW_IN = 0.16  # one throttle reason's row in the band
# The band's row names: NVML's reason names (the gpu_clock_event label) cut to what fits the card's margin.
SHORT = {
    "sw_power_cap": "power cap",
    "hw_power_brake_slowdown": "power brake (hw)",
    "sw_thermal_slowdown": "thermal (sw)",
    "hw_thermal_slowdown": "thermal (hw)",
    "hw_slowdown": "hw slowdown",
    "applications_clocks_setting": "app clocks",
    "display_clock_setting": "display clock",
}
CAUSE_COLOURS = {"power": charts.PALETTE[1], "thermal": charts.SEVERITY_COLOURS["critical"], "other": charts.MUTED}


@dataclass(slots=True)
class Strip:
    """One small chart of a card: its lines, the y unit ("ratio", "watts", "celsius", "bytes_per_second")
    and limits shared by every card, and dashed reference lines (the power limit)."""

    title: str
    unit: str
    lines: list[Line] = field(default_factory=list)
    limits: list[Line] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    key: list[Line] = field(default_factory=list)  # line styles' meanings, as grey legend entries (several runs)


@dataclass(slots=True)
class BandRow:
    """A throttle reason's row: ``on`` > 0 where it was on at some sample of the bucket; its cause colours it."""

    reason: str
    cause: str
    x: np.ndarray
    on: np.ndarray


@dataclass(slots=True)
class Card:
    title: str
    strips: list[Strip]
    band: list[BandRow]
    x_mode: str = "time"
    x_label: str = ""
    xlim: tuple[object, object] | None = None
    runs: list[tuple[str, str]] = field(default_factory=list)  # (run, colour) when the card compares runs


def card_height(card: Card) -> float:
    rows = (len(card.strips) + 1) // 2
    return 0.42 + rows * (STRIP_IN + 0.42) + 0.3 + max(len(card.band), 1) * BAND_ROW_IN + 0.55


def render_card(card: Card, zone: tzinfo | None = None) -> Figure:
    """Strips two a row, then the throttle band across the card's width on the same x axis."""
    zone = zone or charts.local_zone()
    height = card_height(card)
    rows = (len(card.strips) + 1) // 2
    band_in = max(len(card.band), 1) * BAND_ROW_IN
    with matplotlib.rc_context({**charts.RC, "axes.titlesize": 8.5, "axes.titleweight": "normal"}):
        fig = Figure(figsize=(charts.WIDTH_IN, height), dpi=charts.DPI)
        ratios = [STRIP_IN] * rows + [band_in]
        grid = fig.add_gridspec(
            rows + 1,
            2,
            height_ratios=ratios,
            left=LEFT_IN / charts.WIDTH_IN,
            right=1 - 0.2 / charts.WIDTH_IN,
            top=1 - 0.62 / height,
            bottom=0.55 / height,
            hspace=0.42 * (rows + 1) / sum(ratios),
            wspace=0.22,
        )
        fig.text(
            LEFT_IN / charts.WIDTH_IN,
            1 - 0.08 / height,
            card.title,
            ha="left",
            va="top",
            fontsize=10,
            fontweight="bold",
        )
        if card.runs:
            handles = [Line2D([], [], color=c, linewidth=1.4) for _, c in card.runs]
            fig.legend(
                handles,
                [r for r, _ in card.runs],
                loc="upper right",
                bbox_to_anchor=(1 - 0.2 / charts.WIDTH_IN, 1),
                ncols=min(len(card.runs), 4),
                fontsize=7,
                frameon=False,
            )
        axes = []
        for i, strip in enumerate(card.strips):
            ax = fig.add_subplot(grid[i // 2, i % 2])
            _strip(ax, strip)
            axes.append(ax)
        band = fig.add_subplot(grid[rows, :])
        _band(band, card.band)
        for ax in [*axes, band]:
            if card.xlim is not None:
                ax.set_xlim(*card.xlim)  # type: ignore[arg-type]
            _x_axis(ax, card, zone, labelled=ax is band)
    return fig


def _strip(ax: matplotlib.axes.Axes, strip: Strip) -> None:
    ax.set_title(strip.title, loc="left", pad=3)
    scale_name, scale = "", 1.0
    if strip.unit == "bytes_per_second":
        peak = strip.ylim[1] if strip.ylim else 0.0
        scale_name, scale = charts.binary_scale(peak)
    for line in strip.lines:
        if line.lo is not None and line.hi is not None:
            ax.fill_between(line.x, line.lo / scale, line.hi / scale, color=line.colour, alpha=0.15, linewidth=0)
        label = line.label if line.legend else "_nolegend_"
        ax.plot(line.x, line.y / scale, line.style, color=line.colour, linewidth=1.1, label=label)
    for ref in strip.limits:
        label = ref.label if ref.legend else "_nolegend_"
        ax.plot(ref.x, ref.y / scale, color=ref.colour, linestyle=(0, (4, 2)), linewidth=1.0, label=label)
    for k in strip.key:
        ax.plot([], [], k.style, color=k.colour, linewidth=1.1, label=k.label)
    if strip.ylim is not None:
        ax.set_ylim(strip.ylim[0] / scale, strip.ylim[1] / scale)
    if strip.unit == "ratio":
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    else:
        suffix = {"watts": " W", "celsius": " °C", "bytes_per_second": f" {scale_name}/s"}.get(strip.unit, "")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{charts._si(v)}{suffix}"))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
    entries = len(ax.get_legend_handles_labels()[1])
    if entries > 1:
        # Above the plot at the right, beside the strip's title: inside, it would cover the 80-100 % a busy GPU is at.
        # Two columns past three entries, so the legend never reaches over to the title on the left.
        ax.legend(
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=6.5,
            ncols=entries if entries <= 3 else 2,
            handlelength=1.2,
            borderaxespad=0.1,
            columnspacing=0.8,
        )


def _band(ax: matplotlib.axes.Axes, rows: Sequence[BandRow]) -> None:
    """Throttle reasons as a band: a row per reason seen, filled where it was on, coloured by its cause."""
    ax.set_title("clock events (throttling)", loc="left", pad=3)
    ax.grid(False)
    if not rows:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no throttle reason seen", transform=ax.transAxes, ha="center", va="center", fontsize=7.5)
        return
    for i, row in enumerate(rows):
        on = np.nan_to_num(row.on) > 0
        colour = CAUSE_COLOURS.get(row.cause, charts.MUTED)
        ax.fill_between(row.x, i - 0.4, i + 0.4, where=on, step="mid", color=colour, alpha=0.85, linewidth=0)
    ax.set_yticks(range(len(rows)), [r.reason for r in rows], fontsize=6.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)


def _x_axis(ax: matplotlib.axes.Axes, card: Card, zone: tzinfo, *, labelled: bool) -> None:
    if card.x_mode == "time":
        locator = mdates.AutoDateLocator(tz=zone, minticks=3, maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone, show_offset=labelled))
    if labelled:
        ax.set_xlabel(card.x_label)
