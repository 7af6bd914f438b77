"""Conditions evaluated at one instant over in-memory series, in plain Python: the live loop's evaluator.

Why not the history evaluator (``rules.history``) here: it compiles a condition into polars operations over a grid of ticks, the
right tool for a history; for one tick over a trailing window it costs hundreds of tiny polars calls
(tens of ms) plus polars' import, which ``record`` would pay every evaluation and at exit. Here each
selector is a binary search into sorted per-series lists and each window a slice of them.

Same answers as the history evaluator on a one-tick grid (``tests/test_rules_instant.py``, the contract
between the two), including where the vectorised code leans on polars' ordering of NaN above every number
(``_lt``: counter resets, ``evals_since_best``, rate extrapolation); what both compute alike (comparisons,
division, NaN in windowed min/max/quantiles, which series pair up) is ``rules.promql``'s. Pure: no I/O,
no clock.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.rules import histogram
from llamamon.rules.promql import (
    LOOKBACK,
    SHORT_WINDOW,
    US,
    NodeDispatch,
    aggregate_groups,
    aggregate_value,
    agree,
    arith,
    divide,
    holds,
    matches,
    neumaier_sum,
    pair_series,
    window_extreme,
    window_quantile,
)
from llamamon.rules.tree import COMPARISONS, Aggregate, Call, Node, Selector
from llamamon.samples import AlertEvent, Labels, make_labels

if TYPE_CHECKING:
    from llamamon.rules.model import Rule
    from llamamon.rules.states import AlertStates


@dataclass(slots=True)
class Best:
    """``evals_since_best`` over samples no longer in the window: how many, their minimum and where it was.

    Why: the count spans the run (the offline engine sees all of it), while the live window keeps minutes.
    """

    count: int
    value: float
    index: int  # of the last new minimum, counted from the series' first sample


def fold_best(best: Best | None, values: Sequence[float], stop: int | None = None) -> Best | None:
    """``best`` advanced over ``values[:stop]`` (samples, no staleness markers), as ``since_best`` counts them."""
    stop = len(values) if stop is None else stop
    if best is not None:
        count, low, index, start = best.count, best.value, best.index, 0
    elif stop:
        count, low, index, start = 1, values[0], 0, 1
    else:
        return None
    for j in range(start, stop):
        v = values[j]
        if _lt(v, low):
            low, index = v, count
        count += 1
    return Best(count, low, index)


@dataclass(slots=True)
class Series:
    """One series as ``rules.history_input.prepare`` would make it: samples sorted by time (stale = a run's end)."""

    metric: str  # canonical name
    labels: dict[str, str]  # including run and host where set
    times: Sequence[int]  # microseconds, ascending
    values: Sequence[float]
    stale: Sequence[bool]
    run_last: int  # the last sample of the series' run (us); training metrics hold until it
    before: Best | None = None  # the samples trimmed from the window, for evals_since_best


@dataclass(slots=True)
class Vec:
    """An expression's series at the instant: labels per sid, and (value, truth) for the sids with a sample."""

    labels: list[dict[str, str]]  # shared with the Series and other Vecs: never mutated
    rows: dict[int, tuple[float, bool]]


def _lt(a: float, b: float) -> bool:
    """``a < b`` as polars orders floats (NaN above everything, equal to itself)."""
    if a != a:
        return False
    return b != b or a < b


def _finite_sum(values: list[float]) -> float:
    """Sum with polars' treatment in rules.history_windows: any NaN or both infinities is NaN, else the infinity."""
    nan = pinf = ninf = False
    finite = []
    for v in values:
        if v != v:
            nan = True
        elif v == math.inf:
            pinf = True
        elif v == -math.inf:
            ninf = True
        else:
            finite.append(v)
    # (short windows compensated as rules.history_windows sums them; long ones in order, within its prefix error)
    total = neumaier_sum(finite) if len(values) <= SHORT_WINDOW else sum(finite)
    if nan or (pinf and ninf):
        return math.nan
    if pinf:
        return math.inf
    if ninf:
        return -math.inf
    return total


class Instant(NodeDispatch[Vec]):
    """Evaluates condition trees at time ``t`` (us) over ``series``, as ``rules.history_compiler.Compiler``
    does on a one-tick grid."""

    def __init__(self, series: Sequence[Series], t: int, lookback: float = LOOKBACK) -> None:
        self.series = series
        self.t = t
        self.lookback = round(lookback * US)
        self._selected: dict[Selector, list[int]] = {}

    def elements(self, node: Node) -> dict[Labels, float]:
        """The series where the condition holds -> value, in series order (what AlertStates.step takes)."""
        res = self.eval(node)
        if not isinstance(res, Vec):
            return {}
        return {make_labels(res.labels[sid]): value for sid, (value, ok) in sorted(res.rows.items()) if ok}

    # -- selectors -----------------------------------------------------------------------------------

    def select(self, sel: Selector) -> list[int]:
        found = self._selected.get(sel)
        if found is None:
            found = [
                i
                for i, s in enumerate(self.series)
                if s.metric == sel.metric and all(matches(m, s.labels) for m in sel.matchers)
            ]
            self._selected[sel] = found
        return found

    def _answers(self, time: int, run_last: int, hold: bool) -> bool:
        """A sample at ``time`` still answers at t: within the lookback (of the run's end, held)."""
        until = max(time, run_last) if hold else time
        return self.t - until <= self.lookback

    def instant(self, sel: Selector) -> Vec:
        metric = catalog.BY_NAME.get(sel.metric)
        hold = metric is not None and metric.group == "training"
        sids = self.select(sel)
        rows: dict[int, tuple[float, bool]] = {}
        for local, i in enumerate(sids):
            s = self.series[i]
            # The latest row at or before t, a staleness marker included: after one, nothing answers.
            k = bisect_right(s.times, self.t) - 1
            if k >= 0 and not s.stale[k] and self._answers(s.times[k], s.run_last, hold):
                rows[local] = (s.values[k], True)
        return Vec([self.series[i].labels for i in sids], rows)

    def _live(self, s: Series) -> tuple[Sequence[int], Sequence[float]]:
        """The series without its staleness markers (windows and evals_since_best ignore them)."""
        if not any(s.stale):
            return s.times, s.values  # read only: no copy
        keep = [k for k, st in enumerate(s.stale) if not st]
        return [s.times[k] for k in keep], [s.values[k] for k in keep]

    # -- functions -----------------------------------------------------------------------------------

    def value_function(self, node: Call) -> Vec | float:
        """abs, isnan, isinf, isfinite of a number or of each series' value."""
        arg = self.eval(node.args[0])
        test = {"isnan": math.isnan, "isinf": math.isinf, "isfinite": math.isfinite}.get(node.func)
        if not isinstance(arg, Vec):
            return abs(arg) if test is None else float(test(arg))
        if test is None:
            return Vec(arg.labels, {sid: (abs(v), ok) for sid, (v, ok) in arg.rows.items()})
        return Vec(arg.labels, {sid: (v, ok and test(v)) for sid, (v, ok) in arg.rows.items()})

    @staticmethod
    def concat(a: Vec, b: Vec) -> Vec:
        """Both vectors' series side by side (b's renumbered after a's), as ``history_vectors.concat``."""
        if not b.labels:
            return a
        if not a.labels:
            return b
        n = len(a.labels)
        return Vec([*a.labels, *b.labels], {**a.rows, **{sid + n: row for sid, row in b.rows.items()}})

    def bucket_quantiles(self, node: Call, res: Vec, metric: catalog.Metric) -> Vec:
        """A quantile of a catalog histogram per series from its buckets' rates, as the history's Compiler's."""
        groups, member = histogram.group_buckets(res.labels)
        found: dict[int, list[tuple[float, float]]] = {}
        for sid, (value, _ok) in sorted(res.rows.items()):
            m = member[sid]
            if m is not None:
                found.setdefault(m[0], []).append((m[1], value))
        rows = {g: (histogram.in_unit(metric, histogram.bucket_quantile(node.q, b)), True) for g, b in found.items()}
        return Vec(groups, rows)

    def since_best(self, sel: Selector) -> Vec:
        """Evaluations since the series' last new minimum, held like a training metric until its run ends.

        Staleness markers are not evaluations, but after one nothing answers, as for ``last``.
        """
        sids = self.select(sel)
        rows: dict[int, tuple[float, bool]] = {}
        for local, i in enumerate(sids):
            s = self.series[i]
            latest = bisect_right(s.times, self.t) - 1
            if latest >= 0 and s.stale[latest]:
                continue
            times, values = self._live(s)
            k = bisect_right(times, self.t) - 1
            if k < 0 or not self._answers(times[k], s.run_last, True):
                continue
            # Running minimum in polars' order (cum_min skips NaN unless all are NaN), from the trimmed part on.
            best = fold_best(s.before, values, k + 1)
            assert best is not None  # (k >= 0: at least one sample)
            rows[local] = (float(best.count - 1 - best.index), True)
        return Vec([self.series[i].labels for i in sids], rows)

    def window(self, node: Call, sel: Selector) -> Vec:
        """``f(x, w)`` over the samples in ``[t - w, t]``, as the history's ``Compiler.window``."""
        sids = self.select(sel)
        w = round(node.window * US)
        f = node.func
        rows: dict[int, tuple[float, bool]] = {}
        for local, i in enumerate(sids):
            s = self.series[i]
            latest = bisect_right(s.times, self.t) - 1
            if latest >= 0 and s.stale[latest]:
                continue  # the run has ended: nothing of it answers, as offline after a run's end
            times, values = self._live(s)
            hi = bisect_right(times, self.t)
            lo = bisect_left(times, self.t - w)
            n = hi - lo
            if n <= 0:
                continue
            if f in ("rate", "increase", "delta"):
                if n < 2:
                    continue
                value = self._extrapolated(f, times, values, lo, hi, w)
            elif f == "count":
                value = float(n)
            elif f in ("sum", "avg"):
                total = _finite_sum(values[lo:hi])
                value = total if f == "sum" else total / n
            elif f in ("min", "max"):
                value = window_extreme(f, values[lo:hi])
            else:
                value = window_quantile(values[lo:hi], node.q)
            rows[local] = (value, True)
        return Vec([self.series[i].labels for i in sids], rows)

    def _extrapolated(self, f: str, times: Sequence[int], values: Sequence[float], lo: int, hi: int, w: int) -> float:
        """Prometheus' extrapolatedRate, step for step as ``rules.history_windows.extrapolated`` computes it."""
        counter = f != "delta"
        first, last = lo, hi - 1
        t0, v0, t1, v1 = times[first], values[first], times[last], values[last]
        result = v1 - v0
        if counter:
            # Counter resets as a running sum from the series' start (c1 - c0), as the vectorised code has it.
            c = c0 = 0.0
            for j in range(1, last + 1):
                prev = values[j - 1]
                c += prev if _lt(values[j], prev) else 0.0
                if j == first:
                    c0 = c
            result = result + c - c0
        t = self.t
        to_start = (t0 - (t - w)) / US
        to_end = (t - t1) / US
        sampled = (t1 - t0) / US
        avg_gap = divide(sampled, hi - lo - 1)
        if counter and _lt(0.0, result) and not _lt(v0, 0.0):
            to_zero = sampled * divide(v0, result)
            if _lt(to_zero, to_start):
                to_start = to_zero
        thr = avg_gap * 1.1
        ext = sampled + (to_start if _lt(to_start, thr) else avg_gap / 2)
        ext = ext + (to_end if _lt(to_end, thr) else avg_gap / 2)
        factor = divide(ext, sampled)
        if f == "rate":
            factor = factor / (w / US)
        return result * factor

    def aggregate(self, node: Aggregate) -> Vec:
        """Per group, ``promql.aggregate_value`` of the values (in sid order) where the argument holds, as
        the history's ``Compiler.aggregate``."""
        arg = self.eval(node.arg)
        if not isinstance(arg, Vec):
            raise TypeError("lang.parse rejects an aggregation without a metric")
        groups, member = aggregate_groups(node, arg.labels)
        found: dict[int, list[float]] = {}
        for sid, (value, ok) in sorted(arg.rows.items()):
            if ok:
                found.setdefault(member[sid], []).append(value)
        return Vec(groups, {g: (aggregate_value(node.op, node.q, vs), True) for g, vs in found.items()})

    # -- operators -----------------------------------------------------------------------------------

    def negated(self, arg: Vec) -> Vec:
        return Vec(arg.labels, {sid: (-v, ok) for sid, (v, ok) in arg.rows.items()})

    def inverted(self, arg: Vec) -> Vec:
        return Vec(arg.labels, {sid: (v, not ok) for sid, (v, ok) in arg.rows.items()})

    @staticmethod
    def set_operation(op: str, left: Vec, right: Vec) -> Vec:
        return _or(left, right) if op == "or" else _and_unless(op, left, right)

    def operation(self, op: str, left: Vec | float, right: Vec | float) -> Vec:
        if isinstance(left, Vec) and isinstance(right, Vec):
            return _vector_op(op, left, right)
        vec, scalar = (left, right) if isinstance(left, Vec) else (right, left)
        assert isinstance(vec, Vec)
        assert not isinstance(scalar, Vec)
        vec_left = vec is left
        rows: dict[int, tuple[float, bool]] = {}
        for sid, (v, ok) in vec.rows.items():
            a, b = (v, scalar) if vec_left else (scalar, v)
            if op in COMPARISONS:
                rows[sid] = (v, ok and holds(op, a, b))
            else:
                rows[sid] = (arith(op, a, b), ok)
        return Vec(vec.labels, rows)


def _vector_op(op: str, left: Vec, right: Vec) -> Vec:
    """Series that agree on every shared label pair up; the first pair of each merged label set counts."""
    pairs, labels = pair_series(left.labels, right.labels)
    rows: dict[int, tuple[float, bool]] = {}
    for i, j, out in pairs:
        lrow, rrow = left.rows.get(i), right.rows.get(j)
        if lrow is None or rrow is None:
            continue
        (lv, lok), (rv, rok) = lrow, rrow
        if op in COMPARISONS:
            rows[out] = (lv, lok and rok and holds(op, lv, rv))
        else:
            rows[out] = (arith(op, lv, rv), lok and rok)
    return Vec(labels, rows)


def _and_unless(op: str, left: Vec, right: Vec) -> Vec:
    """``and`` keeps left series with a partner sample (true if any partner is), ``unless`` flips the partner."""
    rows: dict[int, tuple[float, bool]] = {}
    for sid, (v, ok) in left.rows.items():
        a = left.labels[sid]
        partners = [right.rows[j][1] for j, b in enumerate(right.labels) if j in right.rows and agree(a, b)]
        if op == "and":
            if partners:
                rows[sid] = (v, ok and any(partners))
        else:
            rows[sid] = (v, ok and not any(partners))
    return Vec(left.labels, rows)


def _or(left: Vec, right: Vec) -> Vec:
    """Both sides' series; identical label sets merge (true if either is; the true side's value, left first)."""
    out: list[dict[str, str]] = []
    lmap: dict[int, int] = {}
    rmap: dict[int, int] = {}
    for i, a in enumerate(left.labels):
        for j, b in enumerate(right.labels):
            if a == b and j not in rmap and i not in lmap:
                lmap[i] = rmap[j] = len(out)
                out.append({**b, **a})
    for i, a in enumerate(left.labels):
        if i not in lmap:
            lmap[i] = len(out)
            out.append(a)
    for j, b in enumerate(right.labels):
        if j not in rmap:
            rmap[j] = len(out)
            out.append(b)
    rows: dict[int, tuple[float, bool]] = {}
    for vec, where in ((left, lmap), (right, rmap)):  # left first: it wins ties
        for sid, (v, ok) in vec.rows.items():
            o = where[sid]
            have = rows.get(o)
            if have is None:
                rows[o] = (v, ok)
            elif ok and not have[1]:
                rows[o] = (v, True)  # the true side's value
    return Vec(out, rows)


def step_at(
    states: AlertStates,
    rules: Sequence[Rule],
    series: Sequence[Series],
    points: dict[int, set[str]],
    stepped: dict[str, float],
    *,
    lookback: float = LOOKBACK,
) -> list[AlertEvent]:
    """Step each rule at each of its evaluation points (us -> rule names), in time order.

    A rule never steps back in time: a sample that arrived after a later evaluation (a job's journal read
    late) is judged at its own time, its step dated at the rule's last (``stepped``: rule -> seconds).
    """
    events: list[AlertEvent] = []
    for t in sorted(points):
        names = points[t]
        instant = Instant(series, t, lookback)
        for rule in rules:
            if rule.enabled and rule.name in names:
                at = max(t / US, stepped.get(rule.name, -math.inf))
                stepped[rule.name] = at
                events.extend(states.step(rule, at, instant.elements(rule.condition.tree)))
    return events
