"""Which ranks of a distributed job are slower than the others, from their step times: pure polars, no I/O.

A rank is a series of rows with a ``rank`` label, told apart by (run, labels): in a job of several nodes
each node's ``llamamon record`` is its own run. Its step time is the ``step_time`` it logs, or else what its
steps' timestamps say (seconds between two logged steps over the steps between them).

The condition (``STRAGGLER``): a rank is a straggler when, in more than half of the run's step columns,
its step time is more than 25% above the median of all ranks in that column (the report takes the limit
from ``monitoring.thresholds.training.straggler_ratio``, 1.25, as the ``training_straggler`` rule does). Ordinary jitter moves a
rank above and below the median from column to column; a slow node, a throttled GPU or a rank with more
data-loading work stays above it. Runs whose rank numbers repeat are separate jobs (``with_jobs``).

The report reads its straggler view from here. The ``training_straggler`` rule judges ranks in the rule
language instead (a rank's step rate against the median rank's, live and offline alike) with the same
limit, ``straggler_ratio``. A leaf module: it imports no layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True, slots=True)
class Condition:
    """When a rank is a straggler; a rule may pass its own (from its config) instead of ``STRAGGLER``."""

    slower: float = 0.25  # more than this much above the ranks' median step time ...
    most: float = 0.5  # ... in more than this share of the step columns the rank is in
    columns: int = 100  # step columns the run is cut into


STRAGGLER = Condition()
RANK_KEY = ("run", "labels")


@dataclass(frozen=True, slots=True)
class RankTiming:
    """One rank's step time against the others'."""

    run: str
    labels: str
    rank: int
    step_time: float  # median over the run, seconds
    vs_median: float  # step_time / the median of all ranks' step_time, minus 1 (+0.23: 23% slower)
    slow_share: float  # share of its step columns where it was over the condition's limit
    steps_behind: int  # the ranks' median step minus its own, when the first rank logged its last step
    straggler: bool


def rank_expr() -> pl.Expr:
    """The ``rank`` label of the stored label JSON, as an integer (null where there is none)."""
    import polars as pl

    return pl.col("labels").str.json_path_match("$.rank").cast(pl.Int64, strict=False).alias("rank")


def step_times(rows: pl.DataFrame) -> pl.DataFrame:
    """(run, labels, rank, step, time, step_time) of every ranked series; ``rows`` has run, labels, metric,
    step, time and value (store samples, or the report's per-step columns with their mean as value).

    A rank's logged ``step_time`` is used where it has one; else the times of its steps: the seconds between
    two steps it logged anything at, over the steps between them. Why any metric's steps and not the ``step``
    rows: ``llamamon.log`` writes one of those per flush (about a second), too few to see a slow stretch.
    """
    import polars as pl

    ranked = rows.filter(pl.col("step").is_not_null()).with_columns(rank_expr()).filter(pl.col("rank").is_not_null())
    logged = ranked.filter(pl.col("metric") == "step_time").select(
        *RANK_KEY, "rank", "step", "time", pl.col("value").alias("step_time")
    )
    has_logged = logged.select(*RANK_KEY).unique()
    counter = (
        ranked.join(has_logged, on=list(RANK_KEY), how="anti")
        .group_by(*RANK_KEY, "rank", "step")
        .agg(pl.col("time").max())
        .sort(*RANK_KEY, "step")
        .with_columns(
            (pl.col("time").diff().dt.total_microseconds() / 1e6).over(RANK_KEY).alias("dt"),
            pl.col("step").diff().over(RANK_KEY).alias("ds"),
        )
        .filter(pl.col("ds") > 0)
        .select(*RANK_KEY, "rank", "step", "time", (pl.col("dt") / pl.col("ds")).alias("step_time"))
    )
    both = pl.concat([logged, counter.cast(logged.schema)])  # type: ignore[arg-type]
    return both.filter(pl.col("step_time").is_finite())


def with_jobs(times: pl.DataFrame) -> pl.DataFrame:
    """``times`` with a ``job`` column: the ranks compared with each other.

    Runs whose ranks are all different are one job's nodes (each node's ``record`` is a run); where a rank
    number comes back in another run, the runs are separate jobs laid side by side, and each run's ranks
    are compared among themselves only.
    """
    import polars as pl

    pairs = times.select("run", "rank").unique()
    separate = pairs["rank"].n_unique() < pairs.height
    return times.with_columns((pl.col("run") if separate else pl.lit("")).alias("job"))


def step_columns(times: pl.DataFrame, cond: Condition = STRAGGLER) -> pl.DataFrame:
    """Per rank and step column: its step time (mean), the column's last step, and the median, p10 and p90 of
    its job's ranks' step times in that column (columns with one rank only are left out: nothing to compare)."""
    import polars as pl

    times = with_jobs(times)
    if not times.height:
        return times.select("job", *RANK_KEY, "rank", "step", "step_time").with_columns(
            pl.lit(0, pl.Int64).alias("column"), *(pl.lit(0.0).alias(c) for c in ("median", "p10", "p90"))
        )
    s0, s1 = times["step"].min(), times["step"].max()
    column = ((pl.col("step") - s0) * cond.columns // (s1 - s0 + 1)).alias("column")  # type: ignore[operator]
    per = times.group_by("job", *RANK_KEY, "rank", column).agg(pl.col("step").max(), pl.col("step_time").mean())
    v = pl.col("step_time")
    stats = per.group_by("job", "column").agg(
        v.median().alias("median"), v.quantile(0.1).alias("p10"), v.quantile(0.9).alias("p90"), pl.len().alias("n")
    )
    kept = stats.filter(pl.col("n") > 1).drop("n")
    return per.join(kept, on=["job", "column"]).sort("job", "column", "rank", *RANK_KEY)


def rank_timings(
    times: pl.DataFrame, cond: Condition = STRAGGLER, cols: pl.DataFrame | None = None
) -> list[RankTiming]:
    """Every rank's timing, slowest first (by its step time against its job's median); empty with fewer than
    two ranks in a job. ``cols``: ``step_columns(times, cond)`` where the caller has them already (the view)."""
    import polars as pl

    if cols is None:
        cols = step_columns(times, cond)
    if not cols.height:
        return []
    slow = (pl.col("step_time") > pl.col("median") * (1 + cond.slower)).mean().alias("slow_share")
    per = cols.group_by("job", *RANK_KEY, "rank").agg(slow)
    times = with_jobs(times)
    medians = times.group_by("job", *RANK_KEY).agg(pl.col("step_time").median().alias("own"))
    vs = pl.col("own") / pl.col("own").median().over("job") - 1
    medians = medians.with_columns(pl.when(vs.is_finite()).then(vs).otherwise(0.0).alias("vs"))
    keys = ["job", *RANK_KEY]
    table = per.join(medians, on=keys).join(_steps_behind(times), on=keys, how="left")
    table = table.sort("vs", "rank", descending=[True, False])
    columns = table.select(*RANK_KEY, "rank", "own", "vs", "slow_share", pl.col("behind").fill_null(0))
    return [
        RankTiming(run, labels, rank, own, vs, share, int(lag), share > cond.most)
        for run, labels, rank, own, vs, share, lag in columns.iter_rows()
    ]


def _steps_behind(times: pl.DataFrame) -> pl.DataFrame:
    """(job, run, labels, behind): the job's ranks' median step minus each rank's (whole steps), when the job's
    first rank was done."""
    import polars as pl

    keys = ["job", *RANK_KEY]
    done = times.group_by(keys).agg(pl.col("time").max()).group_by("job").agg(pl.col("time").min().alias("done"))
    reached = (
        times.join(done, on="job").filter(pl.col("time") <= pl.col("done")).group_by(keys).agg(pl.col("step").max())
    )
    behind = (pl.col("step").median().over("job") - pl.col("step")).clip(lower_bound=0).floor()
    return reached.select(*keys, behind.alias("behind"))
