"""Evaluate rules over recorded samples: conditions (compiled to polars in rules.series), then the alert state machine.

Two ways in, same answers: ``evaluate(rules, frame, grid)`` computes a whole history vectorised (every
tick of the grid at once); ``AlertStates.step(...)`` advances the state machine one tick at a time for
the live ``watch`` loop and serialises to JSON between ticks. No I/O here: frames in, alerts out.

Semantics (PromQL, as Prometheus 2.x evaluates them):

* the grid is ``start + k * step``, or explicit ticks (``evaluation_grids``: a run's end, and every
  sample of what a ``for: 0`` rule reads); an instant selector at tick t sees each series' latest sample at or
  before t, if it is at most ``lookback`` (5 m) old, and not after a staleness marker. Training metrics
  (catalog group ``training``: loss, validation_loss, learning_rate ...) are logged by the job when it
  evaluates, not sampled, so they hold their last value until the next one or the run's end. After a
  run's end nothing of it answers.
* window functions see the samples in ``[t - window, t]``; ``rate``/``increase``/``delta`` extrapolate
  like Prometheus.
* every expression is a set of series (labels) with a value and a truth flag per tick; comparisons set
  the flag and keep the metric's value (so ``$value`` is the metric's value), ``not`` flips it, ``and``/
  ``unless``/``or`` combine flags. Series match across a binary operator when they agree on every label
  both carry (run and host included), so ``gpu_utilization < 0.2 and memory_usage > 0.9`` is per GPU.
* an alert instance is (rule, labels); inactive -> pending -> firing -> resolved, honouring ``for`` and
  ``keep_firing_for`` exactly as Prometheus' ``AlertingRule.Eval``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llamamon import catalog, units
from llamamon.rules import template
from llamamon.rules.lang import Condition, to_base, top_comparison, unit_of
from llamamon.rules.series import (
    END,
    LOOKBACK,
    US,
    Compiler,
    Grid,
    Samples,
    Vec,
    empty_vec,
    pack,
    packable,
    prepare,
)
from llamamon.samples import AlertEvent, Labels, make_labels

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "LOOKBACK",
    "US",
    "Alert",
    "AlertStates",
    "Grid",
    "Rule",
    "Samples",
    "conditions",
    "evaluate",
    "evaluate_runs",
    "evaluation_grids",
    "needed_metrics",
    "prepare",
    "replay",
    "step_all",
]


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule, from monitoring.yaml or derived from a threshold (``source`` says which)."""

    name: str
    condition: Condition
    severity: str = "warning"
    channels: tuple[str, ...] = ()
    for_: float = 0.0
    keep_firing_for: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""
    enabled: bool = True


@dataclass(slots=True)
class Alert:
    """One episode of one alert instance in a history: when it became active, fired and resolved."""

    rule: str
    severity: str
    labels: Labels
    annotations: Labels
    active_at: float
    fired_at: float
    resolved_at: float | None
    value: float  # at the tick it fired
    peak: float  # most extreme value while active (max, or min for "<" conditions)
    channels: tuple[str, ...] = ()

    @property
    def run(self) -> str | None:
        return dict(self.labels).get("run")

    @property
    def host(self) -> str | None:
        return dict(self.labels).get("host")

    def events(self) -> list[AlertEvent]:
        base = dict(
            rule=self.rule,
            severity=self.severity,
            labels=self.labels,
            annotations=self.annotations,
            value=self.value,
            started_at=self.fired_at,
            channels=self.channels,
            run=self.run,
            host=self.host,
        )
        out = [AlertEvent(state="firing", **base)]
        if self.resolved_at is not None:
            out.append(AlertEvent(state="resolved", ended_at=self.resolved_at, **base))
        return out


# ---------------------------------------------------------------------------------------------------
# Public entry points


