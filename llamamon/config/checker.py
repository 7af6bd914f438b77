"""Checks of one raw config's values that record each mistake with its file, line and key path and go on.

Why go on: a stand-in value lets one pass report every mistake in the file (``schema.build_config``
raises them together at the end, up to a bound); no Config is ever built from a stand-in.
"""

from __future__ import annotations

import math
from typing import Any

from llamamon.config.loader import RawConfig
from llamamon.errors import ConfigError, did_you_mean
from llamamon.units import parse_duration


def line_of(lines: dict[str, int], path: str) -> int | None:
    """Line of ``path``, or of its nearest parent key that has one (a value inside a flow mapping has none)."""
    probe = path
    while probe and probe not in lines:
        probe = probe.rsplit(".", 1)[0] if "." in probe else ""
    return lines.get(probe) if probe else None


class Checker:
    """Validation helpers bound to one raw config, so each error carries file, line and key path."""

    def __init__(self, raw: RawConfig, errors: list[ConfigError]) -> None:
        self.raw = raw
        self.file = str(raw.source) if raw.source else "built-in defaults"
        self.errors = errors

    def report(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(message, file=self.file, line=line_of(self.raw.lines, path), path=path))

    def bad(self, path: str, message: str, fallback: Any) -> Any:
        self.report(path, message)
        return fallback

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return self.bad(path, f"expected a mapping (got {show(value)})", {})
        if allowed is None:
            return value
        for key in value:
            if key not in allowed:
                extra = did_you_mean(key, allowed) or f" (known: {', '.join(allowed)})"
                self.report(f"{path}.{key}" if path else key, f"unknown key{extra}")
        return {key: item for key, item in value.items() if key in allowed}

    def number(self, value: Any, path: str, *, lo: float | None = None, hi: float | None = None) -> float:
        fallback = lo if lo is not None else 0.0
        number = _as_number(value)
        if number is None:
            return self.bad(path, f"expected a number (got {show(value)})", fallback)
        if not math.isfinite(number):
            return self.bad(path, f"must be finite (got {show(value)})", fallback)
        if lo is not None and number < lo:
            return self.bad(path, f"must be at least {lo:g} (got {show(value)})", fallback)
        if hi is not None and number > hi:
            return self.bad(path, f"must be at most {hi:g} (got {show(value)})", fallback)
        return number

    def ratio(self, value: Any, path: str) -> float:
        number = self.number(value, path)
        if not 0.0 <= number <= 1.0:
            return self.bad(path, f"ratios are 0..1, e.g. 0.80 for 80 % (got {show(value)})", 0.0)
        return number

    def integer(self, value: Any, path: str, *, lo: int = 0) -> int:
        number = self.number(value, path, lo=lo)
        if number != int(number):
            return self.bad(path, f"expected a whole number (got {show(value)})", lo)
        return int(number)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            return self.bad(path, f"expected true or false (got {show(value)})", False)
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            return self.bad(path, f"expected a non-empty string (got {show(value)})", "?")
        return value

    def duration(self, value: Any, path: str, *, positive: bool = False) -> float:
        try:
            seconds = parse_duration(value, path=path)
        except ConfigError as exc:
            return self.bad(path, exc.message, 1.0)
        if positive and seconds <= 0:
            return self.bad(path, f"must be more than 0 (got {show(value)})", 1.0)
        return seconds

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            extra = did_you_mean(str(value), choices)
            return self.bad(path, f"must be one of {', '.join(choices)}{extra} (got {show(value)})", choices[0])
        return value

    def string_list(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return self.bad(path, f"expected a list (got {show(value)})", ())
        return tuple(self.string(item, f"{path}[{i}]") for i, item in enumerate(value))

    def string_map(self, value: Any, path: str) -> dict[str, str]:
        mapping = self.mapping(value, path)
        out: dict[str, str] = {}
        for key, item in mapping.items():
            if isinstance(item, (dict, list)) or item is None:
                self.report(f"{path}.{key}", f"expected a string (got {show(item)})")
                continue
            out[str(key)] = str(item)
        return out


def _as_number(value: Any) -> float | None:
    # Why strings too: YAML 1.1 reads 1e-6 (no dot) as a string.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
