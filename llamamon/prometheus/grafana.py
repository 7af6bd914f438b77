"""Grafana dashboards (System, Training, Inference) over the families the textfile export writes.

Every panel comes from the catalog: a catalog group is a row, each of its metrics a panel, its Prometheus
name the one ``snapshot.py`` writes and its unit mapped to a Grafana unit, so a metric added to the catalog
shows up here without an edit and a renamed one cannot leave a panel querying a name nobody writes.
Queries only use the labels the export carries: ``host`` and ``run`` on everything (``run=""`` for
watch's file), the catalog's own label names (``gpu``, ``core`` ...) and, for training, the job's ``rank``.
Host-wide series are written by every run on a host and by watch, so System panels take ``max by (host)``
rather than drawing one identical line per run. Pure: dicts out; the CLI writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llamamon import catalog
from llamamon.prometheus.snapshot import RUN_METRICS

# Grafana 11.0's version: every Grafana since imports it as is and migrates it forward on load; a newer
# number would be left unmigrated by an older Grafana.
SCHEMA_VERSION = 39
# Import asks for this input (``__inputs``) and replaces ``${DS_PROMETHEUS}`` with the chosen data source.
# Panels use the ``datasource`` variable, whose current value is that input, so a file provisioned without
# the import step still works: Grafana falls back to the default Prometheus data source.
DATASOURCE_INPUT = "DS_PROMETHEUS"
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# The catalog's units (what the export converts to: seconds, not ms) as Grafana unit ids (Grafana's
# packages/grafana-data/src/valueFormats/categories.ts).
GRAFANA_UNITS: dict[str, str] = {
    "ratio": "percentunit",
    "bytes": "bytes",
    "bytes_per_second": "binBps",
    "seconds": "s",
    "milliseconds": "s",
    "celsius": "celsius",
    "watts": "watt",
    "joules": "joule",
    "megahertz": "hertz",
    "cores": "short",
    "per_second": "suffix:/s",
    "timestamp": "s",  # shown as the age of the timestamp: time() - value
    "": "short",
}
# A counter is drawn as its per-second rate: the rate of energy is power, of anything else a count per second.
RATE_UNITS: dict[str, str] = {"joules": "watt"}
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)

_WIDTH, _HEIGHT, _COLUMNS = 12, 8, 2


@dataclass(frozen=True, slots=True)
class Row:
    """One catalog group as a row: the label matchers its queries take and the labels its lines keep."""

    title: str
    group: str
    matchers: tuple[str, ...]  # template variables the selector filters on (label name == variable name)
    keep: tuple[str, ...]  # labels kept by the aggregation (and shown in the legend), before the catalog's


@dataclass(frozen=True, slots=True)
class Board:
    """One dashboard: its fixed uid (a re-import replaces it instead of adding a copy) and its rows."""

    uid: str
    title: str
    file: str
    rows: tuple[Row, ...]
    variables: tuple[str, ...]  # of "host", "run", "rank", "gpu", in that order on the dashboard


BOARDS: tuple[Board, ...] = (
    Board(
        "llamamon-system",
        "llamamon / System",
        "llamamon-system.json",
        (
            Row("Host", "system", ("host",), ("host",)),
            Row("GPU", "gpu", ("host", "gpu"), ("host",)),
            Row("Process tree of each run", "process", ("host", "run"), ("host", "run")),
            Row("Runs and llamamon", "run", ("host",), ("host", "run")),
        ),
        ("host", "run", "gpu"),
    ),
    Board(
        "llamamon-training",
        "llamamon / Training",
        "llamamon-training.json",
        (Row("Training, per rank", "training", ("host", "run", "rank"), ("host", "run", "rank")),),
        ("host", "run", "rank"),
    ),
    Board(
        "llamamon-inference",
        "llamamon / Inference",
        "llamamon-inference.json",
        (Row("Inference", "inference", ("host", "run"), ("host", "run")),),
        ("host", "run"),
    ),
)


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> the dashboard JSON (as dicts) Grafana's Import takes as is."""
    return {board.file: dashboard(board) for board in BOARDS}


