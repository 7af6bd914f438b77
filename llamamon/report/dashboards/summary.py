"""The statistics tables under each dashboard, and the one of the job's own metrics."""

from __future__ import annotations

from collections.abc import Sequence

from llamamon import catalog
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Table
from llamamon.report.dashboards.values import format_value, unit_of
from llamamon.report.data import label_text

STATS = ("min", "mean", "p95", "max", "last")


def summary_table(ctx: Context, groups: Sequence[str], title: str, exclude: Sequence[str] = ()) -> Table:
    """Min, mean, p95, max and last per metric but ``exclude``; several runs side by side, one column group per run."""
    import polars as pl

    s = ctx.data.summary.filter(pl.col("group").is_in(list(groups)) & ~pl.col("metric").is_in(list(exclude)))
    runs = [r.id for r in ctx.data.runs if r.id in set(s["run"].to_list())]
    keys = s.select("metric", "labels").unique(maintain_order=True).sort("metric", "labels")
    by = {
        (r, m, lbl): rec
        for r, m, lbl, rec in zip(s["run"], s["metric"], s["labels"], s.iter_rows(named=True), strict=False)
    }
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
    note = ""
    bad = s.filter(pl.col("nonfinite") > 0)
    if bad.height:
        names = ", ".join(sorted(set(bad["metric"].to_list())))
        note = f"NaN or infinite values were left out of the statistics for: {names}."
    return Table(title, cols, rows, header, note)


# llamamon's own metrics (notification_failures, ...) are stored with the job's custom ones, but are not the job's.
OWN_METRICS = tuple(m.name for m in catalog.METRICS if m.group == "run")


def custom_table(ctx: Context) -> Table | None:
    if not ctx.data.has_group("custom"):
        return None
    table = summary_table(ctx, ("custom",), "Other metrics the job logged", exclude=OWN_METRICS)
    return table if table.rows else None
