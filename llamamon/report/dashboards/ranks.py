"""The Training dashboard's straggler view: every rank's step time by step, and the slowest ranks named.

The numbers come from ``llamamon.stragglers``; this module only draws them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from llamamon.report import charts
from llamamon.report.charts import Axis, Chart, Line
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Dashboard, Panel, Table
from llamamon.report.dashboards.panels import chart_panel
from llamamon.report.dashboards.values import axis_label, format_value
from llamamon.report.data import label_dict
from llamamon.report.rank_bands import MAX_LINES, Named

if TYPE_CHECKING:
    import polars as pl

    from llamamon.stragglers import RankTiming

SLOWEST_LINES = 4
TABLE_ROWS = 8
SLOWEST_RANKS = "Slowest ranks"


def straggler_view(ctx: Context) -> tuple[Panel | None, Table | None, Named]:
    """The panel, the table and the slowest ranks it draws (run, rank, name), or (None, None, []) where fewer
    than two ranks logged steps.

    Why the slowest ranks are returned: the other per-rank charts of many ranks draw the same ranks under the
    same names beside their median, from the timings computed here once.
    """
    import polars as pl

    from llamamon.stragglers import STRAGGLER, rank_timings, step_columns, step_times

    # One limit for the view and the training_straggler rule: monitoring.thresholds.training.straggler_ratio.
    ratio = ctx.data.thresholds.straggler_ratio
    cond = STRAGGLER if ratio is None else replace(STRAGGLER, slower=ratio - 1)
    rows = _timed_rows(ctx.data.steps.rename({"mean": "value"}))
    times = step_times(rows)
    cols = step_columns(times, cond)  # once, for the timings and the lines
    timings = rank_timings(times, cond, cols)
    if not timings:
        return None, None, []
    hosts = {r.id: r.host for r in ctx.data.runs}
    if len(set(hosts.values())) < len(hosts):  # several runs on one host: the run tells them apart
        hosts = {r.id: ctx.run_labels.get(r.id, r.id) for r in ctx.data.runs}
    named = {(t.run, t.labels): _rank_name(t, hosts) for t in timings}
    chart = Chart("Step time per rank", Axis(axis_label("step_time"), "seconds"), x_mode="step")
    slowest = _slowest(timings)
    chart.lines = _lines(cols, timings, named)
    cut = _warmup_cut(chart.lines)
    if cut is not None:
        chart.axis.ylim = (0.0, cut)
    stragglers = [t for t in timings if t.straggler]
    limit = f"more than {cond.slower:.0%} over the ranks' median step time in over {cond.most:.0%} of the run"
    if stragglers:
        verdict = "Stragglers (" + limit + "): " + ", ".join(f"{named[t.run, t.labels]} ({_vs(t)})" for t in stragglers)
    else:
        verdict = f"No straggler: no rank was {limit}"
    source = "logged step_time" if rows.filter(pl.col("metric") == "step_time").height else "the times of its steps"
    how = "one line per rank" if len(timings) <= MAX_LINES else "median with p10–p90 band, and the slowest ranks"
    note = f"Step time per rank from {source}, {how}. {verdict}."
    if cut is not None:
        note += f" The axis stops at {format_value(cut, 'seconds')}: slower steps (warm-up, evaluation) go above it."
    panel = chart_panel(ctx, "stragglers", chart, "Step time per rank (straggler view)", note)
    drawn = [(t.run, t.rank, named[t.run, t.labels]) for t in slowest]
    return panel, _table(timings, named, len(stragglers)), drawn


def _timed_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows ``step_times`` reads a rank's step time from: its logged ``step_time`` where it has one (its other
    metrics' rows are then unused), else all its rows (the times of its steps).

    Why cut them first: ``step_times`` parses every row's label JSON for its rank, and a job logging loss and step
    beside step_time gave it three times the rows it uses (a 512-rank job's: a second).
    """
    import polars as pl

    logged = pl.col("metric") == "step_time"
    timed = rows.filter(logged).select("run", "labels").unique()
    return pl.concat([rows.filter(logged), rows.join(timed, on=["run", "labels"], how="anti")])


