"""llamamon rules -> Prometheus alerting rule groups over llamamon's exported metric names.

Exported series carry catalog Prometheus names (``llamamon_inference_latency_seconds``) and base-unit
values, so every number compared with or added to a metric is scaled from the catalog unit to the base
unit (``inference_latency > 500`` -> ``llamamon_inference_latency_seconds > 0.5``). Labels ``run`` and
``host`` exist on exported series, as in llamamon. Rules using something PromQL cannot say are listed
with the reason instead of being exported.

Every expression is gated on the run being live (``... and on(host, run) llamamon_run_active == 1``):
each .prom file carries ``llamamon_run_active{host,run}`` (``{host}`` for watch's own), 1 while it
lives and 0 after, so a finished run's frozen last values never fire; the result keeps its labels
(every translated expression keeps the series' host and run: an aggregation across series, such as
``quantile without (rank, host, run) (...)``, only appears paired with the series it aggregates, and the
pair keeps theirs).

Binary operators between two metrics: llamamon matches series that agree on the labels they share,
PromQL only identical label sets. Where the catalog knows both sides' label names (built-in collector
metrics: ``gpu_utilization`` has ``gpu``, ``memory_usage`` none besides host and run) the export says
``on(<shared>)``, with ``group_left``/``group_right`` for comparisons and arithmetic, and refuses a
pair where neither side's labels include the other's (PromQL has no many-to-many arithmetic). Where a
side's labels are the job's or a server's, the rule is exported with PromQL's matching and a warning.
``not <comparison>`` becomes the opposite comparison or a NaN (``not x <= 1`` -> ``x > 1 or x != x``,
since a NaN compares false either way in PromQL); between two metrics it is the opposite comparison alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamamon import catalog, units
from llamamon.prometheus.snapshot import family_name
from llamamon.rules.model import Rule
from llamamon.rules.tree import (
    COMPARISONS,
    Aggregate,
    Binary,
    Call,
    Node,
    Number,
    Selector,
    Unary,
    aggregate_text,
    duration_text,
    render,
    selectors,
    subtrees,
    to_base,
)

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
# Labels every exported llamamon series has (watch's own file: host only, run then matches as "").
HOST_RUN = frozenset({"host", "run"})
LIVE = "llamamon_run_active == 1"


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
            f"{sel.metric} is exported as a histogram; use it inside p50/p95/p99/quantile, avg, count or sum with a window"
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
    if isinstance(node, Aggregate):
        # Why gated inside: a finished run's frozen last values stay in its file a while; in llamamon
        # nothing of a run answers after its end, so they must not move the median of the live ones.
        return aggregate_text(node, live_only(promql(node.arg)))
    if isinstance(node, Unary):
        if node.op == "-":
            return f"-({promql(node.operand)})"
        return _negate(node.operand)
    assert isinstance(node, Binary)
    if node.op in ("and", "or", "unless"):
        return f"({promql(node.left)} {node.op}{_matching(node)} {promql(node.right)})"
    if node.op in ("+", "-", *COMPARISONS):
        left = promql(node.left, to_base(node.right))
        right = promql(node.right, to_base(node.left))
    else:
        left, right = promql(node.left), promql(node.right)
    return f"({left} {node.op}{_matching(node)} {right})"


def _is_scalar(node: Node) -> bool:
    if isinstance(node, Number):
        return True
    if isinstance(node, Unary):
        return node.op == "-" and _is_scalar(node.operand)
    return isinstance(node, Binary) and _is_scalar(node.left) and _is_scalar(node.right)


def label_names(node: Node) -> frozenset[str] | None:
    """The label names of a vector expression's series (host and run included); None: not known here."""
    if isinstance(node, Selector):
        known = catalog.get(node.metric)
        return None if known is None or known.labels is None else HOST_RUN | frozenset(known.labels)
    if isinstance(node, Call):
        return label_names(node.args[1] if node.func == "quantile" else node.args[0])
    if isinstance(node, Aggregate):
        inner = label_names(node.arg)
        if node.by:
            return frozenset(node.labels) if inner is None else inner & frozenset(node.labels)
        return None if inner is None else inner - frozenset(node.labels)
    if isinstance(node, Unary):
        return label_names(node.operand)
    assert isinstance(node, Binary)
    if _is_scalar(node.left) or _is_scalar(node.right):
        return label_names(node.right if _is_scalar(node.left) else node.left)
    left, right = label_names(node.left), label_names(node.right)
    if node.op in ("and", "unless"):
        return left
    if node.op == "or":
        return left if left == right else None
    if left is not None and right is not None:
        return left | right
    # One side has only host and run: every series of the other agrees with it on all of them.
    return right if left == HOST_RUN else left if right == HOST_RUN else None


