"""A tiny, safe template syntax for alert labels and annotations, compatible with Prometheus' common use.

``{{ $value }}``, ``{{ $labels.gpu }}``, ``{{ $value | printf "%.1f" }}``, ``{{ $value | humanize }}``,
``{{ $value | humanizePercentage }}``, ``{{ $value | humanizeDuration }}``. Nothing is evaluated: the text
between braces must match this grammar, checked once when the rule is loaded (``check``), so a typo
is a config error and not a surprise when an alert fires. ``$value`` prints like Go's ``%v`` (what
Prometheus prints), so the same rule gives the same text under llamamon and Prometheus.

An alert's labels and annotations are a rule's templates rendered for one series and value
(``alert_labels``, ``annotations``); both evaluators and the history's episodes build them here.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from llamamon import units
from llamamon.rules.tree import to_base
from llamamon.samples import Labels, make_labels

if TYPE_CHECKING:
    from llamamon.rules.model import Rule

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_TERM = re.compile(r"^\$(value|labels\.([A-Za-z_][A-Za-z0-9_]*)|labels)$")
_PIPE = re.compile(r'^(printf\s+"((?:[^"\\]|\\.)*)"|humanize|humanizePercentage|humanizeDuration|humanize1024)$')
_PRINTF = re.compile(r"^%([-+ 0#]*)(\d*)(?:\.(\d+))?([dfegsvGE])$")


class TemplateError(ValueError):
    """The template text does not follow the grammar above; the message says where."""


def check(text: str) -> None:
    """Raise TemplateError for any ``{{ ... }}`` that is not a known form."""
    for m in _ACTION.finditer(text):
        _parse_action(m.group(1))
    rest = _ACTION.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise TemplateError("unbalanced {{ or }}")


def _parse_action(body: str) -> tuple[str, str | None, list[tuple[str, str | None]]]:
    parts = [p.strip() for p in body.split("|")]
    term = _TERM.match(parts[0])
    if term is None:
        raise TemplateError(f"unknown template term {{{{ {body} }}}} (use $value or $labels.NAME)")
    pipes: list[tuple[str, str | None]] = []
    for part in parts[1:]:
        pm = _PIPE.match(part)
        if pm is None:
            raise TemplateError(f"unknown template function in {{{{ {body} }}}}")
        if pm.group(2) is not None:
            fmt = pm.group(2)
            if _PRINTF.match(fmt) is None:
                raise TemplateError(f"unsupported printf format {fmt!r} (use e.g. %.2f, %d, %g, %s)")
            pipes.append(("printf", fmt))
        else:
            pipes.append((part, None))
    return term.group(1).split(".")[0], term.group(2), pipes


def render(text: str, value: float, labels: dict[str, str]) -> str:
    def action(m: re.Match[str]) -> str:
        kind, label, pipes = _parse_action(m.group(1))
        current: float | str
        if kind == "value":
            current = value
        elif label is not None:
            current = labels.get(label, "<no value>")
        else:
            current = "map[" + " ".join(f"{k}:{v}" for k, v in sorted(labels.items())) + "]"
        for name, arg in pipes:
            current = _apply(name, arg, current)
        return current if isinstance(current, str) else go_float(current)

    return _ACTION.sub(action, text)


def _apply(name: str, arg: str | None, current: float | str) -> str:
    number = _to_float(current)
    if name == "printf":
        assert arg is not None
        m = _PRINTF.match(arg)
        assert m is not None
        verb = m.group(4)
        if verb in "sv":
            return current if isinstance(current, str) else go_float(current)
        if number is None:
            return f"%!{verb}(string={current})"
        if verb == "d":
            return ("%" + m.group(1) + m.group(2) + "d") % int(number) if math.isfinite(number) else go_float(number)
        return ("%" + arg[1:]) % number
    if number is None:
        return str(current)
    if name == "humanizePercentage":
        return _g4(number * 100) + "%"
    if name == "humanizeDuration":
        return _duration(number)
    if name == "humanize1024":
        return _humanize1024(number)
    return _humanize(number)


def _to_float(current: float | str) -> float | None:
    if isinstance(current, float):
        return current
    try:
        return float(current)
    except ValueError:
        return None


def _g4(v: float) -> str:
    """Go's %.4g."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.4g}"


def _small(v: float) -> tuple[float, str]:
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return v, prefix


