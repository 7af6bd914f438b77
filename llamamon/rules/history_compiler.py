"""Conditions over a history, vectorised with polars: a ``llamamon.rules.lang`` tree compiled into polars
operations that give, per series and tick of a grid, a value and a truth flag.

The semantics are PromQL's, as ``llamamon.rules.history`` states them; window functions are computed in
``rules.history_windows``, operators between vectors in ``rules.history_vectors``, the number semantics
both evaluators share in ``rules.promql``. Pure: frames in, frames out; polars is imported inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.rules import histogram
from llamamon.rules.history_input import Grid, Samples
from llamamon.rules.history_vectors import Vec, compare, concat, empty_vec, pairs_frame, set_op
from llamamon.rules.history_windows import by_search, extrapolate, rolling
from llamamon.rules.promql import US, NodeDispatch, aggregate_groups, aggregate_value, group_quantiles, matches
from llamamon.rules.tree import COMPARISONS, Aggregate, Call, Node, Number, Selector, Unary, subtrees

if TYPE_CHECKING:
    import polars as pl


def shape(node: Node) -> tuple:
    """A node's meaning without its position or spelling: equal shapes evaluate to equal results."""
    if isinstance(node, Number):
        return ("number", node.value)
    if isinstance(node, Selector):
        return ("selector", node.metric, node.matchers)
    if isinstance(node, Call):
        return ("call", node.func, tuple(shape(a) for a in node.args), node.window, node.q)
    if isinstance(node, Aggregate):
        return ("aggregate", node.op, node.by, node.labels, node.q, shape(node.arg))
    if isinstance(node, Unary):
        return ("unary", node.op, shape(node.operand))
    return ("binary", node.op, shape(node.left), shape(node.right))