def _slowest(timings: list[RankTiming]) -> list[RankTiming]:
    """The ranks drawn on their own beside the median of many: every straggler, and at least the slowest few."""
    return timings[: max(SLOWEST_LINES, sum(t.straggler for t in timings))]


def _warmup_cut(lines: list[Line]) -> float | None:
    """The y axis' top when a few steps (the first, compiling; an evaluation) are over 3x the usual step time.

    Why: a first step of 40 s over steps of 0.3 s leaves every rank's line flat on the floor of the chart.
    """
    import numpy as np

    ys = np.concatenate([ln.y[np.isfinite(ln.y)] for ln in lines] or [np.zeros(0)])
    if not len(ys):
        return None
    usual = float(np.quantile(ys, 0.95))
    return usual * 1.5 if ys.max() > 3 * usual > 0 else None


def _rank_name(t: RankTiming, hosts: dict[str, str]) -> str:
    return f"{hosts.get(t.run, t.run)} · rank {t.rank}"


def _vs(t: RankTiming) -> str:
    return f"{_percent(t.vs_median)} step time vs median"


def _percent(change: float) -> str:
    """+23%, and +0% (not -0%) for a hair under the median."""
    return f"{round(change * 100):+d}%"


def _lines(cols: pl.DataFrame, timings: list[RankTiming], named: dict[tuple[str, str], str]) -> list[Line]:
    """One line per rank (slowest first in the legend); many ranks: the median, its p10–p90 band, the slowest."""
    import polars as pl

    def rank_line(i: int, t: RankTiming) -> Line:
        part = cols.filter((pl.col("run") == t.run) & (pl.col("labels") == t.labels)).sort("step")
        x, y = part["step"].to_numpy().astype(float), part["step_time"].to_numpy()
        return Line(named[t.run, t.labels], x, y, colour=charts.colour(i), width=1.6 if t.straggler else 1.2)

    if len(timings) <= MAX_LINES:
        return [rank_line(i, t) for i, t in enumerate(timings)]
    bands = []
    jobs = cols.group_by("job", "column").agg(pl.col("step").max(), pl.col("median", "p10", "p90").first())
    for (job,), part in jobs.sort("job", "step").group_by("job", maintain_order=True):
        label = "median of ranks (band p10–p90)" + (f" · {job}" if job else "")
        x = part["step"].to_numpy().astype(float)
        y, lo, hi = (part[c].to_numpy() for c in ("median", "p10", "p90"))
        bands.append(Line(label, x, y, lo, hi, colour=charts.MUTED, width=1.8))
    return bands + [rank_line(i, t) for i, t in enumerate(_slowest(timings))]


def _table(timings: list[RankTiming], named: dict[tuple[str, str], str], stragglers: int) -> Table:
    cols = ["rank", "node rank", "step time (median)", "vs median", "share of run over limit", "steps behind"]
    rows = []
    for t in timings[: max(TABLE_ROWS, stragglers)]:
        node = label_dict(t.labels).get("node_rank", "–")
        rows.append(
            [
                named[t.run, t.labels] + (" (straggler)" if t.straggler else ""),
                node,
                format_value(t.step_time, "seconds"),
                _percent(t.vs_median),
                f"{t.slow_share:.0%}",
                f"{t.steps_behind:,}",
            ]
        )
    note = (
        f"The slowest {len(rows)} of {len(timings)} ranks. Steps behind: the ranks' median step minus the rank's, "
        "when the first rank logged its last step."
    )
    return Table(SLOWEST_RANKS, cols, rows, note=note)


def slowest_ranks(boards: list[Dashboard]) -> Table | None:
    """The slowest-ranks table of the dashboards, for the Markdown summary (which shows no dashboard's tables)."""
    return next((t for d in boards for t in d.tables if t.title == SLOWEST_RANKS), None)