def reads(rule: Rule) -> frozenset[str]:
    """The stored metrics a rule reads: its condition's, and the part series of a catalog histogram."""
    return rule.condition.metrics.union(*(catalog.histogram_parts(m) for m in rule.condition.metrics))


def needed_metrics(rules: Iterable[Rule]) -> set[str]:
    return {m for r in rules for m in reads(r)}


def conditions(
    rules: Sequence[Rule], samples: Samples, grid: Grid, *, lookback: float = LOOKBACK
) -> dict[str, tuple[pl.DataFrame, list[dict[str, str]]]]:
    """Per rule: the (k, sid, value) rows where its condition holds, and each sid's labels."""
    import polars as pl

    comp = Compiler(samples, grid, lookback, [rule.condition.tree for rule in rules])
    out: dict[str, tuple[pl.DataFrame, list[dict[str, str]]]] = {}
    for rule in rules:
        res = comp.eval(rule.condition.tree)
        if not isinstance(res, Vec):
            out[rule.name] = (empty_vec().drop("ok"), [])
            continue
        df = res.df.filter(pl.col("ok")).select("k", "sid", "value")
        if packable(df):
            # Why: most conditions come out ordered by (sid, k) already; one i64 check then skips the
            # unique + two-column sort, and otherwise a stable sort of one key keeps the first duplicate.
            key = df.select(pack()).to_series()
            if not (key.diff() > 0).all():
                first = (pl.col("key") != pl.col("key").shift(1)).fill_null(True)
                df = df.with_columns(key=key).sort("key", maintain_order=True).filter(first).drop("key")
        else:
            df = df.unique(["k", "sid"], keep="first").sort("sid", "k")
        out[rule.name] = (df, res.labels)
    return out


def _base(rule: Rule, value: float) -> float:
    # Why: templates see $value in base units (seconds, bytes), as Prometheus does on exported series.
    return units.scale(value, to_base(rule.condition.tree))


def alert_labels(rule: Rule, series: dict[str, str], value: float) -> dict[str, str]:
    """Series labels + rule labels (templated) + alertname + severity, as Prometheus builds them."""
    labels = dict(series)
    for k, v in rule.labels.items():
        labels[k] = template.render(v, _base(rule, value), series)
    labels["severity"] = rule.severity
    labels["alertname"] = rule.name
    return labels


def annotations(rule: Rule, series: dict[str, str], value: float) -> Labels:
    return make_labels({k: template.render(v, _base(rule, value), series) for k, v in rule.annotations.items()})


def evaluate(
    rules: Sequence[Rule],
    frame: pl.LazyFrame | pl.DataFrame | Samples,
    grid: Grid,
    *,
    lookback: float = LOOKBACK,
    aliases: dict[str, str] | None = None,
    ends: dict[str, float] | None = None,
) -> list[Alert]:
    """Every alert episode over the grid (history), vectorised; same answers as stepping AlertStates."""
    rules = [r for r in rules if r.enabled]
    samples = frame if isinstance(frame, Samples) else prepare(frame, needed_metrics(rules), aliases, ends)
    results = conditions(rules, samples, grid, lookback=lookback)
    alerts: list[Alert] = []
    for rule in rules:
        df, labels = results[rule.name]
        if df.height == 0:
            continue
        low = top_comparison(rule.condition.tree) in ("<", "<=")
        episodes = _episodes(_segments(df, low), rule, grid, low)
        if not episodes.height:
            continue
        # Why by row: the tick an episode fired is a row of ``df`` (its first run, ``for`` ticks in).
        values = df["value"].gather(episodes["row"]).to_list()
        sids, _k_active, _k_fire, k_resolved, peaks = (
            episodes[c].to_list() for c in ("sid", "k_active", "k_fire", "k_resolved", "peak")
        )
        texts = _Texts(rule, labels)
        # Tick times in one array operation each, not a call per alert.
        at = [grid.times(episodes[c].to_numpy()).tolist() for c in ("k_active", "k_fire")]
        ends = grid.times(episodes["k_resolved"].fill_null(grid.n - 1).to_numpy()).tolist()
        for i, value in enumerate(values):
            alert_labels_, alert_annotations = texts.get(sids[i], value)
            resolved = k_resolved[i]
            alerts.append(
                Alert(
                    rule.name,
                    rule.severity,
                    alert_labels_,
                    alert_annotations,
                    at[0][i] / US,
                    at[1][i] / US,
                    None if resolved is None else ends[i] / US,
                    value,
                    peaks[i],
                    rule.channels,
                )
            )
    alerts.sort(key=lambda a: (a.fired_at, a.rule, a.labels))
    return alerts


