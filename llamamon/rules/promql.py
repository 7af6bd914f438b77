"""PromQL's meaning of numbers and labels, the one definition both rule evaluators use.

Why one module: the history evaluator (``rules.history``, polars over a grid of ticks) and the live one
(``rules.instant``, plain Python at one instant) must give the same answers; where they compute a value the
same way (a comparison, a division by zero, NaN in a window, which series pair up across an operator) they
call these functions instead of keeping two copies that could drift. Pure: no polars, no I/O.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from llamamon.rules import histogram
from llamamon.rules.tree import COMPARISONS, SET_OPS, Aggregate, Binary, Call, Node, Number, Selector, Unary
from llamamon.samples import labels_from_str

US = 1_000_000
LOOKBACK = 300.0  # seconds, Prometheus' default lookback delta
# Windows of at most this many samples are summed in order (see neumaier_sum); longer ones by prefix sums.
SHORT_WINDOW = 16

V = TypeVar("V")


class NodeDispatch(ABC, Generic[V]):
    """A condition tree's node to the evaluator's method for its kind (numbers are their value), and a
    function call to the method for that function.

    Why a base class: both evaluators walk the same node kinds and functions; one dispatch keeps them
    from disagreeing on which method a node goes to.
    """

    def eval(self, node: Node) -> V | float:
        return self.dispatch(node)

    def dispatch(self, node: Node) -> V | float:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Selector):
            return self.instant(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Aggregate):
            return self.aggregate(node)
        if isinstance(node, Unary):
            return self.unary(node)
        assert isinstance(node, Binary)
        return self.binary(node)

    @abstractmethod
    def instant(self, sel: Selector) -> V: ...

    def call(self, node: Call) -> V | float:
        f = node.func
        if f in ("abs", "isnan", "isinf", "isfinite"):
            return self.value_function(node)
        if f == "last":
            return self.instant(node.args[0])  # type: ignore[arg-type]
        if f == "evals_since_best":
            return self.since_best(node.args[0])  # type: ignore[arg-type]
        own = self.window(node, histogram.selector_of(node))
        return histogram.with_buckets(node, own, self.eval, self.bucket_quantiles, self.concat)

    @abstractmethod
    def value_function(self, node: Call) -> V | float: ...

    @abstractmethod
    def since_best(self, sel: Selector) -> V: ...

    @abstractmethod
    def window(self, node: Call, sel: Selector) -> V: ...

    @abstractmethod
    def bucket_quantiles(self, node: Call, res: V, metric: Any) -> V: ...

    @staticmethod
    @abstractmethod
    def concat(a: V, b: V) -> V: ...

    @abstractmethod
    def aggregate(self, node: Aggregate) -> V:
        """``op by/without (labels) (expr)``: per group of series (``aggregate_groups``) and instant, the
        values of its series where ``expr`` holds, combined by ``aggregate_value``."""

    def unary(self, node: Unary) -> V | float:
        arg = self.eval(node.operand)
        if isinstance(arg, (int, float)):
            return -arg if node.op == "-" else float(not arg)
        return self.negated(arg) if node.op == "-" else self.inverted(arg)

    def binary(self, node: Binary) -> V | float:
        left, right = self.eval(node.left), self.eval(node.right)
        numbers = isinstance(left, (int, float)), isinstance(right, (int, float))
        if all(numbers):
            return scalar_op(node.op, left, right)  # type: ignore[arg-type]
        if node.op in SET_OPS:
            if any(numbers):
                raise TypeError("lang.parse rejects set operators without a metric on both sides")
            return self.set_operation(node.op, left, right)  # type: ignore[arg-type]
        return self.operation(node.op, left, right)

    @abstractmethod
    def negated(self, arg: V) -> V: ...

    @abstractmethod
    def inverted(self, arg: V) -> V:
        """``not``: each series' truth flipped, its value kept."""

    @abstractmethod
    def set_operation(self, op: str, left: V, right: V) -> V: ...

    @abstractmethod
    def operation(self, op: str, left: V | float, right: V | float) -> V:
        """An arithmetic or comparison operator with a vector on at least one side."""


