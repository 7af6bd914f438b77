"""The words of a notification, shared by the Slack and email channels (plain data, no transport)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from urllib.parse import quote

from llamamon import catalog, units
from llamamon.samples import AlertEvent
from llamamon.units import format_bytes, format_duration

TEST_LABEL = "llamamon_test"
# Labels that already have their own row (the rules engine puts alertname, severity, host, run in labels).
_SHOWN_LABELS = frozenset({TEST_LABEL, "alertname", "severity", "host", "run"})

# Severity -> colour for chat attachments and HTML mail; resolved is always green.
COLOURS = {"critical": "#d62728", "warning": "#ff9f1c", "info": "#439fe0"}
RESOLVED_COLOUR = "#2eb886"


def is_test(event: AlertEvent) -> bool:
    return dict(event.labels).get(TEST_LABEL) == "true"


def colour(event: AlertEvent) -> str:
    return RESOLVED_COLOUR if event.state == "resolved" else COLOURS.get(event.severity, COLOURS["warning"])


def timestamp(seconds: float) -> str:
    """Unix seconds -> ``2026-11-27T21:30:00Z`` (RFC 3339, UTC, what Alertmanager expects)."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# Base unit (a catalog unit's Prometheus suffix) -> the symbol written after a value in it.
_SYMBOLS = {
    "seconds": "s",
    "bytes": "B",
    "bytes_per_second": "B/s",
    "celsius": "°C",
    "watts": "W",
    "joules": "J",
    "hertz": "Hz",
    "cores": "cores",
    "per_second": "/s",
}


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def format_value(value: float, unit: str = "") -> str:
    """A value stored in catalog ``unit``, written in its base unit with the unit: what ``$value`` shows.

    ``97840`` ms -> ``97.84 s (1m38s)``, ``0.97`` ratio -> ``0.97 (97%)``; a value without a unit as is.
    Why base units: rule templates see ``$value`` in them (as Prometheus does), so the notification's
    value and its annotations agree.
    """
    if math.isnan(value):
        return "n/a"
    known = catalog.UNITS.get(unit)
    if known is None or not known.prometheus_suffix:
        return _number(value)
    base = units.scale(value, known.to_base)
    suffix = known.prometheus_suffix
    if suffix == "ratio":
        return f"{_number(base)} ({base * 100:.4g}%)"
    text = f"{_number(base)} {_SYMBOLS[suffix]}" if suffix in _SYMBOLS else _number(base)
    if suffix == "seconds" and abs(base) >= 60:
        text += f" ({format_duration(abs(base))})"
    elif suffix in ("bytes", "bytes_per_second") and abs(base) >= 1024:
        text += f" ({format_bytes(base)}{'/s' if suffix == 'bytes_per_second' else ''})"
    return text


def title(event: AlertEvent) -> str:
    """``[FIRING] critical gpu_memory_high`` or ``[RESOLVED] …``; test notifications say so first."""
    prefix = "[TEST] " if is_test(event) else ""
    return f"{prefix}[{event.state.upper()}] {event.severity} {event.rule}"


def fields(event: AlertEvent) -> list[tuple[str, str]]:
    """Severity, rule, summary, value, host, run and timing as (name, text) pairs, in reading order."""
    rows = [
        ("Severity", event.severity),
        ("Rule", event.rule),
        ("Summary", event.summary),
        ("Value", format_value(event.value, event.unit)),
        ("Host", event.host or "-"),
        ("Run", event.run or "-"),
        ("Started", timestamp(event.started_at)),
    ]
    if event.state == "resolved" and event.ended_at is not None:
        rows.append(("Resolved", timestamp(event.ended_at)))
        rows.append(("Duration", format_duration(max(0.0, event.ended_at - event.started_at))))
    description = dict(event.annotations).get("description")
    if description:
        rows.append(("Description", description))
    labels = [f"{k}={v}" for k, v in event.labels if k not in _SHOWN_LABELS]
    if labels:
        rows.append(("Labels", ", ".join(labels)))
    return rows


def headline(events: Sequence[AlertEvent]) -> str:
    """One line for a batch: ``2 firing, 1 resolved: gpu_memory_high, disk_full on gpu-box``."""
    firing = sum(1 for e in events if e.state == "firing")
    resolved = len(events) - firing
    counts = ", ".join(f"{n} {state}" for n, state in ((firing, "firing"), (resolved, "resolved")) if n)
    rules = list(dict.fromkeys(e.rule for e in events))
    shown = ", ".join(rules[:3]) + (f" and {len(rules) - 3} more" if len(rules) > 3 else "")
    hosts = sorted({e.host for e in events if e.host})
    where = f" on {', '.join(hosts)}" if hosts else ""
    test = "TEST notification: " if any(is_test(e) for e in events) else ""
    return f"{test}{counts}: {shown}{where}"


def alert_labels(event: AlertEvent) -> dict[str, str]:
    """Alertmanager-style identity: ``alertname``, ``severity``, the event's labels, ``host`` and ``run``."""
    labels = {"alertname": event.rule, "severity": event.severity}
    labels.update(dict(event.labels))
    if event.host:
        labels.setdefault("host", event.host)
    if event.run:
        labels.setdefault("run", event.run)
    return labels


def alert_annotations(event: AlertEvent) -> dict[str, str]:
    annotations = dict(event.annotations)
    annotations.setdefault("summary", event.summary)
    annotations.setdefault("value", format_value(event.value, event.unit))
    return annotations


_PLACEHOLDER = re.compile(r"\{(run|host|rule)\}")


def source_link(template: str, event: AlertEvent) -> str:
    """A channel's ``generator_url`` for one alert: ``{run}``, ``{host}``, ``{rule}`` become the alert's own.

    So Alertmanager's "Source" link can open the run (a Grafana dashboard with ``var-run={run}``, a
    report server's ``/{run}.html``); the values are URL-quoted, anything else in braces is left alone.
    """
    labels = alert_labels(event)
    values = {"run": labels.get("run", ""), "host": labels.get("host", ""), "rule": event.rule}
    return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)], safe=""), template)


def fingerprint(labels: dict[str, str]) -> str:
    """16 hex digits identifying a label set (the length Alertmanager's fingerprints have)."""
    canonical = json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