def _sides(node: Binary) -> tuple[frozenset[str] | None, frozenset[str] | None] | None:
    """Both operands' label names for a vector-vector operator whose matching matters; None otherwise."""
    if node.op == "or" or _is_scalar(node.left) or _is_scalar(node.right):
        return None  # `or` matches identical label sets in llamamon too
    left, right = label_names(node.left), label_names(node.right)
    if left is not None and left == right:
        return None
    # Both sides of one series (max(x, 5m) == min(x, 5m)): identical label sets, whatever x's labels are.
    same = {(s.metric, s.matchers) for s in selectors(node.left)} == {
        (s.metric, s.matchers) for s in selectors(node.right)
    }
    return None if same and len({s.metric for s in selectors(node)}) == 1 else (left, right)


def _aggregated(node: Node) -> Aggregate | None:
    """The aggregation an operand is, maybe scaled by a number (``1.25 * quantile by (job) (...)``)."""
    if isinstance(node, Aggregate):
        return node
    if isinstance(node, Unary) and node.op == "-":
        return _aggregated(node.operand)
    if isinstance(node, Binary) and node.op in ("+", "-", "*", "/"):
        if _is_scalar(node.right):
            return _aggregated(node.left)
        if _is_scalar(node.left):
            return _aggregated(node.right)
    return None


def _aggregate_matching(node: Binary) -> str | None:
    """An operator between a series and an aggregation of such series: PromQL pairs them on the labels the
    aggregation kept (``ignoring`` what ``without`` dropped, ``on`` what ``by`` kept), one to many, as
    llamamon pairs series that agree on the labels both carry; None where no single side aggregates."""
    if node.op == "or" or _is_scalar(node.left) or _is_scalar(node.right):
        return None
    left, right = _aggregated(node.left), _aggregated(node.right)
    agg = left or right
    if agg is None or (left is not None and right is not None):
        return None
    match = f" {'on' if agg.by else 'ignoring'}({', '.join(agg.labels)})"
    if node.op in ("and", "unless"):
        return match
    return match + (" group_right()" if left is not None else " group_left()")  # (the "()": see _matching)


def _matching(node: Binary) -> str:
    """`` on(...)`` [``group_left``/``group_right``] so PromQL pairs the series llamamon pairs; "" if equal."""
    aggregated = _aggregate_matching(node)
    if aggregated is not None:
        return aggregated
    sides = _sides(node)
    if sides is None:
        return ""
    left, right = sides
    if None in (left, right) and HOST_RUN not in (left, right):
        return ""  # unknown label names: exported as is, with a warning (mismatch_warnings)
    if left is not None and right is not None:
        shared, smaller = left & right, left if left <= right else right if right <= left else None
    else:
        shared = smaller = HOST_RUN  # the known side has only host and run; the other has them too
    on = f" on({', '.join(sorted(shared))})"
    if node.op in ("and", "unless"):
        return on
    if smaller is None:
        raise Untranslatable(
            f"{render(node.left)} {node.op} {render(node.right)}: each side has labels the other lacks "
            f"({', '.join(sorted(left - right))} / {', '.join(sorted(right - left))}); "
            "PromQL cannot pair such series one to many"
        )
    # Why "()": a "(" after a bare group_left (``x > on(host) group_left (y * 2)``) is read as its label list.
    return on + (" group_left()" if smaller == right else " group_right()")


