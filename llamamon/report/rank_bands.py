"""Many series on one chart: their median, a p10–p90 band and the few that matter drawn on their own.

Why: a 64-node job's 512 ranks drawn one line each are a solid block of colour in which no rank can be
told apart, and drawing and writing those lines was a quarter of the report's time. The median and its
band show what the job did; the ranks the straggler view names as slowest are drawn on their own, under
the same names, so the chart still says which rank to look at. Up to ``MAX_LINES`` series keep one line
each, as small jobs have always been drawn.

The statistics are computed in polars over the chart tables (per column of x), never in a Python loop
per series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llamamon.report import charts
from llamamon.report.charts import Line
from llamamon.stragglers import rank_expr

if TYPE_CHECKING:
    import polars as pl

MAX_LINES = 16  # series drawn one line each; beyond, the median, its p10–p90 band and the named ones only
COLUMNS = 800  # columns of x the band is cut into: about one per pixel of chart width, as report.tables cuts
BAND = "median of ranks (band p10–p90)"
SERIES_BAND = "median of {n} series (band p10–p90)"
EXTREMES = "lowest and highest of them (dotted)"

Named = Sequence[tuple[str, int, str]]  # (run, rank, name) of the ranks drawn on their own, in legend order


def ranked_series(rows: pl.DataFrame) -> int:
    """How many (run, label set) series of ``rows`` carry a ``rank`` label."""
    import polars as pl

    if not rows.height:
        return 0
    ranked = rows.select("run", "labels").unique().with_columns(rank_expr())
    return ranked.filter(pl.col("rank").is_not_null()).height


def band_columns(rows: pl.DataFrame, x: str, columns: int = COLUMNS) -> pl.DataFrame:
    """Per column of ``x`` across every series of ``rows``: the column's last x, the median, p10 and p90 of
    the series' ``mean``, the lowest ``min`` and highest ``max``, and their ``nonfinite`` count; by x.

    Why re-cut x instead of grouping by each series' own columns: ranks that start or stop at other steps
    (a restarted node) have columns at other x, so equal x would hold a handful of ranks each.
    """
    import polars as pl

    if not rows.height:
        return pl.DataFrame(
            schema={x: pl.Float64, "median": pl.Float64, "p10": pl.Float64, "p90": pl.Float64}
            | {"min": pl.Float64, "max": pl.Float64, "nonfinite": pl.UInt32}
        )
    x0, x1 = float(rows[x].min()), float(rows[x].max())  # type: ignore[arg-type]
    width = (x1 - x0) or 1.0
    column = ((pl.col(x).cast(pl.Float64) - x0) / width * (columns - 1)).round().cast(pl.Int64).alias("column")
    m = pl.col("mean")
    return (
        rows.group_by(column)
        .agg(
            pl.col(x).max().cast(pl.Float64),
            m.median().alias("median"),
            m.quantile(0.1, interpolation="linear").alias("p10"),
            m.quantile(0.9, interpolation="linear").alias("p90"),
            pl.col("min").min(),
            pl.col("max").max(),
            pl.col("nonfinite").sum().cast(pl.UInt32),
        )
        .sort(x)
        .drop("column")
    )


def step_band(rows: pl.DataFrame, named: Named, *, smooth: bool) -> list[Line]:
    """A per-step metric of many ranks (``report.tables.by_step`` rows): the median of ranks with its p10–p90
    band (and its smoothed line with ``smooth``), then the ``named`` ranks' own lines.

    Steps where any rank's value was NaN or infinite are marked on the median, so none goes unseen.
    """
    import polars as pl

    from llamamon.report.smoothing import debiased_ema, smoothing_weight

    cols = band_columns(rows, "step")
    x, median = cols["step"].to_numpy(), cols["median"].to_numpy()
    marks = cols.filter(pl.col("nonfinite") > 0)["step"].to_numpy()
    weight = smoothing_weight(len(median)) if smooth else 0.0
    lines = [
        Line(
            BAND,
            x,
            median,
            cols["p10"].to_numpy(),
            cols["p90"].to_numpy(),
            colour=charts.MUTED,
            alpha=0.45 if weight else 1.0,
            width=0.9 if weight else 1.8,
            marks=marks if len(marks) else None,
        )
    ]
    if weight:
        lines.append(
            Line("median of ranks (smoothed)", x, debiased_ema(median, weight), colour=charts.MUTED, width=2.0)
        )
    return lines + _named_lines(rows, named)


def _named_lines(rows: pl.DataFrame, named: Named) -> list[Line]:
    """Each named rank's own line (its first label set, where a rank logged several), in ``named`` order."""
    import polars as pl

    if not named:
        return []
    picks = pl.DataFrame(
        {"run": [n[0] for n in named], "rank": [n[1] for n in named]}, schema_overrides={"rank": pl.Int64}
    )
    # Why the rank of each label set, not of each row: reading it parses the labels' JSON, and 512 ranks' columns
    # are hundreds of thousands of rows of a few hundred label sets.
    sets = rows.select("run", "labels").unique().with_columns(rank_expr()).join(picks, on=["run", "rank"], how="semi")
    mine = rows.join(sets, on=["run", "labels"], how="inner", maintain_order="left")
    out = []
    for i, (run, rank, name) in enumerate(named):
        part = mine.filter((pl.col("run") == run) & (pl.col("rank") == rank))
        if not part.height:
            continue
        part = part.filter(pl.col("labels") == part["labels"][0]).sort("step")
        out.append(Line(name, part["step"].to_numpy().astype(float), part["mean"].to_numpy(), colour=charts.colour(i)))
    return out


def time_band(rows: pl.DataFrame, x: np.ndarray, series: int) -> list[Line]:
    """A metric over time of many series (``report.tables`` series rows, ``x`` their chart x in row order): the
    median with its p10–p90 band, and the lowest and highest value of any series per column, dotted.

    Why the extremes and not named series: over time there is no ranking like the straggler view's to pick
    series by, and the one idle GPU of 512 is what the lowest line shows (the System dashboard's per-host
    grids then say which host it is on).
    """
    import polars as pl

    dated = np.issubdtype(x.dtype, np.datetime64)
    xf = x.astype("datetime64[us]").astype(np.int64).astype(float) if dated else x.astype(float)
    cols = band_columns(rows.select("mean", "min", "max", "nonfinite").with_columns(pl.Series("x", xf)), "x")
    xs = cols["x"].to_numpy()
    if dated:
        xs = xs.astype(np.int64).astype("datetime64[us]")
    band = Line(
        SERIES_BAND.format(n=series),
        xs,
        cols["median"].to_numpy(),
        cols["p10"].to_numpy(),
        cols["p90"].to_numpy(),
        colour=charts.PALETTE[0],
        width=1.6,
    )
    low = Line(EXTREMES, xs, cols["min"].to_numpy(), colour=charts.MUTED, style=":", width=0.9)
    high = Line(EXTREMES, xs, cols["max"].to_numpy(), colour=charts.MUTED, style=":", width=0.9, legend=False)
    return [band, low, high]
