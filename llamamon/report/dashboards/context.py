"""What every chart builder shares: the data, the x axis of one run or several, and the alerts as arrays."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Literal

import numpy as np

from llamamon.report import charts
from llamamon.report.charts import Axis, Chart, Span
from llamamon.report.dashboards.model import ImageFormat
from llamamon.report.data import AlertSpan, ReportData

if TYPE_CHECKING:
    import polars as pl


@dataclass(slots=True)
class Context:
    """What every chart builder needs: data, the x mode, run bounds and how to encode figures."""

    data: ReportData
    zone: tzinfo
    fmt: ImageFormat
    emit: Callable[[str, object], str] | None  # (panel id, figure) -> image reference; None: draw no figure
    run_labels: dict[str, str]
    multi: bool
    bounds: dict[str, tuple[float, float]]
    elapsed_unit: str = "s"
    elapsed_div: float = 1.0
    since: float | None = None  # --since: the data starts here, not at the runs' starts
    _alert_rows: AlertRows | None = None

    def image(self, pid: str, draw: Callable[[], object]) -> str:
        """The panel's image reference from the figure ``draw`` makes; "" without drawing it when there is no ``emit``."""
        return "" if self.emit is None else self.emit(pid, draw())

    @property
    def x_mode(self) -> Literal["time", "elapsed"]:
        return "elapsed" if self.multi else "time"

    def x_of(self, run: str, times: pl.Series) -> np.ndarray:
        """Chart x for UTC times: datetimes for one run, time since each run's start for several."""
        t = times.to_numpy()
        if not self.multi:
            return t
        t0 = self.bounds.get(run, (0.0, 0.0))[0]
        return (t.astype("datetime64[us]").astype(np.int64) / 1e6 - t0) / self.elapsed_div

    def x_of_ts(self, run: str | None, ts: float) -> float | np.datetime64:
        if not self.multi:
            return np.datetime64(int(ts * 1e6), "us")
        t0 = self.bounds.get(run or "", (min(b[0] for b in self.bounds.values()), 0.0))[0]
        return (ts - t0) / self.elapsed_div

    def chart(self, title: str, axis: Axis, **kw: object) -> Chart:
        c = Chart(title=title, axis=axis, x_mode=self.x_mode, **kw)  # type: ignore[arg-type]
        c.x_unit = self.elapsed_unit
        if self.since is not None:
            c.x_origin = "run start, or window start for runs begun before it"
        c.xlim = self.xlim()
        return c

    def xlim(self) -> tuple[object, object] | None:
        """The report's common time range: first to last sample of the run, or 0 to the longest run."""
        if not self.bounds:
            return None
        if self.multi:
            return (0.0, max(b[1] - b[0] for b in self.bounds.values()) / self.elapsed_div)
        t0, t1 = next(iter(self.bounds.values()))
        pad = max((t1 - t0) * 0.005, 0.5)
        return (self.x_of_ts(None, t0 - pad), self.x_of_ts(None, t1 + pad))

    def spans_for(self, metrics: Iterable[str], extra_rules: Sequence[str] = ()) -> list[Span]:
        """Alert spans that concern these metrics, merged to what the chart can resolve."""
        rows = self.alert_rows()
        sel = rows.select(metrics, extra_rules)
        if not sel.any():
            return []
        start, end = rows.start[sel], rows.end[sel]
        if self.multi:
            first = min(b[0] for b in self.bounds.values())
            t0 = np.array([self.bounds.get(r or "", (first, 0.0))[0] for r in rows.run[sel].tolist()])
            return merge_span_arrays(
                (start - t0) / self.elapsed_div, (end - t0) / self.elapsed_div, rows.label[sel], rows.severity[sel]
            )
        if len(start) < 2:
            return [Span(_datetime64(a), _datetime64(b), sv, lb) for a, b, sv, lb in _rows(rows, sel, start, end)]
        # Why truncated to whole microseconds: the spans sit at datetime64[us] positions on the chart.
        x0, x1 = np.trunc(start * 1e6) / 1e6, np.trunc(end * 1e6) / 1e6
        merged = merge_span_arrays(x0, x1, rows.label[sel], rows.severity[sel])
        return [Span(_datetime64(sp.start), _datetime64(sp.end), sp.severity, sp.label) for sp in merged]

    def alert_rows(self) -> AlertRows:
        """The alerts as arrays, built once per report: every chart asks which of them concern it."""
        if self._alert_rows is None:
            self._alert_rows = AlertRows(self.data.alerts, self.bounds, self.multi)
        return self._alert_rows


def _datetime64(seconds: float) -> np.datetime64:
    return np.datetime64(int(seconds * 1e6), "us")


