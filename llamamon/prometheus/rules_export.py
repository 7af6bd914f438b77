"""llamamon rules -> Prometheus alerting rule groups over llamamon's exported metric names.

Exported series carry catalog Prometheus names (``llamamon_inference_latency_seconds``) and base-unit
values, so every number compared with or added to a metric is scaled from the catalog unit to the base
unit (``inference_latency > 500`` -> ``llamamon_inference_latency_seconds > 0.5``). Labels ``run`` and
``host`` exist on exported series, as in llamamon. Rules using something PromQL cannot say are listed
with the reason instead of being exported.

PromQL differences to know: binary operators between two metrics match identical label sets (llamamon
also matches series that agree on the labels they share), and ``not <comparison>`` becomes the opposite
comparison or a NaN (``not x <= 1`` -> ``x > 1 or x != x``, since a NaN compares false either way in
PromQL); between two metrics it is the opposite comparison alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamamon import catalog, units
from llamamon.prometheus.snapshot import family_name
from llamamon.rules.engine import Rule
from llamamon.rules.lang import COMPARISONS, Binary, Call, Node, Number, Selector, Unary, duration_text, to_base

_OVER_TIME = {
    "avg": "avg_over_time",
    "min": "min_over_time",
    "max": "max_over_time",
    "sum": "sum_over_time",
    "count": "count_over_time",
    "rate": "rate",
    "delta": "delta",
    "increase": "increase",
}
_FLIP = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


class Untranslatable(Exception):
    """Why a rule has no PromQL form."""


def _num(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _is_histogram(metric: str) -> bool:
    known = catalog.get(metric)
    return known is not None and known.kind == "histogram"


def _selector(sel: Selector, suffix: str = "") -> str:
    """The series selector; a histogram metric is only reachable through one of its suffixed series."""
    if _is_histogram(sel.metric) and not suffix:
        raise Untranslatable(
            f"{sel.metric} is exported as a histogram; use it inside p50/p95/p99/quantile, avg or count with a window"
        )

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ", ".join(f'{m.label}{m.op}"{esc(m.value)}"' for m in sel.matchers)
    return family_name(sel.metric) + suffix + (f"{{{inner}}}" if inner else "")


def promql(node: Node, scale: float = 1.0) -> str:
    """PromQL for a resolved condition tree; numbers are multiplied by ``scale`` (their partner's unit)."""
    if isinstance(node, Number):
        return _num(units.scale(node.value, scale))
    if isinstance(node, Selector):
        return _selector(node)
    if isinstance(node, Call):
        return _call(node)
    if isinstance(node, Unary):
        if node.op == "-":
            return f"-({promql(node.operand)})"
        return _negate(node.operand)
    assert isinstance(node, Binary)
    if node.op in ("and", "or", "unless"):
        return f"({promql(node.left)} {node.op} {promql(node.right)})"
    if node.op in ("+", "-", *COMPARISONS):
        left = promql(node.left, to_base(node.right))
        right = promql(node.right, to_base(node.left))
    else:
        left, right = promql(node.left), promql(node.right)
    return f"({left} {node.op} {right})"


def _call(node: Call) -> str:
    f = node.func
    if f == "evals_since_best":
        raise Untranslatable("evals_since_best() counts evaluations sample by sample; PromQL has no such function")
    if f == "last":
        return promql(node.args[0])
    if f == "abs":
        return f"abs({promql(node.args[0])})"
    if f in ("isnan", "isinf", "isfinite"):
        x = promql(node.args[0])
        return {
            "isnan": f"({x} != {x})",
            "isinf": f"({x} == +Inf or {x} == -Inf)",
            "isfinite": f"(({x} > -Inf) < +Inf)",
        }[f]
    window = duration_text(node.window)
    arg = node.args[1] if f == "quantile" else node.args[0]
    if isinstance(arg, Selector) and _is_histogram(arg.metric):
        return _histogram_call(f, node, arg, window)
    if f in _OVER_TIME:
        return f"{_OVER_TIME[f]}({promql(node.args[0])}[{window}])"
    sel = node.args[1] if f == "quantile" else node.args[0]
    return f"quantile_over_time({_num(node.q)}, {promql(sel)}[{window}])"


def _histogram_call(f: str, node: Call, sel: Selector, window: str) -> str:
    # Why: exported histograms have only _bucket/_sum/_count series; per-interval statistics come from
    # their rates, per label set (histogram_quantile groups by everything but le).
    if f == "quantile" or (f.startswith("p") and f[1:].isdigit()):
        return f"histogram_quantile({_num(node.q)}, rate({_selector(sel, '_bucket')}[{window}]))"
    if f == "avg":
        return f"(rate({_selector(sel, '_sum')}[{window}]) / rate({_selector(sel, '_count')}[{window}]))"
    if f == "count":
        return f"increase({_selector(sel, '_count')}[{window}])"
    raise Untranslatable(f"{f}() of the histogram {sel.metric} has no PromQL form (quantiles, avg and count do)")


def _negate(node: Node) -> str:
    if isinstance(node, Binary) and node.op in COMPARISONS:
        flipped = promql(Binary(_FLIP[node.op], node.left, node.right, node.pos))
        sides = [side for side in (node.left, node.right) if not isinstance(side, Number)]
        if len(sides) != 1:
            return flipped
        # Why the NaN branch: `not x <= 1` holds for a NaN x in llamamon, where `x > 1` never does.
        x = promql(sides[0])
        return f"({flipped} or ({x} != {x}))"
    if isinstance(node, Call) and node.func in ("isnan", "isinf", "isfinite"):
        x = promql(node.args[0])
        return {
            "isnan": f"({x} == {x})",
            "isinf": f"(({x} > -Inf) < +Inf or {x} != {x})",
            "isfinite": f"({x} != {x} or {x} == +Inf or {x} == -Inf)",
        }[node.func]
    if isinstance(node, Unary) and node.op == "not":
        return promql(node.operand)
    raise Untranslatable("'not' is only translated in front of a comparison or isnan/isinf/isfinite")


def export_rules(rules: Sequence[Rule], *, interval: float | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(Prometheus rule file YAML, [(rule, why not exported)]) for the enabled rules."""
    import yaml

    items: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for rule in rules:
        if not rule.enabled:
            continue
        try:
            expr = promql(rule.condition.tree)
        except Untranslatable as exc:
            skipped.append((rule.name, str(exc)))
            continue
        item: dict[str, Any] = {"alert": rule.name, "expr": expr}
        if rule.for_:
            item["for"] = duration_text(rule.for_)
        if rule.keep_firing_for:
            item["keep_firing_for"] = duration_text(rule.keep_firing_for)
        item["labels"] = {**rule.labels, "severity": rule.severity}
        if rule.annotations:
            item["annotations"] = dict(rule.annotations)
        items.append(item)
    group: dict[str, Any] = {"name": "llamamon"}
    if interval:
        group["interval"] = duration_text(interval)
    group["rules"] = items
    header = "# Generated by `llamamon alerts export --format prometheus`; edit monitoring.yaml instead.\n"
    return header + yaml.safe_dump({"groups": [group]}, sort_keys=False, allow_unicode=True, width=1000), skipped
