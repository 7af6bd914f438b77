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


def run_figures(rows: pl.DataFrame, stat: str) -> pl.DataFrame:
    """Per run of ``rows`` (summary rows of one metric): its figure ``value``; where two ranks or more logged it,
    that is the lowest rank's (``rank``), and ``lo``/``hi`` are the lowest and highest of the ranks' values
    (null ``rank``, ``lo`` and ``hi`` otherwise). Runs in ``rows``' order.

    Why per rank: two ranks' last losses averaged are a loss no rank had. Label sets besides the rank (a rank's
    several GPUs) are combined as the single-process figure combines them. Why every run in one grouping: a job
    of 64 runs asked four small queries per run and figure, 448 cells' worth (half a second of its report).
    """
    import polars as pl

    ranked = (
        rows.with_columns(rank_expr())
        .filter(pl.col("rank").is_not_null())
        .group_by("run", "rank")
        .agg(_combine(stat).alias("value"))
        .sort("run", "rank")
        .group_by("run")
        .agg(
            pl.col("rank").first(),
            pl.col("value").first().alias("ranked"),
            pl.col("value").min().alias("lo"),
            pl.col("value").max().alias("hi"),
            pl.len().alias("ranks"),
        )
        .filter(pl.col("ranks") >= 2)
    )
    whole = rows.group_by("run", maintain_order=True).agg(_combine(stat).alias("value"))
    per_rank = pl.col("rank").is_not_null()
    return whole.join(ranked, on="run", how="left", maintain_order="left").select(
        "run",
        pl.when(per_rank).then(pl.col("ranked")).otherwise(pl.col("value")).alias("value"),
        "rank",
        "lo",
        "hi",
    )