def evaluation_grids(rules: Sequence[Rule], samples: Samples, step_s: float) -> list[tuple[Grid, list[Rule]]]:
    """The ticks each rule is evaluated on over recorded runs, rules that share them together.

    Every rule sees the ``update_frequency`` grid and each run's last sample (a run's end is an
    evaluation point, so its final values are judged whatever else is selected beside it). A rule with
    ``for: 0`` also sees every sample of the metrics it reads: a training metric's sample is an event
    (one evaluation's loss), not a level, and a value that breaks such a rule must fire however briefly
    it held; ``for`` keeps Prometheus' meaning, a level that lasts across regular ticks.
    """
    import numpy as np

    bounds = samples.bounds()
    if bounds is None:
        return []
    ends = samples.run_last.filter(samples.run_last["run_end"] != END)["run_end"].unique().to_numpy()
    base = Grid.covering(bounds[0], bounds[1], step_s).with_times(ends)
    by_metrics: dict[frozenset[str] | None, list[Rule]] = {}
    for rule in rules:
        by_metrics.setdefault(None if rule.for_ > 0 else reads(rule), []).append(rule)
    grids: dict[int, tuple[Grid, list[Rule]]] = {}
    for metrics, group in by_metrics.items():
        grid = base
        if metrics:
            parts = [p for p, name in zip(samples.parts, samples.metric, strict=True) if name in metrics]
            times = [p.filter(~p["stale"])["t"].to_numpy() for p in parts]
            grid = base.with_times(np.concatenate(times)) if times else base
        grids.setdefault(id(grid), (grid, []))[1].extend(group)
    return list(grids.values())


def evaluate_runs(
    rules: Sequence[Rule], samples: Samples, step_s: float, ends: Mapping[str, float] | None = None
) -> list[Alert]:
    """Every alert episode over recorded runs (``alerts test``, the report), each rule on its own ticks.

    ``ends``: run id -> end (seconds) of the runs that ended. An episode of such a run resolves at its
    end at the latest, whatever ``keep_firing_for`` says, as ``record`` and ``watch`` tell the channels:
    a finished run has nothing left that could fire.
    """
    rules = [r for r in rules if r.enabled]
    alerts = [a for grid, group in evaluation_grids(rules, samples, step_s) for a in evaluate(group, samples, grid)]
    if ends:
        for k, alert in enumerate(alerts):
            end = ends.get(alert.run or "")
            if end is not None and (alert.resolved_at is None or alert.resolved_at > end):
                alerts[k] = replace(alert, resolved_at=max(end, alert.fired_at))
    alerts.sort(key=lambda a: (a.fired_at, a.rule, a.labels))
    return alerts


