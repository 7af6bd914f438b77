"""Window functions on a catalog histogram metric, computed from its stored buckets as PromQL does.

A scraped latency histogram is stored whole (``catalog.histogram_parts``: cumulative ``_bucket{le}``,
``_sum`` and ``_count`` in seconds). ``p95(inference_latency, 5m)`` then means what a Prometheus user
writes as ``histogram_quantile(0.95, rate(x_bucket[5m]))``: one value per series (its labels without
``le``), so one alert per incident. ``avg`` is ``rate(x_sum) / rate(x_count)``, ``count`` is
``increase(x_count)`` and ``sum`` ``increase(x_sum)``, each in the catalog unit (ms). Samples a job logs
under the metric's own name stay observations, one a sample, and both engines evaluate them as before,
beside these. Shared by ``rules.history_compiler`` (offline) and ``rules.instant`` (live): the trees and the
quantile here are the only place their histogram answers come from, so they agree to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from llamamon import catalog, units
from llamamon.rules.tree import Binary, Call, Node, Number, Selector

V = TypeVar("V")

QUANTILE_FUNCS = frozenset({"quantile", "p50", "p90", "p95", "p99"})
FUNCS = QUANTILE_FUNCS | {"avg", "count", "sum"}


def metric_of(node: Call) -> catalog.Metric | None:
    """The catalog histogram whose buckets a window function also reads; None for any other call."""
    if node.func not in FUNCS:
        return None
    metric = catalog.BY_NAME.get(selector_of(node).metric)
    return metric if metric is not None and metric.kind == "histogram" else None


def with_buckets(
    node: Call,
    own: V,
    evaluate: Callable[[Node], Any],  # the engine's eval: a parts tree always gives its vector
    quantiles: Callable[[Call, V, catalog.Metric], V],
    concat: Callable[[V, V], V],
) -> V:
    """A window function's answer in either engine: its samples' (``own``), and for a catalog histogram its
    buckets' beside: ``evaluate`` gives the parts' rates (``parts_tree``), ``quantiles`` turns bucket rates
    into a quantile per series."""
    metric = metric_of(node)
    if metric is None:
        return own
    parts = evaluate(parts_tree(node, metric))
    return concat(own, quantiles(node, parts, metric) if node.func in QUANTILE_FUNCS else parts)


def selector_of(node: Call) -> Selector:
    sel = node.args[1] if node.func == "quantile" else node.args[0]
    assert isinstance(sel, Selector)
    return sel


def parts_tree(node: Call, metric: catalog.Metric) -> Node:
    """The call over the histogram's part series: the buckets' rates for a quantile (grouped by the
    caller), else the whole value in the catalog unit."""
    sel = selector_of(node)
    bucket, total, count = catalog.histogram_parts(metric.name)

    def over(func: str, part: str) -> Call:
        return Call(func, (Selector(part, sel.matchers, sel.pos, part),), node.pos, node.window)

    def scaled(tree: Node) -> Node:
        factor = in_unit(metric, 1.0)  # seconds -> ms: 1000
        return tree if factor == 1.0 else Binary("*", tree, Number(factor, None, repr(factor), node.pos), node.pos)

    if node.func in QUANTILE_FUNCS:
        return over("rate", bucket)
    if node.func == "avg":
        return scaled(Binary("/", over("rate", total), over("rate", count), node.pos))
    if node.func == "sum":
        return scaled(over("increase", total))
    return over("increase", count)


def group_buckets(labels: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[tuple[int, float] | None]]:
    """Bucket series -> the series they make up (labels without ``le``) and, per bucket, (group, bound).

    A series without a parseable ``le`` is left out (None), as Prometheus skips it.
    """
    groups: list[dict[str, str]] = []
    index: dict[tuple[tuple[str, str], ...], int] = {}
    member: list[tuple[int, float] | None] = []
    for lab in labels:
        try:
            bound = float(lab["le"])
        except (KeyError, ValueError):
            member.append(None)
            continue
        rest = {k: v for k, v in lab.items() if k != "le"}
        key = tuple(sorted(rest.items()))
        if key not in index:
            index[key] = len(groups)
            groups.append(rest)
        member.append((index[key], bound))
    return groups, member


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs, step for step.

    (promql/quantile.go bucketQuantile: equal bounds coalesce, counts are forced monotonic, the +Inf
    bucket is needed, the highest finite bound answers for the +Inf bucket, linear inside a bucket.)
    """
    if q != q:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets, key=lambda b: b[0])
    if not ordered or ordered[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in ordered:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    top = -math.inf
    for b in merged:
        if b[1] > top:
            top = b[1]
        elif b[1] < top:
            b[1] = top
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    i = next((j for j in range(len(merged) - 1) if merged[j][1] >= rank), len(merged) - 1)
    if i == len(merged) - 1:
        return merged[-2][0]
    if i == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[i][0], merged[i][1]
    if i > 0:
        start = merged[i - 1][0]
        count -= merged[i - 1][1]
        rank -= merged[i - 1][1]
    return start + (end - start) * _divide(rank, count)


def _divide(a: float, b: float) -> float:
    """Go's float division (x/0 is ±Inf, 0/0 NaN)."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or a != a else math.copysign(math.inf, a)


def in_unit(metric: catalog.Metric, seconds: float) -> float:
    """A quantile of the buckets (base unit) in the catalog unit the rule's numbers are in."""
    return units.unscale(seconds, catalog.UNITS[metric.unit].to_base)
