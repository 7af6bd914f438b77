"""The statistics tables under each dashboard, and the one of the job's own metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Table
from llamamon.report.dashboards.values import format_value, unit_of
from llamamon.report.data import label_text
from llamamon.stragglers import rank_expr

if TYPE_CHECKING:
    import polars as pl

STATS = ("min", "mean", "p95", "max", "last")
LONG_FROM_RUNS = 3  # as the per-host grids: from three runs on a job's own label sets get a row each


def summary_table(ctx: Context, groups: Sequence[str], title: str, exclude: Sequence[str] = ()) -> Table:
    """Min, mean, p95, max and last per metric but ``exclude``; several runs side by side, one column group per run."""
    import polars as pl

    s = ctx.data.summary.filter(pl.col("group").is_in(list(groups)) & ~pl.col("metric").is_in(list(exclude)))
    runs = [r.id for r in ctx.data.runs if r.id in set(s["run"].to_list())]
    # Ranks in number order (rank=2 before rank=10), other label sets by their text.
    keys = s.select("metric", "labels").unique().with_columns(rank_expr()).sort("metric", "rank", "labels")
    keys = keys.select("metric", "labels")
    by = {
        (r, m, lbl): rec
        for r, m, lbl, rec in zip(s["run"], s["metric"], s["labels"], s.iter_rows(named=True), strict=False)
    }
    if len(runs) >= LONG_FROM_RUNS and s.height == keys.height:
        return _one_row_each(ctx, s, keys, title)
    rows = []
    for metric, labels in keys.iter_rows():
        unit = unit_of(metric)
        row = [metric, label_text(labels)]
        for run in runs:
            rec = by.get((run, metric, labels))
            row.extend(format_value(rec[k] if rec else None, unit) for k in STATS)
        rows.append(row)
    cols = ["metric", "labels"] + list(STATS) * max(len(runs), 1)
    header = [(ctx.run_labels.get(r, r), len(STATS)) for r in runs] if ctx.multi else []
    return Table(title, cols, rows, header, _nonfinite_note(s))


def _one_row_each(ctx: Context, s: pl.DataFrame, keys: pl.DataFrame, title: str) -> Table:
    """Each label set in a row of its own with its run named, where no label set is in two runs (a job's ranks).

    Why: side by side, 64 nodes' 512 ranks were a table of 320 columns in which each row had 5 cells filled,
    seven megabytes of dashes that took seconds to write; one row per rank says the same.
    """
    rows = []
    for rec in keys.join(s, on=["metric", "labels"], how="left", maintain_order="left").iter_rows(named=True):
        unit = unit_of(rec["metric"])
        run = ctx.run_labels.get(rec["run"], rec["run"])
        rows.append([run, rec["metric"], label_text(rec["labels"]), *(format_value(rec[k], unit) for k in STATS)])
    return Table(title, ["run", "metric", "labels", *STATS], rows, note=_nonfinite_note(s))


def _nonfinite_note(s: pl.DataFrame) -> str:
    import polars as pl

    bad = s.filter(pl.col("nonfinite") > 0)
    if not bad.height:
        return ""
    names = ", ".join(sorted(set(bad["metric"].to_list())))
    return f"NaN or infinite values were left out of the statistics for: {names}."


# llamamon's own metrics (notification_failures, ...) are stored with the job's custom ones, but are not the job's.
OWN_METRICS = tuple(m.name for m in catalog.METRICS if m.group == "run")


def custom_table(ctx: Context) -> Table | None:
    if not ctx.data.has_group("custom"):
        return None
    table = summary_table(ctx, ("custom",), "Other metrics the job logged", exclude=OWN_METRICS)
    return table if table.rows else None