class Compiler(NodeDispatch[Vec]):
    """Evaluates trees on a grid; ``trees`` (all that will be evaluated) lets repeated parts run once.

    Why: rules share selectors and windows (memory warning and critical read the same series); a part
    that occurs more than once among ``trees`` is kept until its last use, then dropped, so sharing
    does not hold every intermediate frame for the whole run.
    """

    def __init__(self, samples: Samples, grid: Grid, lookback: float, trees: Iterable[Node] = ()) -> None:
        self.s = samples
        self.grid = grid
        self.lookback = round(lookback * US)
        self._uses: dict[tuple, int] = {}
        for tree in trees:
            for sub in subtrees(tree):
                if not isinstance(sub, Number):
                    key = shape(sub)
                    self._uses[key] = self._uses.get(key, 0) + 1
        self._memo: dict[tuple, Vec | float] = {}

    def eval(self, node: Node) -> Vec | float:
        if isinstance(node, Number) or not self._uses:
            return self.dispatch(node)
        key = shape(node)
        uses = self._uses.get(key, 0)
        if uses <= 1 and key not in self._memo:
            return self.dispatch(node)
        result = self._memo.pop(key) if key in self._memo else self.dispatch(node)
        self._uses[key] = uses - 1
        if uses > 1:
            self._memo[key] = result
        return result

    # -- selectors -----------------------------------------------------------------------------------

    def select(self, sel: Selector) -> tuple[pl.DataFrame, list[dict[str, str]]]:
        """Samples of the series a selector matches, renumbered 0..n-1, and their labels."""
        import numpy as np
        import polars as pl

        sids = [
            i
            for i, (name, labels) in enumerate(zip(self.s.metric, self.s.labels, strict=True))
            if name == sel.metric and all(matches(m, labels) for m in sel.matchers)
        ]
        if not sids:
            empty = self.s.data.with_columns(
                sid=pl.lit(0, pl.UInt32), run_last=pl.lit(None, pl.Int64), run_end=pl.lit(None, pl.Int64)
            ).clear()
            return empty, []
        # Why slices: the data is sorted by series, so each series is a zero-copy slice, not a join. Why the
        # series' columns repeated over the concatenation, not added to each slice: three polars calls per
        # series were most of the time of a selector matching a job's 512 ranks.
        picked = [self.s.parts[i] for i in sids]
        lengths = np.fromiter((p.height for p in picked), dtype=np.int64, count=len(picked))
        rows = pl.Series(np.repeat(np.asarray(sids, dtype=np.int64), lengths))
        df = pl.concat(picked).with_columns(
            sid=pl.Series(np.repeat(np.arange(len(sids), dtype=np.uint32), lengths)),
            run_last=self.s.run_last["run_last"].gather(rows),
            run_end=self.s.run_last["run_end"].gather(rows),
        )
        return df, [dict(self.s.labels[i]) for i in sids]

    def instant(self, sel: Selector, df: pl.DataFrame | None = None, labels: list | None = None) -> Vec:
        import numpy as np
        import polars as pl

        metric = catalog.BY_NAME.get(sel.metric)
        hold = metric is not None and metric.group == "training"
        if df is None:
            df, labels = self.select(sel)
        else:
            hold = True
        g = self.grid
        if df.height == 0:
            return Vec(empty_vec(), labels or [])
        # Why numpy: a handful of integer array operations, where polars spent most of the time on
        # a per-series shift and on materialising each intermediate column of the same arithmetic.
        # (In place where possible: each temporary is a fresh array as long as the samples.)
        t, sid = df["t"].to_numpy(), df["sid"].to_numpy()
        # Ticks a sample answers for: from its own time until the next sample (or marker), the lookback,
        # and its run's last sample (after a run's end nothing of it answers, as after a staleness marker).
        k0 = g.first_at_or_after(t)
        # The next sample's (or staleness marker's) first tick is the next row's k0, within a series.
        k1 = np.empty_like(k0)
        k1[:-1], k1[-1] = k0[1:], g.n
        k1[:-1][sid[1:] != sid[:-1]] = g.n
        # Why the run's last sample for training metrics: they hold until the run ends (then the lookback,
        # for series of no run).
        until = np.maximum(t, df["run_last"].to_numpy()) if hold else t.copy()
        until += self.lookback
        np.minimum(until, df["run_end"].to_numpy(), out=until)
        np.minimum(k1, g.through(until), out=k1)
        answers = k1 > k0
        stale = df["stale"]
        if stale.any():
            answers &= ~stale.to_numpy()
        keep = np.flatnonzero(answers)
        every = keep.size == t.size  # (every sample answers some tick: no gathers needed)
        if not every:
            k0, k1 = k0[keep], k1[keep]
        span = k1 - k0
        value = df["value"]
        if span.size and span.max() > 1:
            # Each sample repeated for every tick it answers (a grid finer than the samples).
            keep = np.repeat(keep, span)
            k0 = np.arange(keep.size, dtype=np.int64) - np.repeat(np.cumsum(span) - span - k0, span)
            every = False
        out = pl.DataFrame(
            {
                "k": k0,
                "sid": sid if every else sid[keep],
                "value": value if every else value.gather(keep),
                "ok": np.ones(keep.size, bool),
            }
        )
        return Vec(out, labels or [])

    # -- functions -----------------------------------------------------------------------------------

    def value_function(self, node: Call) -> Vec | float:
        """abs, isnan, isinf, isfinite of a number or of each series' value."""
        import polars as pl

        f = node.func
        arg = self.eval(node.args[0])
        if not isinstance(arg, Vec):
            ok = {"isnan": math.isnan, "isinf": math.isinf, "isfinite": math.isfinite}
            return abs(arg) if f == "abs" else float(ok[f](arg))
        if f == "abs":
            return Vec(arg.df.with_columns(pl.col("value").abs()), arg.labels)
        test = {
            "isnan": pl.col("value").is_nan(),
            "isinf": pl.col("value").is_infinite(),
            "isfinite": pl.col("value").is_finite(),
        }[f]
        return Vec(arg.df.with_columns(ok=pl.col("ok") & test), arg.labels)

    concat = staticmethod(concat)

    def bucket_quantiles(self, node: Call, res: Vec, metric: catalog.Metric) -> Vec:
        """A quantile of a catalog histogram per series from its buckets' rates (``rules.histogram``)."""
        import polars as pl

        groups, member = histogram.group_buckets(res.labels)
        if not groups:
            return Vec(empty_vec(), [])
        g = pl.Series([m[0] if m else None for m in member], dtype=pl.UInt32)
        le = pl.Series([m[1] if m else None for m in member], dtype=pl.Float64)
        rates = res.df.with_columns(g=g.gather(res.df["sid"]), le=le.gather(res.df["sid"])).drop_nulls("g")
        per = rates.group_by("g", "k").agg("le", "value").sort("g", "k")
        values = [
            histogram.in_unit(metric, histogram.bucket_quantile(node.q, zip(les, vs, strict=True)))
            for les, vs in zip(per["le"].to_list(), per["value"].to_list(), strict=True)
        ]
        out = per.select("k", pl.col("g").alias("sid"), value=pl.Series(values, dtype=pl.Float64), ok=pl.lit(True))
        return Vec(out, groups)

    def since_best(self, sel: Selector) -> Vec:
        import polars as pl

        selected, labels = self.select(sel)
        df = selected.filter(~pl.col("stale"))
        idx = pl.int_range(pl.len()).over("sid")
        prev_best = pl.col("value").cum_min().shift(1).over("sid")
        new_best = prev_best.is_null() | (pl.col("value") < prev_best)
        df = df.with_columns(i=idx, nb=new_best)
        df = df.with_columns(best_i=pl.when("nb").then("i").otherwise(None).forward_fill().over("sid"))
        df = df.with_columns(value=(pl.col("i") - pl.col("best_i")).cast(pl.Float64), stale=pl.lit(False))
        df = df.drop("i", "nb", "best_i")
        if selected["stale"].any():
            # Why the markers back: they are not evaluations, but after a run's end nothing answers (as `last`).
            df = pl.concat([df, selected.filter("stale")]).sort("sid", "t", maintain_order=True)
        # Why hold: evaluations are sparse events; the count stays true until the next evaluation.
        return self.instant(sel, df, labels)

    def window(self, node: Call, sel: Selector) -> Vec:
        import polars as pl

        df, labels = self.select(sel)
        g = self.grid
        w = round(node.window * US)
        df = df.filter(~pl.col("stale")).select("sid", "t", "value", "run_end")
        n_series = len(labels)
        if n_series == 0 or g.n == 0:
            return Vec(empty_vec(), labels)
        f = node.func
        counter = f in ("rate", "increase")
        if counter and df["value"].null_count():
            # (null values, never from the store; the numpy reset sums in history_windows assume none)
            prev = pl.col("value").shift(1).over("sid")
            reset = pl.when(pl.col("value") < prev).then(prev).otherwise(0.0)
            df = df.with_columns(c=reset.cum_sum().over("sid"))
        if f in ("count", "sum", "avg", "rate", "increase", "delta"):
            out = by_search(f, df, g, w)
            if f in ("rate", "increase", "delta"):
                out = extrapolate(out, w, counter=counter, per_second=f == "rate")
            res = out.select("k", "sid", pl.col("r").cast(pl.Float64).alias("value"), pl.lit(True).alias("ok"))
            return Vec(res, labels)
        # Only min, max and quantiles get here (the rest go by binary search above).
        return Vec(rolling(node, df, g, w), labels)

    def aggregate(self, node: Aggregate) -> Vec:
        """Per group and tick, ``promql.aggregate_value`` of the values (in sid order) where the argument holds.

        Why one Python call per (tick, group), not polars' aggregations: the live evaluator computes the
        same function over the same lists, so both agree to the bit (NaN, infinities, summation order);
        an aggregation has ticks x groups cells, far fewer than its input rows. Quantiles, the many small
        groups of the straggler rule, go by ``group_quantiles``: the same floats, sorted by numpy.
        """
        import numpy as np
        import polars as pl

        arg = self.eval(node.arg)
        if not isinstance(arg, Vec):
            raise TypeError("lang.parse rejects an aggregation without a metric")
        groups, member = aggregate_groups(node, arg.labels)
        held = arg.df.filter(pl.col("ok"))
        if held.height == 0:
            return Vec(empty_vec(), groups)
        g = pl.Series(member, dtype=pl.UInt32).gather(held["sid"])
        per = held.with_columns(g=g).sort("k", "sid").group_by("g", "k", maintain_order=True).agg("value")
        flat = per["value"].explode() if node.op == "quantile" else None
        if flat is not None and not flat.null_count():
            lengths = per["value"].list.len().to_numpy().astype(np.int64)
            values = group_quantiles(flat.to_numpy(), lengths, node.q)
        else:
            values = [aggregate_value(node.op, node.q, vs) for vs in per["value"].to_list()]
        out = per.select("k", pl.col("g").alias("sid"), value=pl.Series(values, dtype=pl.Float64), ok=pl.lit(True))
        return Vec(out.sort("sid", "k"), groups)

    # -- operators -----------------------------------------------------------------------------------

    def negated(self, arg: Vec) -> Vec:
        import polars as pl

        return Vec(arg.df.with_columns(-pl.col("value")), arg.labels)

    def inverted(self, arg: Vec) -> Vec:
        import polars as pl

        return Vec(arg.df.with_columns(~pl.col("ok")), arg.labels)

    set_operation = staticmethod(set_op)

    def operation(self, op: str, left: Vec | float, right: Vec | float) -> Vec:
        import polars as pl

        if isinstance(left, Vec) and isinstance(right, Vec):
            pairs, labels = pairs_frame(left.labels, right.labels)
            r = right.df.rename({"sid": "r_sid", "value": "r_value", "ok": "r_ok"})
            j = left.df.join(pairs, left_on="sid", right_on="l_sid", how="inner").join(
                r, on=["k", "r_sid"], how="inner"
            )
            lv, rv = pl.col("value"), pl.col("r_value")
            ok = pl.col("ok") & pl.col("r_ok")
            keep = lv
            sid = "o_sid"
        else:
            vec = left if isinstance(left, Vec) else right
            scalar = right if isinstance(left, Vec) else left
            if not isinstance(vec, Vec) or isinstance(scalar, Vec):
                raise TypeError("one side is a vector here")
            j = vec.df
            lv = pl.col("value") if isinstance(left, Vec) else pl.lit(scalar, pl.Float64)
            rv = pl.lit(scalar, pl.Float64) if isinstance(left, Vec) else pl.col("value")
            ok = pl.col("ok")
            keep = pl.col("value")
            labels = vec.labels
            sid = "sid"
        if op in COMPARISONS:
            value, ok = keep, ok & compare(op, lv, rv)
        else:
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv}[op]
        res = j.select("k", pl.col(sid).alias("sid"), value.alias("value"), ok.alias("ok"))
        return Vec(res, labels)