class _Texts:
    """One rule's alert labels and annotations per series and value, rendered once per series where
    no template reads ``$value``.

    Why: a flapping condition gives thousands of episodes of the same few series; rendering the same
    templates and sorting the same labels for each one cost more than finding the episodes.
    """

    def __init__(self, rule: Rule, series: list[dict[str, str]]) -> None:
        self.rule = rule
        self.series = series
        self.fixed_labels = not any(_reads_value(v) for v in rule.labels.values())
        self.fixed_annotations = not any(_reads_value(v) for v in rule.annotations.values())
        self.labels: dict[int, Labels] = {}
        self.annotations: dict[int, Labels] = {}

    def get(self, sid: int, value: float) -> tuple[Labels, Labels]:
        series = self.series[sid]
        labels = self.labels.get(sid) if self.fixed_labels else None
        if labels is None:
            labels = make_labels(alert_labels(self.rule, series, value))
            if self.fixed_labels:
                self.labels[sid] = labels
        ann = self.annotations.get(sid) if self.fixed_annotations else None
        if ann is None:
            ann = annotations(self.rule, series, value)
            if self.fixed_annotations:
                self.annotations[sid] = ann
        return labels, ann


def _reads_value(text: str) -> bool:
    # Why a substring test is enough: the template grammar's only way to the value is the term $value.
    return "$value" in text


def _segments(df: pl.DataFrame, low: bool) -> pl.DataFrame:
    """Runs of consecutive ticks per series in rows ordered by (sid, k): sid, k0, k1, peak and row0 (the
    run's first row in ``df``).

    Why numpy: the breaks are two array comparisons and the peaks one ``reduceat`` (fmax/fmin skip NaN
    as polars' max/min do), where a diff over sid and a group_by cost several times more.
    """
    import numpy as np
    import polars as pl

    if df["value"].null_count():  # (null values, never from the store: polars' max skips them)
        seg = (
            df.with_row_index("row")
            .with_columns(brk=(pl.col("k").diff().over("sid") != 1).fill_null(True))
            .with_columns(seg=pl.col("brk").cum_sum())
        )
        return (
            seg.group_by("sid", "seg", maintain_order=True)
            .agg(
                pl.col("k").first().alias("k0"),
                pl.col("k").last().alias("k1"),
                (pl.col("value").min() if low else pl.col("value").max()).alias("peak"),
                pl.col("row").first().cast(pl.Int64).alias("row0"),
            )
            .sort("sid", "k0")
        )
    k, sid, value = (df[c].to_numpy() for c in ("k", "sid", "value"))
    brk = np.ones(k.size, dtype=bool)
    brk[1:] = (np.diff(k) != 1) | (sid[1:] != sid[:-1])
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], k.size) - 1
    peak = (np.fmin if low else np.fmax).reduceat(value, starts) if starts.size else value[:0]
    return pl.DataFrame({"sid": sid[starts], "k0": k[starts], "k1": k[ends], "peak": peak, "row0": starts})


def _episodes(segs: pl.DataFrame, rule: Rule, grid: Grid, low: bool) -> pl.DataFrame:
    """Walk a rule's true-runs per series through the for / keep_firing_for state machine.

    Each episode: sid, k_active, k_fire, k_resolved (null while still firing), peak, and the row of
    ``df`` at k_fire (a run's ticks are consecutive rows, so it is ``hold`` rows after the run's first).
    """
    import polars as pl

    k0, k1 = segs["k0"].to_numpy(), segs["k1"].to_numpy()
    fire = grid.after(k0, round(rule.for_ * US))  # the first tick with t - activeAt >= for
    keep_us = round(rule.keep_firing_for * US)
    if keep_us == 0:
        # Why no walk: without keep_firing_for every run stands alone (runs are maximal, so two never
        # touch); a run of at least ``for`` fires that far in and resolves the tick after it ends.
        resolved = pl.col("k1") + 1
        return (
            segs.with_columns(fire=pl.Series(fire, dtype=pl.Int64))
            .filter(pl.col("fire") <= pl.col("k1"))
            .select(
                "sid",
                k_active="k0",
                k_fire="fire",
                k_resolved=pl.when(resolved < grid.n).then(resolved),
                peak="peak",
                row=pl.col("row0") + pl.col("fire") - pl.col("k0"),
            )
        )
    # The tick it resolves at, were the run the last: the first absent tick keep_firing_for after the
    # first absent one (Prometheus keeps firing while t - KeepFiringSince < keep_firing_for).
    ends = grid.after(k1 + 1, keep_us)
    better = min if low else max
    out: list[tuple[int, int, int, int | None, float, int]] = []
    cur: list[Any] | None = None  # [sid, k_active, k_fire, k_resolved, peak, row of k_fire]

    def close(c: list[Any]) -> None:
        out.append((c[0], c[1], c[2], c[3] if c[3] < grid.n else None, c[4], c[5]))

    rows = segs.select("sid", "k0", "k1", "peak", "row0").iter_rows()
    for (sid, k0_, k1_, peak, row0), fire_, end in zip(rows, fire.tolist(), ends.tolist(), strict=True):
        if cur is not None and (cur[0] != sid or k0_ > cur[3]):
            close(cur)
            cur = None
        if cur is not None:  # still firing (kept) when the condition came back
            cur[3], cur[4] = end, better(cur[4], peak)
            continue
        if fire_ <= k1_:
            cur = [sid, k0_, fire_, end, peak, row0 + fire_ - k0_]
    if cur is not None:
        close(cur)
    schema = {
        "sid": pl.UInt32,
        "k_active": pl.Int64,
        "k_fire": pl.Int64,
        "k_resolved": pl.Int64,
        "peak": pl.Float64,
        "row": pl.Int64,
    }
    return pl.DataFrame(out, schema=schema, orient="row")


