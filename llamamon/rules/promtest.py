"""promtool's rule unit-test format (``promtool test rules``), run against llamamon rules.

Pure: the caller reads the YAML and the rule files (llamamon configs) and hands over the parsed
document, the rules and, for the ``replay`` extension, a function that returns a recorded run's frame.
Strict on unknown keys like promtool; failures are promtool's blocks plus a line-by-line diff.

Input series may use the exported Prometheus names (``llamamon_inference_latency_seconds``, values in
base units, so one test file serves both ``promtool test rules`` on the exported rules and
``llamamon alerts test --unit``) or llamamon's own names (values in the catalog unit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamamon import catalog
from llamamon.errors import ConfigError
from llamamon.rules import history, template
from llamamon.rules.history_input import Grid, prepare
from llamamon.rules.model import Rule, needed_metrics
from llamamon.rules.promql import US
from llamamon.samples import labels_to_str
from llamamon.units import parse_duration

if TYPE_CHECKING:
    import polars as pl

TOP_KEYS = ("rule_files", "evaluation_interval", "tests", "group_eval_order", "fuzzy_compare")
GROUP_KEYS = (
    "name",
    "interval",
    "input_series",
    "alert_rule_test",
    "promql_expr_test",
    "external_labels",
    "external_url",
    "replay",
)
SERIES_KEYS = ("series", "values")
ALERT_TEST_KEYS = ("eval_time", "alertname", "exp_alerts")
EXP_KEYS = ("exp_labels", "exp_annotations")
REPLAY_KEYS = ("metrics_dir", "run")

STALE = object()
_NUM = r"[+-]?(?:Inf|inf|NaN|nan|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_EXPAND = re.compile(rf"^({_NUM})([+-])({_NUM})x(\d+)$")
_REPEAT = re.compile(rf"^({_NUM})x(\d+)$")
_GAPS = re.compile(r"^_x(\d+)$")
_SERIES = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(.*)\})?\s*$", re.DOTALL)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_PROM_NAMES = {m.prometheus_name: m for m in catalog.METRICS}


@dataclass(slots=True)
class AlertCase:
    eval_time: float
    alertname: str
    expected: list[tuple[dict[str, str], dict[str, str]]]


@dataclass(slots=True)
class Group:
    name: str
    interval: float
    series: list[tuple[str, dict[str, str], list[Any]]]  # metric, labels, values (float | None | STALE)
    cases: list[AlertCase]
    replay: dict[str, str] | None = None


@dataclass(slots=True)
class TestFile:
    rule_files: list[str]
    evaluation_interval: float
    groups: list[Group] = field(default_factory=list)


def _fail(file: str, path: str, message: str) -> ConfigError:
    return ConfigError(message, file=file, path=path)


def _keys(value: Any, allowed: tuple[str, ...], file: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(file, path, f"expected a mapping (got {type(value).__name__})")
    for key in value:
        if key not in allowed:
            raise _fail(file, f"{path}.{key}" if path else str(key), f"unknown key (known: {', '.join(allowed)})")
    return value


def _duration(value: Any, file: str, path: str) -> float:
    try:
        return parse_duration(value, path=path)
    except ConfigError as exc:
        raise _fail(file, path, exc.message) from None


def expand_values(text: str) -> list[Any]:
    """promtool's ``values`` notation -> samples: floats, None for ``_``, STALE for ``stale``."""
    out: list[Any] = []
    for tok in str(text).split():
        if tok == "_":
            out.append(None)
        elif tok == "stale":
            out.append(STALE)
        elif m := _GAPS.match(tok):
            out.extend([None] * int(m.group(1)))
        elif m := _EXPAND.match(tok):
            start, step, n = float(m.group(1)), float(m.group(3)), int(m.group(4))
            sign = 1.0 if m.group(2) == "+" else -1.0
            out.extend(start + sign * step * i for i in range(n + 1))
        elif m := _REPEAT.match(tok):
            out.extend([float(m.group(1))] * (int(m.group(2)) + 1))
        elif re.fullmatch(_NUM, tok):
            out.append(float(tok))
        else:
            raise ValueError(f"bad value {tok!r} (use numbers, _, stale, a+bxN, a-bxN, axN, _xN)")
    return out


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """``name{a="1", b="2"}`` -> (name, labels)."""
    m = _SERIES.match(text)
    if m is None or (m.group(1) is None and m.group(2) is None):
        raise ValueError(f'bad series {text!r} (expected name{{label="value", ...}})')
    labels: dict[str, str] = {}
    body = m.group(2) or ""
    pos = 0
    while pos < len(body.strip()):
        lm = _LABEL.match(body, pos)
        if lm is None:
            raise ValueError(f"bad labels in series {text!r}")
        labels[lm.group(1)] = re.sub(r"\\(.)", lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), lm.group(2))
        pos = lm.end()
    name = m.group(1) or labels.pop("__name__", "")
    return name, labels