def series_labels(labels: str, run: str, host: str) -> dict[str, str]:
    """A stored series' label set as rules match it: its labels plus ``run`` and ``host`` where known."""
    found = dict(labels_from_str(labels))
    if run:
        found["run"] = run
    if host:
        found["host"] = host
    return found


def matches(m: Any, labels: dict[str, str]) -> bool:
    """One label matcher (``=``, ``!=``, ``=~``, ``!~``; regexes anchored as PromQL's) against a label set."""
    have = labels.get(m.label, "")
    if m.op == "=":
        return have == m.value
    if m.op == "!=":
        return have != m.value
    hit = re.fullmatch(m.value, have) is not None
    return hit if m.op == "=~" else not hit


def agree(a: dict[str, str], b: dict[str, str]) -> bool:
    """Two series match across a binary operator when they agree on every label both carry."""
    return all(b[k] == v for k, v in a.items() if k in b)


def matching(
    left: list[dict[str, str]], right: list[dict[str, str]], *, exact: bool = False
) -> Iterator[tuple[int, int]]:
    """(left index, right index) of every pair of series that ``agree`` (``exact``: identical labels),
    ordered by left then right index, as a loop over every pair would give them.

    Why by hashing: a pair agrees when the right series' values on the labels both carry are the left
    one's; right series carrying the same label names are indexed by those values once, so each left
    series costs one lookup per kind of label set, not a comparison with each right series (a million
    comparisons across a 512-rank job).
    """
    kinds: dict[frozenset[str], list[int]] = {}
    for j, b in enumerate(right):
        kinds.setdefault(frozenset(b), []).append(j)
    indexes: dict[tuple[frozenset[str], frozenset[str]], tuple[tuple[str, ...], dict[tuple[str, ...], list[int]]]] = {}
    for i, a in enumerate(left):
        names = frozenset(a)
        found: list[int] = []
        for kind, members in kinds.items():
            if exact and kind != names:
                continue
            if (names, kind) not in indexes:
                shared = tuple(sorted(names & kind))
                index: dict[tuple[str, ...], list[int]] = {}
                for j in members:
                    index.setdefault(tuple(right[j][k] for k in shared), []).append(j)
                indexes[names, kind] = shared, index
            shared, index = indexes[names, kind]
            found += index.get(tuple(a[k] for k in shared), ())
        for j in sorted(found) if len(kinds) > 1 else found:
            yield i, j


def pair_series(
    left: list[dict[str, str]], right: list[dict[str, str]], *, exact: bool = False
) -> tuple[list[tuple[int, int, int]], list[dict[str, str]]]:
    """(left sid, right sid, output sid) for the series that pair up, and the output series' labels.

    Pairs agree on every shared label (``exact``: identical labels); the first pair of each merged label
    set counts, a later pair giving the same labels is dropped.
    """
    rows: list[tuple[int, int, int]] = []
    out: list[dict[str, str]] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for i, j in matching(left, right, exact=exact):
        merged = {**right[j], **left[i]}
        key = tuple(sorted(merged.items()))
        if key not in seen:
            seen.add(key)
            rows.append((i, j, len(out)))
            out.append(merged)
    return rows, out


def aggregate_groups(node: Aggregate, labels: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[int]]:
    """The output series of an aggregation (label sets, in order of first appearance) and each input
    series' group: ``by`` keeps the listed labels, ``without`` every other (as PromQL groups)."""
    keep = set(node.labels)
    groups: list[dict[str, str]] = []
    index: dict[tuple[tuple[str, str], ...], int] = {}
    member: list[int] = []
    for lab in labels:
        out = {k: v for k, v in lab.items() if (k in keep) == node.by}
        key = tuple(sorted(out.items()))
        if key not in index:
            index[key] = len(groups)
            groups.append(out)
        member.append(index[key])
    return groups, member