def mismatch_warnings(node: Node) -> list[str]:
    """Why a translated expression may never fire where llamamon's does: operands with unknown label names."""
    out = []
    for sub in subtrees(node):
        if isinstance(sub, Binary) and (sides := _sides(sub)) is not None and not _matching(sub):
            unknown = [render(side) for side, names in zip((sub.left, sub.right), sides, strict=True) if names is None]
            out.append(
                f"{render(sub.left)} {sub.op} {render(sub.right)}: the labels of {' and '.join(unknown)} are "
                "the job's or a server's, so PromQL matches identical label sets only (llamamon pairs series "
                "that agree on the labels they share); give both sides the same labels or check the export"
            )
    return out


def live_only(expr: str) -> str:
    """``expr`` where its run (or watch) is live: a finished run's last values, left in its file, never fire."""
    return f"{expr if _wrapped(expr) else f'({expr})'} and on(host, run) {LIVE}"


def _wrapped(expr: str) -> bool:
    """Whether ``expr`` is one parenthesised expression (its first "(" closes at the very end)."""
    if not expr.startswith("("):
        return False
    depth, quoted, escaped = 0, False, False
    for i, ch in enumerate(expr):
        if quoted:
            quoted = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            quoted = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(expr) - 1
    return False


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
    if f == "sum":
        return f"increase({_selector(sel, '_sum')}[{window}])"
    raise Untranslatable(f"{f}() of the histogram {sel.metric} has no PromQL form (quantiles, avg, count and sum do)")


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


WATCH_DOWN = "llamamon_watch_down"


def watch_stale_after(interval: float, refresh: float) -> float:
    """Seconds without a new sample after which watch counts as down: three rewrites of its file, at least
    2 minutes (so a Prometheus scraping node_exporter every minute never sees a live watch as stale)."""
    return max(120.0, 3 * max(interval, refresh))


def watch_down_rule(stale_after: float) -> dict[str, Any]:
    """The alert for a ``llamamon watch`` that stopped: its file (``{host}``, no run label) went stale, says
    ``run_active 0``, or is gone (a host that had it within the hour and has it no more)."""
    last = family_name("last_sample") + '{run=""}'
    active = family_name("run_active") + '{run=""}'
    expr = (
        f"(time() - {last} > {_num(stale_after)}) or ({active} == 0) or (max_over_time({active}[1h]) unless {active})"
    )
    summary = "llamamon watch on {{ $labels.host }} is not running: no live alerting for its runs"
    return {"alert": WATCH_DOWN, "expr": expr, "labels": {"severity": "warning"}, "annotations": {"summary": summary}}


def export_rules(
    rules: Sequence[Rule], *, interval: float | None = None, watch_stale: float | None = None
) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    """(Prometheus rule file YAML, [(rule, why not exported)], [(rule, warning)]) for the enabled rules.

    ``watch_stale`` (seconds) adds ``llamamon_watch_down`` (``watch_down_rule``).
    """
    import yaml

    items: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for rule in rules:
        if not rule.enabled:
            continue
        try:
            expr = live_only(promql(rule.condition.tree))
        except Untranslatable as exc:
            skipped.append((rule.name, str(exc)))
            continue
        warnings.extend((rule.name, why) for why in mismatch_warnings(rule.condition.tree))
        item: dict[str, Any] = {"alert": rule.name, "expr": expr}
        if rule.for_:
            item["for"] = duration_text(rule.for_)
        if rule.keep_firing_for:
            item["keep_firing_for"] = duration_text(rule.keep_firing_for)
        item["labels"] = {**rule.labels, "severity": rule.severity}
        if rule.annotations:
            item["annotations"] = dict(rule.annotations)
        items.append(item)
    if watch_stale is not None:
        items.append(watch_down_rule(watch_stale))
    group: dict[str, Any] = {"name": "llamamon"}
    if interval:
        group["interval"] = duration_text(interval)
    group["rules"] = items
    header = "# Generated by `llamamon alerts export --format prometheus`; edit monitoring.yaml instead.\n"
    text = header + yaml.safe_dump({"groups": [group]}, sort_keys=False, allow_unicode=True, width=1000)
    return text, skipped, warnings