def metric_of(prom_or_llamamon_name: str) -> tuple[str, float]:
    """(stored metric name, factor from the given values to stored units) for an input series name."""
    metric = _PROM_NAMES.get(prom_or_llamamon_name)
    if metric is not None:
        return metric.name, 1.0 / catalog.UNITS[metric.unit].to_base
    base, _, part = prom_or_llamamon_name.rpartition("_")
    metric = _PROM_NAMES.get(base)
    if metric is not None and metric.kind == "histogram" and part in catalog.HISTOGRAM_PARTS:
        return f"{metric.name}_{part}", 1.0  # a histogram's parts are stored in base units, as exported
    if prom_or_llamamon_name.startswith("llamamon_"):
        return prom_or_llamamon_name[len("llamamon_") :], 1.0
    return prom_or_llamamon_name, 1.0


def load(doc: Any, file: str) -> TestFile:
    """Validate a parsed test document (strict keys, like promtool's UnmarshalStrict)."""
    top = _keys(doc, TOP_KEYS, file, "")
    rule_files = top.get("rule_files") or []
    if not isinstance(rule_files, list) or not all(isinstance(r, str) for r in rule_files):
        raise _fail(file, "rule_files", "expected a list of file names")
    every = _duration(top.get("evaluation_interval", "1m"), file, "evaluation_interval")
    if every <= 0:
        raise _fail(file, "evaluation_interval", "must be more than 0")
    tests = top.get("tests") or []
    if not isinstance(tests, list):
        raise _fail(file, "tests", "expected a list")
    out = TestFile(list(rule_files), every)
    for i, raw in enumerate(tests):
        out.groups.append(_group(raw, file, f"tests[{i}]", every))
    return out


def _group(raw: Any, file: str, path: str, every: float) -> Group:
    g = _keys(raw, GROUP_KEYS, file, path)
    if g.get("promql_expr_test"):
        raise _fail(file, f"{path}.promql_expr_test", "not supported by llamamon (alert_rule_test only)")
    interval = _duration(g.get("interval", every), file, f"{path}.interval") if "interval" in g else every
    series = []
    for j, s in enumerate(g.get("input_series") or []):
        sp = f"{path}.input_series[{j}]"
        s = _keys(s, SERIES_KEYS, file, sp)
        try:
            name, labels = parse_series(str(s.get("series", "")))
            values = expand_values(s.get("values", ""))
        except ValueError as exc:
            raise _fail(file, sp, str(exc)) from None
        series.append((name, labels, values))
    replay = None
    if "replay" in g:
        replay = {k: str(v) for k, v in _keys(g["replay"], REPLAY_KEYS, file, f"{path}.replay").items()}
        if "metrics_dir" not in replay or "run" not in replay:
            raise _fail(file, f"{path}.replay", "needs metrics_dir and run")
    cases = []
    for j, c in enumerate(g.get("alert_rule_test") or []):
        cp = f"{path}.alert_rule_test[{j}]"
        c = _keys(c, ALERT_TEST_KEYS, file, cp)
        if not c.get("alertname"):
            raise _fail(file, cp, f"misses required attribute alertname at eval_time {c.get('eval_time')}")
        expected = []
        for k, e in enumerate(c.get("exp_alerts") or []):
            e = _keys(e, EXP_KEYS, file, f"{cp}.exp_alerts[{k}]")
            labels = {str(a): str(b) for a, b in (e.get("exp_labels") or {}).items()}
            ann = {str(a): str(b) for a, b in (e.get("exp_annotations") or {}).items()}
            labels["alertname"] = str(c["alertname"])
            expected.append((labels, ann))
        cases.append(
            AlertCase(_duration(c.get("eval_time", 0), file, f"{cp}.eval_time"), str(c["alertname"]), expected)
        )
    return Group(str(g.get("name", "")), interval, series, cases, replay)