def aggregate_value(op: str, q: float, values: list[float]) -> float:
    """One group's value at one instant from its series' values (in series order), as PromQL's aggregators:
    a NaN makes sum and avg NaN (so do both infinities), min and max skip it unless all are NaN."""
    if op == "count":
        return float(len(values))
    if op in ("min", "max"):
        return window_extreme(op, values)
    if op == "quantile":
        return window_quantile(values, q)
    nan, pinf, ninf = any(v != v for v in values), math.inf in values, -math.inf in values
    if nan or (pinf and ninf):
        total = math.nan
    elif pinf or ninf:
        total = math.inf if pinf else -math.inf
    else:
        total = neumaier_sum(values)
    return total if op == "sum" else total / len(values)


def neumaier_sum(values: Iterable[float]) -> float:
    """Compensated sum of finite values, as PromQL's sum_over_time adds (kahanSumInc, Neumaier's variant)."""
    acc = comp = 0.0
    for v in values:
        t = acc + v
        comp += (acc - t) + v if abs(acc) >= abs(v) else (v - t) + acc
        acc = t
    return acc + comp


def window_extreme(f: str, values: Iterable[float]) -> float:
    """min/max over a window as PromQL's min_over_time/max_over_time: NaN only when every value is NaN."""
    kept = [v for v in values if v == v]
    if not kept:
        return math.nan
    return min(kept) if f == "min" else max(kept)


def window_quantile(values: Iterable[float], q: float) -> float:
    """PromQL's quantile_over_time: NaN sorts first, ``lo * (1 - w) + hi * w`` (so inf * 0 gives NaN)."""
    values = list(values)
    # NaN first, in the order given, then the numbers sorted (a stable sort, as a sort on (is number, number)).
    vals = [v for v in values if v != v]
    vals += sorted(v for v in values if v == v)
    return ranked_quantile(vals, q)


def group_quantiles(values: Any, lengths: Any, q: float) -> Any:
    """``window_quantile`` of each run of ``lengths`` consecutive values (numpy float64 arrays), at once.

    Why: an aggregation's quantile (the straggler rule's median rank per node and tick) is tens of
    thousands of small groups; numpy's stable sort by (group, NaN first, value) puts each group in the
    order ``window_quantile`` sorts it (equal numbers, 0.0 and -0.0, keep theirs), and the interpolation
    is the same float operations on arrays.
    """
    import numpy as np

    group = np.repeat(np.arange(lengths.size), lengths)
    ordered = values[np.lexsort((values, ~np.isnan(values), group))]
    first = np.cumsum(lengths) - lengths
    rank = q * (lengths - 1).astype(np.float64)
    lo = np.floor(rank)
    weight = rank - lo
    lo_at = first + lo.astype(np.int64)
    hi_at = first + np.minimum(lengths - 1, lo.astype(np.int64) + 1)
    with np.errstate(invalid="ignore"):  # (inf * 0 is NaN, as in Python)
        return ordered[lo_at] * (1 - weight) + ordered[hi_at] * weight


def ranked_quantile(ordered: Any, q: float) -> float:
    """``window_quantile`` of values already in its order (a list, or a numpy array sorted as ``sorted``)."""
    rank = q * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(len(ordered) - 1, lo + 1)
    weight = rank - lo
    return float(ordered[lo]) * (1 - weight) + float(ordered[hi]) * weight


def divide(a: float, b: float) -> float:
    """IEEE division, as polars divides (x/0 is ±inf, 0/0 NaN)."""
    if b != 0:
        return a / b
    if a == 0 or a != a:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return divide(a, b)


def holds(op: str, a: float, b: float) -> bool:
    """A comparison on two numbers; Python's float comparisons are IEEE already (NaN false, != true)."""
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "==":
        return a == b
    return a != b


def scalar_op(op: str, a: float, b: float) -> float:
    """An operator between two numbers: a comparison gives 1.0 or 0.0, as PromQL's ``bool`` does."""
    return float(holds(op, a, b)) if op in COMPARISONS else arith(op, a, b)
