"""The alert timeline and table every report ends with, and the alert counts in its header."""

from __future__ import annotations

from collections.abc import Sequence

from llamamon.report import charts
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Panel, Table
from llamamon.report.dashboards.values import format_time
from llamamon.report.data import AlertSpan, label_text, merge_intervals
from llamamon.severity import SEVERITIES
from llamamon.units import format_duration

TIMELINE_ROWS = 40
ALERT_TABLE_ROWS = 100
SEVERITY_RANK = {sev: i for i, sev in enumerate(SEVERITIES)}


def alerts_section(ctx: Context) -> tuple[Panel | None, Table | None]:
    """A timeline with one row per alert instance (rule + labels + run) and a table of the same instances."""
    alerts = ctx.data.alerts
    if not alerts:
        return None, None
    bounds = ctx.bounds.values()
    start = min([a.start for a in alerts] + [b[0] for b in bounds])
    if ctx.since is not None and bounds:
        start = min(b[0] for b in bounds)  # alerts begun before the window are drawn from its start
    end = max([a.end or a.start for a in alerts] + [b[1] for b in bounds])
    instances: dict[tuple[str, str, str | None], list[AlertSpan]] = {}
    as_json: dict[tuple[tuple[str, str], ...], str] = {}  # a flapping alert repeats its label set thousands of times
    for a in alerts:
        text = as_json.get(a.labels)
        if text is None:
            text = as_json[a.labels] = _labels_json(a)
        instances.setdefault((a.rule, text, a.run), []).append(a)

    def firing(spans: list[AlertSpan]) -> float:
        return sum((s.end if s.end is not None else end) - s.start for s in spans)

    ranked = sorted(
        instances.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[1][0].severity, -1), -firing(kv[1]), kv[0][0])
    )
    gap = (end - start) / 1500
    rows = []
    for (rule, labels, run), spans in ranked[:TIMELINE_ROWS]:
        label = rule + (f" ({label_text(labels)})" if labels else "")
        if ctx.multi and run:
            label += f" · {ctx.run_labels.get(run, run)}"
        intervals = merge_intervals(((s.start, s.end if s.end is not None else end) for s in spans), gap)
        rows.append((label[:70], intervals, spans[0].severity, spans[-1].end is None))
    note = "Hatched bars are still firing at the end of the data."
    if len(ranked) > TIMELINE_ROWS:
        note += f" The {TIMELINE_ROWS} most severe and longest-firing of {len(ranked)} alert instances are shown."
    image = ctx.image("alert-timeline", lambda: charts.alert_timeline(rows, start, end, ctx.zone))
    panel = Panel("alert-timeline", "Alert timeline", image, "Alert firing spans", note)
    table_rows = []
    for (rule, labels, run), spans in ranked[:ALERT_TABLE_ROWS]:
        last = spans[-1]
        row = [ctx.run_labels.get(run or "", run or "")] if ctx.multi else []
        row += [
            last.severity,
            rule,
            label_text(labels),
            f"{len(spans):,}",
            format_time(spans[0].start, ctx.zone),
            format_time(last.end, ctx.zone) if last.end is not None else "still firing",
            format_duration(firing(spans)),
            last.summary,
        ]
        table_rows.append(row)
    cols = (["run"] if ctx.multi else []) + [
        "severity",
        "rule",
        "labels",
        "times fired",
        "first fired",
        "last resolved",
        "time firing",
        "summary (last)",
    ]
    table_note = f"{len(alerts):,} firing spans of {len(ranked):,} alert instances."
    if len(ranked) > ALERT_TABLE_ROWS:
        table_note += f" The first {ALERT_TABLE_ROWS} by severity and time firing are listed."
    return panel, Table("Alerts", cols, table_rows, note=table_note)


def _labels_json(a: AlertSpan) -> str:
    import json

    return json.dumps(dict(a.labels)) if a.labels else ""


def alert_counts(alerts: Sequence[AlertSpan]) -> list[tuple[str, int, list[str]]]:
    """(severity, count, distinct rules) from most to least severe, for the header."""
    out = []
    for sev in reversed(SEVERITIES):
        rules = sorted({a.rule for a in alerts if a.severity == sev})
        n = sum(1 for a in alerts if a.severity == sev)
        if n:
            out.append((sev, n, rules))
    others = sorted({a.severity for a in alerts} - set(SEVERITIES))
    for sev in others:
        out.append(
            (sev, sum(1 for a in alerts if a.severity == sev), sorted({a.rule for a in alerts if a.severity == sev}))
        )
    return out