def _humanize(v: float) -> str:
    """Prometheus' humanize: 1234 -> 1.234k, 0.0012 -> 1.2m."""
    if v == 0 or not math.isfinite(v):
        return _g4(v)
    if abs(v) >= 1:
        return _large(v, 1000, ("k", "M", "G", "T", "P", "E", "Z", "Y"))
    v, prefix = _small(v)
    return _g4(v) + prefix


def _humanize1024(v: float) -> str:
    if abs(v) <= 1 or not math.isfinite(v):
        return _g4(v)
    return _large(v, 1024, ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"))


def _large(v: float, base: int, prefixes: tuple[str, ...]) -> str:
    """``v`` divided by ``base`` until under it, with the prefix of the last division."""
    prefix = ""
    for p in prefixes:
        if abs(v) < base:
            break
        prefix, v = p, v / base
    return _g4(v) + prefix


def _duration(v: float) -> str:
    """Prometheus' humanizeDuration: 90 -> 1m 30s, 0.25 -> 250ms."""
    if not math.isfinite(v):
        return _g4(v)
    if v == 0:
        return "0s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        whole = int(v)
        seconds, minutes, hours, days = whole % 60, whole // 60 % 60, whole // 3600 % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(v)}s"
    v, prefix = _small(v)
    return f"{_g4(v)}{prefix}s"


def go_float(v: float) -> str:
    """``v`` as Go's ``fmt.Sprint`` writes a float64 (Prometheus' ``{{ $value }}``): 0.95, 1e+06, NaN, +Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1, v) < 0 else "0"
    from decimal import Decimal  # only when a value is written out: `record` starts without it

    sign, digits, exp = Decimal(repr(v)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    x = len(ds) - 1 + int(exp)  # decimal exponent of the first digit
    prefix = "-" if sign else ""
    if x < -4 or x >= 6:  # Go: %e when the exponent is < -4 or >= 6 (shortest precision)
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{prefix}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if x < 0:
        return f"{prefix}0.{'0' * (-x - 1)}{ds}"
    if len(ds) <= x + 1:
        return prefix + ds + "0" * (x + 1 - len(ds))
    return f"{prefix}{ds[: x + 1]}.{ds[x + 1 :]}"


def _base(rule: Rule, value: float) -> float:
    # Why: templates see $value in base units (seconds, bytes), as Prometheus does on exported series.
    return units.scale(value, to_base(rule.condition.tree))


def alert_labels(rule: Rule, series: dict[str, str], value: float) -> dict[str, str]:
    """Series labels + rule labels (templated) + alertname + severity, as Prometheus builds them."""
    labels = dict(series)
    for k, v in rule.labels.items():
        labels[k] = render(v, _base(rule, value), series)
    labels["severity"] = rule.severity
    labels["alertname"] = rule.name
    return labels


def annotations(rule: Rule, series: dict[str, str], value: float) -> Labels:
    return make_labels({k: render(v, _base(rule, value), series) for k, v in rule.annotations.items()})


class AlertTexts:
    """One rule's alert labels and annotations per series and value, rendered once per series where
    no template reads ``$value``.

    Why: a flapping condition gives thousands of episodes of the same few series; rendering the same
    templates and sorting the same labels for each one cost more than finding the episodes.
    """

    def __init__(self, rule: Rule, series: list[dict[str, str]]) -> None:
        self.rule = rule
        self.series = series
        self.fixed_labels = not any(reads_value(v) for v in rule.labels.values())
        self.fixed_annotations = not any(reads_value(v) for v in rule.annotations.values())
        self.labels: dict[int, Labels] = {}
        self.annotations: dict[int, Labels] = {}

    def labels_of(self, sid: int, value: float) -> Labels:
        labels = self.labels.get(sid) if self.fixed_labels else None
        if labels is None:
            labels = make_labels(alert_labels(self.rule, self.series[sid], value))
            if self.fixed_labels:
                self.labels[sid] = labels
        return labels

    def annotations_of(self, sid: int, value: float) -> Labels:
        ann = self.annotations.get(sid) if self.fixed_annotations else None
        if ann is None:
            ann = annotations(self.rule, self.series[sid], value)
            if self.fixed_annotations:
                self.annotations[sid] = ann
        return ann


def reads_value(text: str) -> bool:
    # Why a substring test is enough: the template grammar's only way to the value is the term $value.
    return "$value" in text