def dashboard(board: Board) -> dict[str, Any]:
    """One dashboard, with the ``__inputs``/``__requires`` header of Grafana's "export for sharing"."""
    return {
        "__inputs": [
            {
                "name": DATASOURCE_INPUT,
                "label": "Prometheus",
                "description": "The Prometheus that scrapes node_exporter's textfile folder with llamamon's .prom files",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "11.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "uid": board.uid,
        "title": board.title,
        "tags": ["llamamon"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": [_builtin_annotations()]},
        "templating": {"list": [_datasource_variable(), *(_VARIABLES[name]() for name in board.variables)]},
        "panels": _layout(board),
    }


def _layout(board: Board) -> list[dict[str, Any]]:
    """Rows in order, each followed by its panels two abreast; ids in that order, so they stay put between
    exports as long as the catalog does."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row in board.rows:
        panels.append({"type": "row", "id": len(panels) + 1, "title": row.title, "collapsed": False, "panels": []})
        panels[-1]["gridPos"] = {"x": 0, "y": y, "w": _WIDTH * _COLUMNS, "h": 1}
        y += 1
        lines = 0
        for index, panel in enumerate(_row_panels(row)):
            line = index // _COLUMNS
            panel["id"] = len(panels) + 1
            panel["gridPos"] = {"x": (index % _COLUMNS) * _WIDTH, "y": y + line * _HEIGHT, "w": _WIDTH, "h": _HEIGHT}
            panels.append(panel)
            lines = line + 1
        y += lines * _HEIGHT
    return panels


def _row_panels(row: Row) -> Iterator[dict[str, Any]]:
    for metric in catalog.METRICS:
        if metric.group != row.group:
            continue
        if metric.kind == "histogram":
            yield from _histogram_panels(metric, row)
            continue
        expr, unit = _series(metric, row), GRAFANA_UNITS[metric.unit]
        title = metric.name
        if metric.kind == "counter":
            expr, unit, title = f"rate({expr}[$__rate_interval])", RATE_UNITS.get(metric.unit, "cps"), f"{title} rate"
        elif metric.unit == "timestamp":
            expr, title = f"time() - {expr}", f"seconds since {title}"
        keep = _keep(metric, row)
        yield _panel(title, metric, unit, [_target(f"max by ({', '.join(keep)}) ({expr})", keep)])
        if metric.name == "steps_per_second":  # the straggler view: the slow rank takes longest per step
            per_step = f"1 / max by ({', '.join(keep)}) ({expr})"
            yield _panel("seconds per step", metric, "s", [_target(per_step, keep)])


def _histogram_panels(metric: catalog.Metric, row: Row) -> Iterator[dict[str, Any]]:
    """Quantiles from the exported buckets (a run's cumulative counts, so rate() is the recent window)."""
    keep = ", ".join(row.keep)
    buckets = f"sum by (le, {keep}) (rate({_series(metric, row, '_bucket')}[$__rate_interval]))"
    targets = [
        _target(f"histogram_quantile({q}, {buckets})", row.keep, f"p{q * 100:g}", chr(ord("A") + i))
        for i, q in enumerate(QUANTILES)
    ]
    yield _panel(f"{metric.name} quantiles", metric, "s", targets)
    count = f"sum by ({keep}) (rate({_series(metric, row, '_count')}[$__rate_interval]))"
    yield _panel(f"{metric.name} requests", metric, "reqps", [_target(count, row.keep)])


def _series(metric: catalog.Metric, row: Row, suffix: str = "") -> str:
    matchers = ", ".join(f'{name}=~"${name}"' for name in _matchers(metric, row))
    return f"{metric.prometheus_name}{suffix}{{{matchers}}}"


def _matchers(metric: catalog.Metric, row: Row) -> tuple[str, ...]:
    # A run-level family (step) has host and run only: filtering it on rank would hide it.
    return tuple(m for m in row.matchers if metric.name not in RUN_METRICS or m in ("host", "run"))


def _keep(metric: catalog.Metric, row: Row) -> tuple[str, ...]:
    kept = tuple(label for label in row.keep if metric.name not in RUN_METRICS or label in ("host", "run"))
    own = tuple(label for label in metric.labels or () if label not in kept)
    return (*kept, *own)


def _panel(title: str, metric: catalog.Metric, unit: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0}}
    if metric.unit == "ratio" and unit == "percentunit":
        defaults.update(min=0, max=1)
    return {
        "type": "timeseries",
        "title": title,
        "description": f"{metric.help} ({metric.prometheus_name})",
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def _target(expr: str, labels: tuple[str, ...], prefix: str = "", ref: str = "A") -> dict[str, Any]:
    legend = " ".join(f"{name} {{{{{name}}}}}" if name in ("rank", "gpu") else f"{{{{{name}}}}}" for name in labels)
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": f"{prefix} {legend}".strip(),
        "range": True,
    }


def _builtin_annotations() -> dict[str, Any]:
    return {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }


def _datasource_variable() -> dict[str, Any]:
    value = "${" + DATASOURCE_INPUT + "}"
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"text": value, "value": value},
        "hide": 0,
        "refresh": 1,
    }


def families_of(group: str) -> str:
    """A ``__name__`` regex of a catalog group's families (gauges and counters as the export names them)."""
    return "|".join(m.prometheus_name for m in catalog.METRICS if m.group == group and m.kind != "histogram")


def _label_variable(name: str, label: str, selector: str) -> dict[str, Any]:
    query = f"label_values({selector}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "refresh": 2,  # on time range change: runs come and go
        "multi": True,
        "includeAll": True,
        "allValue": ".*",  # matches a series without the label too (watch's run="", a job without ranks)
        "sort": 1,
        "hide": 0,
    }


_RUN_ACTIVE = catalog.BY_NAME["run_active"].prometheus_name
_VARIABLES = {
    "host": lambda: _label_variable("host", "Host", _RUN_ACTIVE),
    "run": lambda: _label_variable("run", "Run", f'{_RUN_ACTIVE}{{host=~"$host", run!=""}}'),
    "rank": lambda: _label_variable(
        "rank", "Rank", f'{{__name__=~"{families_of("training")}", host=~"$host", run=~"$run"}}'
    ),
    "gpu": lambda: _label_variable("gpu", "GPU", f'{{__name__=~"{families_of("gpu")}", host=~"$host"}}'),
}
