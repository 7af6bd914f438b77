"""Ranks of a distributed job in the report: the rank of a stored label set, and one figure per rank.

The job side labels each process's rows with ``rank`` (and ``local_rank``, ``node_rank``) from the launcher's
environment (``log_destination.rank_labels``); a run's figure is then one rank's, not a blend of all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamamon.stragglers import rank_expr

if TYPE_CHECKING:
    import polars as pl


def _combine(stat: str) -> pl.Expr:
    """How one stat of several label sets becomes one figure: the extreme for min/max/p95, else the mean."""
    import polars as pl

    col = pl.col(stat)
    return col.max() if stat in ("max", "p95") else col.min() if stat == "min" else col.mean()


def per_rank(rows: pl.DataFrame, stat: str) -> pl.DataFrame:
    """(rank, value) of one run's summary rows of one metric, lowest rank first; empty without two ranks.

    Why per rank: two ranks' last losses averaged are a loss no rank had. Label sets besides the rank (a
    rank's several GPUs) are combined as the single-process figure combines them.
    """
    import polars as pl

    ranked = rows.with_columns(rank_expr()).filter(pl.col("rank").is_not_null())
    if ranked["rank"].n_unique() < 2:
        return ranked.head(0).select("rank", pl.lit(None, pl.Float64).alias("value"))
    return ranked.group_by("rank").agg(_combine(stat).alias("value")).sort("rank")


def run_figure(rows: pl.DataFrame, stat: str) -> tuple[float | None, pl.DataFrame]:
    """One run's figure of one metric: the combined value of its label sets, and its per-rank values (if ranked).

    Where the metric is logged per rank the figure is the lowest rank's (rank 0's, in one run of them all).
    """
    ranks = per_rank(rows, stat)
    if ranks.height:
        return ranks["value"][0], ranks
    value = rows.select(_combine(stat))[stat][0] if rows.height else None
    return value, ranks
