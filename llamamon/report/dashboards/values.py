"""Numbers, times and units as the dashboards print them, from the metric catalog."""

from __future__ import annotations

from datetime import datetime, tzinfo

import numpy as np

from llamamon import catalog
from llamamon.units import format_bytes, format_duration


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


def charts_unit_label(unit: str) -> str:
    return catalog.UNITS[unit].axis_label if unit in catalog.UNITS else ""