def _rows(rows: AlertRows, sel: np.ndarray, start: np.ndarray, end: np.ndarray) -> list[tuple[float, float, str, str]]:
    return list(zip(start.tolist(), end.tolist(), rows.severity[sel].tolist(), rows.label[sel].tolist(), strict=True))


class AlertRows:
    """Alert spans as numpy arrays, one row per (span, run it is drawn for), with open ends closed.

    Why: a week of flapping data gives tens of thousands of spans and every time chart asks which
    concern it; testing each span per chart in Python cost seconds. Whether a span concerns a metric
    depends only on its rule, severity, metrics and ``metric`` label, so that is decided once per
    such group and broadcast to the rows.
    """

    def __init__(self, alerts: Sequence[AlertSpan], bounds: dict[str, tuple[float, float]], multi: bool) -> None:
        groups: dict[tuple[str, str, tuple[str, ...], str | None], int] = {}
        self.examples: list[AlertSpan] = []
        gid: list[int] = []
        runs: list[str | None] = []
        start: list[float] = []
        end: list[float] = []
        still: list[bool] = []
        last_end = max((b[1] for b in bounds.values()), default=None)
        for a in alerts:
            key = (a.rule, a.severity, a.metrics, a.metric)
            g = groups.get(key)
            if g is None:
                g = groups[key] = len(self.examples)
                self.examples.append(a)
            for run in [a.run] if a.run else (list(bounds) if multi else [None]):
                if a.end is not None:
                    stop = a.end
                elif run is None:
                    stop = last_end if last_end is not None else a.start
                else:
                    stop = bounds.get(run, (a.start, a.start))[1]
                gid.append(g)
                runs.append(run)
                start.append(a.start)
                end.append(stop)
                still.append(a.end is None)
        self.gid = np.asarray(gid, dtype=np.int64)
        self.run = np.asarray(runs, dtype=object)
        self.start = np.asarray(start, dtype=float)
        self.end = np.asarray(end, dtype=float)
        self.open = np.asarray(still, dtype=bool)
        self.label = np.asarray([self.examples[g].rule for g in gid], dtype=object)
        self.severity = np.asarray([self.examples[g].severity for g in gid], dtype=object)

    def select(self, metrics: Iterable[str], extra_rules: Sequence[str] = ()) -> np.ndarray:
        """Rows whose span concerns one of ``metrics`` or whose rule name contains one of ``extra_rules``."""
        wanted = set(metrics)
        hit = np.asarray(
            [
                any(a.concerns(m) for m in wanted) or any(r in a.rule.lower() for r in extra_rules)
                for a in self.examples
            ],
            dtype=bool,
        )
        return hit[self.gid] if len(self.gid) else np.zeros(0, dtype=bool)


def merge_span_arrays(
    x0: np.ndarray, x1: np.ndarray, labels: np.ndarray, severities: np.ndarray, columns: int = 1500
) -> list[Span]:
    """Join spans of the same rule and severity closer than one chart column: flapping shows as one band.

    Groups come out in the order of their first span, each group's bands in x order.
    """
    if len(x0) < 2:
        return [
            Span(float(a), float(b), str(s), str(lbl)) for a, b, s, lbl in zip(x0, x1, severities, labels, strict=True)
        ]
    gap = (float(x1.max()) - float(x0.min())) / columns
    out: list[Span] = []
    keys = list(zip(severities.tolist(), labels.tolist(), strict=True))
    for severity, label in dict.fromkeys(keys):
        mask = (severities == severity) & (labels == label)
        for a, b in merge_interval_arrays(x0[mask], x1[mask], gap):
            out.append(Span(a, b, severity, label))
    return out


def merge_interval_arrays(starts: np.ndarray, ends: np.ndarray, gap: float) -> list[tuple[float, float]]:
    """``data.merge_intervals`` on arrays: sorted, intervals closer than ``gap`` joined."""
    if not len(starts):
        return []
    order = np.lexsort((ends, starts))
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] - reach[:-1] > gap
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(s) - 1)
    return list(zip(s[first].tolist(), reach[last].tolist(), strict=True))


def build_context(
    ctx_data: ReportData,
    fmt: ImageFormat,
    emit: Callable[[str, object], str] | None,
    zone: tzinfo | None = None,
    since: float | None = None,
) -> Context:
    zone = zone or charts.local_zone()
    bounds = ctx_data.run_bounds
    multi = len(ctx_data.runs) > 1
    labels = {r.id: (r.name or r.id) for r in ctx_data.runs}
    if len(set(labels.values())) < len(labels):
        labels = {r.id: r.id for r in ctx_data.runs}
    longest = max((b[1] - b[0] for b in bounds.values()), default=0.0)
    unit, div = charts.elapsed_unit(longest)
    return Context(ctx_data, zone, fmt, emit, labels, multi, bounds, unit, div, since)