# ---------------------------------------------------------------------------------------------------
# The incremental state machine (watch): one tick at a time, serialisable


@dataclass(slots=True)
class Instance:
    rule: str
    labels: dict[str, str]
    state: str  # pending | firing
    active_at: float
    fired_at: float | None = None
    value: float = math.nan
    keep_since: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)


class AlertStates:
    """Prometheus' per-rule alert bookkeeping, stepped tick by tick; ``to_json``/``from_json`` between runs."""

    def __init__(self) -> None:
        self.active: dict[str, dict[str, Instance]] = {}

    def step(self, rule: Rule, t: float, elements: dict[Labels, float]) -> list[AlertEvent]:
        """Advance ``rule`` to time ``t`` (seconds) given its true series -> value; return changes."""
        events: list[AlertEvent] = []
        table = self.active.setdefault(rule.name, {})
        seen: set[str] = set()
        for series, value in elements.items():
            sd = dict(series)
            labels = alert_labels(rule, sd, value)
            fp = json.dumps(sorted(labels.items()))
            seen.add(fp)
            ann = dict(annotations(rule, sd, value))
            inst = table.get(fp)
            if inst is None:
                table[fp] = Instance(rule.name, labels, "pending", t, value=value, annotations=ann)
            else:
                inst.value, inst.annotations = value, ann
        for fp, inst in list(table.items()):
            if fp not in seen:
                kept = False
                if inst.state == "firing" and rule.keep_firing_for > 0:
                    if inst.keep_since is None:
                        inst.keep_since = t
                    kept = t - inst.keep_since < rule.keep_firing_for - 1e-6
                if kept:
                    continue
                del table[fp]
                if inst.state == "firing":
                    events.append(self._event(rule, inst, "resolved", t))
                continue
            inst.keep_since = None
            if inst.state == "pending" and t - inst.active_at >= rule.for_ - 1e-6:
                inst.state, inst.fired_at = "firing", t
                events.append(self._event(rule, inst, "firing", t))
        return events

    def end_run(self, rules: Sequence[Rule], run: str, t: float) -> list[AlertEvent]:
        """The run is over: every instance of it ends, its firing ones resolve at ``t``.

        Why apart from ``step``: ``keep_firing_for`` would keep a finished run's alert firing with nothing
        left to evaluate it against, and the channels would never hear it resolve.
        """
        events: list[AlertEvent] = []
        for rule in rules:
            table = self.active.get(rule.name, {})
            for fp, inst in list(table.items()):
                if inst.labels.get("run") == run:
                    del table[fp]
                    if inst.state == "firing":
                        events.append(self._event(rule, inst, "resolved", t))
        return events

    def firing(self, rule: str) -> list[Instance]:
        return [i for i in self.active.get(rule, {}).values() if i.state == "firing"]

    @staticmethod
    def _event(rule: Rule, inst: Instance, state: str, t: float) -> AlertEvent:
        labels = make_labels(inst.labels)
        return AlertEvent(
            rule=rule.name,
            state=state,  # type: ignore[arg-type]
            severity=rule.severity,
            labels=labels,
            annotations=make_labels(inst.annotations),
            value=inst.value,
            started_at=inst.fired_at if inst.fired_at is not None else t,
            ended_at=t if state == "resolved" else None,
            channels=rule.channels,
            run=inst.labels.get("run"),
            host=inst.labels.get("host"),
            unit=unit_of(rule.condition.tree) or "",
        )

    def to_json(self) -> str:
        data = {
            name: [
                {
                    "labels": i.labels,
                    "state": i.state,
                    "active_at": i.active_at,
                    "fired_at": i.fired_at,
                    "value": None if math.isnan(i.value) else i.value,
                    "keep_since": i.keep_since,
                    "annotations": i.annotations,
                }
                for i in table.values()
            ]
            for name, table in self.active.items()
        }
        return json.dumps({"version": 1, "rules": data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AlertStates:
        states = cls()
        data = json.loads(text)
        for name, items in data.get("rules", {}).items():
            table = states.active.setdefault(name, {})
            for d in items:
                value = math.nan if d.get("value") is None else float(d["value"])
                inst = Instance(
                    name,
                    dict(d["labels"]),
                    d["state"],
                    d["active_at"],
                    d.get("fired_at"),
                    value,
                    d.get("keep_since"),
                    dict(d.get("annotations", {})),
                )
                table[json.dumps(sorted(inst.labels.items()))] = inst
        return states


def step_all(
    states: AlertStates,
    rules: Sequence[Rule],
    samples: Samples | pl.LazyFrame | pl.DataFrame,
    t: float,
    *,
    lookback: float = LOOKBACK,
    aliases: dict[str, str] | None = None,
) -> list[AlertEvent]:
    """The watch loop's tick: evaluate every rule at time ``t`` over recent samples and step the states."""
    rules = [r for r in rules if r.enabled]
    if not isinstance(samples, Samples):
        samples = prepare(samples, needed_metrics(rules), aliases)
    grid = Grid(round(t * US), US, 1)
    results = conditions(rules, samples, grid, lookback=lookback)
    events: list[AlertEvent] = []
    for rule in rules:
        df, labels = results[rule.name]
        elements = {make_labels(labels[sid]): value for _, sid, value in df.iter_rows()}
        events.extend(states.step(rule, t, elements))
    return events


def replay(
    rules: Sequence[Rule], samples: Samples, grid: Grid, *, lookback: float = LOOKBACK
) -> Iterable[tuple[int, AlertStates, list[AlertEvent]]]:
    """Step AlertStates over every tick of a grid (the unit-test runner; slower than ``evaluate``)."""
    rules = [r for r in rules if r.enabled]
    results = conditions(rules, samples, grid, lookback=lookback)
    per_rule: dict[str, dict[int, dict[Labels, float]]] = {}
    for rule in rules:
        df, labels = results[rule.name]
        ticks: dict[int, dict[Labels, float]] = {}
        for k, sid, value in df.iter_rows():
            ticks.setdefault(k, {})[make_labels(labels[sid])] = value
        per_rule[rule.name] = ticks
    states = AlertStates()
    for k in range(grid.n):
        t = grid.time(k) / US
        events: list[AlertEvent] = []
        for rule in rules:
            events.extend(states.step(rule, t, per_rule[rule.name].get(k, {})))
        yield k, states, events