def series_frame(group: Group) -> pl.DataFrame:
    """The group's input series as a store-like frame (time from the Unix epoch, like promtool)."""
    import polars as pl

    rows: dict[str, list[Any]] = {"time": [], "metric": [], "value": [], "labels": [], "stale": []}
    step = round(group.interval * US)
    for name, labels, values in group.series:
        metric, factor = metric_of(name)
        lab = labels_to_str(tuple(sorted(labels.items())))
        for k, v in enumerate(values):
            if v is None:
                continue
            rows["time"].append(k * step)
            rows["metric"].append(metric)
            rows["value"].append(math.nan if v is STALE else v * factor)
            rows["labels"].append(lab)
            rows["stale"].append(v is STALE)
    return pl.DataFrame(
        rows,
        schema={"time": pl.Int64, "metric": pl.String, "value": pl.Float64, "labels": pl.String, "stale": pl.Boolean},
    ).with_columns(pl.col("time").cast(pl.Datetime("us", "UTC")))


def _fmt_labels(d: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(d.items())) + "}"


def _fmt_alerts(items: list[tuple[dict[str, str], dict[str, str]]]) -> str:
    if not items:
        return "[]"
    body = "".join(
        f"\n            {i}:\n              Labels:{_fmt_labels(lab)}\n              Annotations:{_fmt_labels(ann)}"
        for i, (lab, ann) in enumerate(items)
    )
    return "[" + body + "\n            ]"


def _key(item: tuple[dict[str, str], dict[str, str]]) -> str:
    return _fmt_labels(item[0]) + " " + _fmt_labels(item[1])


def run_group(
    group: Group,
    rules: Sequence[Rule],
    every: float,
    replay: Callable[[dict[str, str]], pl.DataFrame] | None = None,
) -> list[str]:
    """Failures of one test group, each a readable block (empty list: the group passed)."""
    frame = replay(group.replay) if group.replay is not None and replay is not None else series_frame(group)
    if not group.cases:
        return []
    samples = prepare(frame, needed_metrics(rules))
    step = round(every * US)
    ticks = sorted({int(c.eval_time // every) for c in group.cases})
    # What fires at tick k: the episodes that fired by then and resolve after it. Why a replay up to k
    # for a rule whose annotations read $value: a firing alert shows its latest value's, which an episode
    # of the whole grid has only at its end.
    valued = {r.name: r for r in rules if any(template.reads_value(v) for v in r.annotations.values())}
    whole = history.replay(rules, samples, grid=Grid(0, step, ticks[-1] + 1))
    snapshots: dict[int, dict[str, list[tuple[dict[str, str], dict[str, str]]]]] = {}
    for k in ticks:
        t = k * step / US
        found = [a for a in whole if a.fired_at <= t and (a.resolved_at is None or a.resolved_at > t)]
        again = [valued[n] for n in sorted({a.rule for a in found if a.rule in valued})]
        if again:
            found = [a for a in found if a.rule not in valued]
            found += [a for a in history.replay(again, samples, grid=Grid(0, step, k + 1)) if a.resolved_at is None]
        snap: dict[str, list[tuple[dict[str, str], dict[str, str]]]] = {}
        for alert in found:
            snap.setdefault(alert.rule, []).append((dict(alert.labels), dict(alert.annotations)))
        snapshots[k] = snap
    failures = []
    for case in group.cases:
        got = sorted(snapshots[int(case.eval_time // every)].get(case.alertname, []), key=_key)
        exp = sorted(case.expected, key=_key)
        if [_key(x) for x in got] == [_key(x) for x in exp]:
            continue
        diff = [f"          - {_key(x)}" for x in exp if _key(x) not in {_key(g) for g in got}]
        diff += [f"          + {_key(x)}" for x in got if _key(x) not in {_key(e) for e in exp}]
        failures.append(
            f"    name: {group.name},\n"
            f"    alertname: {case.alertname}, time: {_when(case.eval_time)}, \n"
            f"        exp:{_fmt_alerts(exp)}, \n"
            f"        got:{_fmt_alerts(got)}\n"
            f"        diff (- expected only, + got only):\n" + "\n".join(diff)
        )
    return failures


def _when(seconds: float) -> str:
    from llamamon.rules.tree import duration_text

    return duration_text(seconds)
