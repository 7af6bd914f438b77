"""Parse and format quantities with units ("500ms", "2GiB", "80%", "2m") and convert them to base units.

Pure functions only: the config, the condition language and the reports share them so that "2m" or
"80%" means the same thing everywhere.
"""

from __future__ import annotations

import math
import re

from llamamon.errors import ConfigError

# Suffix -> (dimension, factor to the base unit of that dimension).
_SUFFIXES: dict[str, tuple[str, float]] = {
    "ns": ("seconds", 1e-9),
    "us": ("seconds", 1e-6),
    "µs": ("seconds", 1e-6),
    "ms": ("seconds", 1e-3),
    "s": ("seconds", 1.0),
    "m": ("seconds", 60.0),
    "h": ("seconds", 3600.0),
    "d": ("seconds", 86400.0),
    "w": ("seconds", 7 * 86400.0),
    "%": ("ratio", 0.01),
    "B": ("bytes", 1.0),
    "KB": ("bytes", 1e3),
    "MB": ("bytes", 1e6),
    "GB": ("bytes", 1e9),
    "TB": ("bytes", 1e12),
    "KiB": ("bytes", 1024.0),
    "MiB": ("bytes", 1024.0**2),
    "GiB": ("bytes", 1024.0**3),
    "TiB": ("bytes", 1024.0**4),
    "W": ("watts", 1.0),
    "kW": ("watts", 1e3),
    "MHz": ("hertz", 1e6),
    "GHz": ("hertz", 1e9),
}

QUANTITY_RE = re.compile(r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-zµ%]*)\s*$")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|s|m|h|d|w)")


def scale(value: float, factor: float) -> float:
    """``value * factor``, dividing by the whole number where the factor is 1/n (ms, %).

    Why: 1e-3 and 0.01 are not exact in binary, so ``102 * 1e-3`` is 0.10200000000000001 and ``35 *
    0.01`` is 0.35000000000000003; dividing by 1000 or 100 gives the float nearest the true value, the
    one a user writes by hand in PromQL or finds in the store, so ``>= 35%`` holds for a stored 0.35.
    """
    return value / round(1 / factor) if 0 < factor < 1 else value * factor


def unscale(value: float, factor: float) -> float:
    """The inverse of ``scale``: from base units back to a unit ``factor`` of them (0.102 s -> 102 ms)."""
    return value * round(1 / factor) if 0 < factor < 1 else value / factor


def suffixes() -> tuple[str, ...]:
    """Every unit suffix the parser knows, longest first (for tokenizers that must match greedily)."""
    return tuple(sorted(_SUFFIXES, key=len, reverse=True))


def parse_quantity(text: str) -> tuple[float, str | None]:
    """``"500ms"`` -> ``(0.5, "seconds")``; a bare number -> ``(value, None)``.

    Raises ValueError with a readable message; callers wrap it into a ConfigError with the place.
    """
    m = QUANTITY_RE.match(text)
    if not m:
        raise ValueError(f"not a number with an optional unit: {text!r}")
    value = float(m.group("num"))
    unit = m.group("unit")
    if not unit:
        return value, None
    if unit not in _SUFFIXES:
        known = ", ".join(sorted(_SUFFIXES))
        raise ValueError(f"unknown unit {unit!r} in {text!r} (known: {known})")
    dim, factor = _SUFFIXES[unit]
    return scale(value, factor), dim


def parse_duration(value: object, *, path: str = "duration") -> float:
    """Seconds from ``30``, ``"30s"``, ``"2m"``, ``"1h30m"`` or ``"500ms"``."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a duration such as 30s or 2m (got {value!r})", path=path)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(scale(float(n), _SUFFIXES[u][1]) for n, u in parts)
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise ConfigError(f"expected a duration such as 30s or 2m (got {value!r})", path=path) from None
    else:
        raise ConfigError(f"expected a duration such as 30s or 2m (got {value!r})", path=path)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"a duration must be finite and not negative (got {value!r})", path=path)
    return seconds


def format_duration(seconds: float) -> str:
    """``125.0`` -> ``"2m05s"``: compact, for one-line messages and tables."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"
