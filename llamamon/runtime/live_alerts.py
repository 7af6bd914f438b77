"""Alert rules evaluated live, tick by tick, for ``llamamon record`` (its own run) and ``llamamon watch``.

Composition: samples go into a trailing window kept in memory, one time-sorted buffer per series (only
the metrics some rule needs, trimmed as the window moves, never a store scan; what ``evals_since_best``
counts is folded into a running minimum as it leaves, so that count spans the run); each tick
``rules.instant.step_at`` evaluates the rules in plain Python (the same answers as the history evaluator,
without polars' import and per-call overhead) at the tick, at each run's last sample and, for rules with
``for: 0``, at every new sample of what they read (the evaluation points ``alerts test`` uses, see
``history.evaluation_grids``), and advances the persistent ``AlertStates``; the resulting resolves plus every instance still firing go to the shared
``NotificationLedger`` (once on firing, once on resolve, again every repeat_interval, never twice across
record and watch); what it lets through goes to ``Dispatcher.submit`` in the background, so delivery never
holds up a tick. A run that ends gets a staleness marker after its last sample, as Prometheus does for a
vanished target, so its alerts resolve when it ends rather than a lookback later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.fsutil import atomic_write
from llamamon.rules.instant import Best, Series, fold_best, step_at
from llamamon.rules.promql import LOOKBACK, US, series_labels
from llamamon.samples import AlertEvent, Row, Sample, labels_to_str
from llamamon.store.follower import Entry
from llamamon.store.layout import alert_states_file

if TYPE_CHECKING:
    from llamamon.config import Config
    from llamamon.rules.model import Rule

log = logging.getLogger("llamamon.alerts")

DRAIN_TIMEOUT_S = 5.0
MARGIN_S = 5.0
INSTANT_WINDOW = LOOKBACK + MARGIN_S  # kept of a metric no range window reads

# A stored series: (run, host, metric as recorded, labels)
Key = tuple[str, str, str, str]
# A series as rules see it (an alias and its canonical name are one): (run, host, canonical metric, labels)
Group = tuple[str, str, str, str]


@dataclass(slots=True)
class _Buffer:
    """One stored series' rows in the window, sorted by time (stale: a run's end)."""

    times: list[int]
    values: list[float]
    stale: list[bool]

    def last_sample(self) -> int:
        for k in range(len(self.times) - 1, -1, -1):
            if not self.stale[k]:
                return self.times[k]
        return -1


def _time(row: tuple[int, float, bool]) -> int:
    return row[0]


def trailing_window(rules: Sequence[Rule]) -> float:
    """Seconds of history a tick needs: lookback + the longest range window + margin.

    ``for`` and ``keep_firing_for`` need no history: AlertStates carries them from tick to tick.
    """
    return LOOKBACK + _longest_window(rules) + MARGIN_S


def _longest_window(rules: Sequence[Rule]) -> float:
    from llamamon.rules.tree import Call, subtrees

    return max((n.window for r in rules for n in subtrees(r.condition.tree) if isinstance(n, Call)), default=0.0)


def metric_windows(rules: Sequence[Rule]) -> dict[str, float]:
    """Per canonical metric (a histogram's part series too) a range window reads: seconds of history its
    series need, lookback + the longest such window + margin (any other metric: ``kept_for``'s default).

    Why per metric: the longest window (30 minutes of loss for ``train_loss_plateau``) would otherwise
    keep 35 minutes of every series a rule reads, memory_usage at 0.1 s included, for nothing: an
    instant comparison looks back only LOOKBACK. A window over anything but a plain selector keeps
    every selector under it for the longest window of all.
    """
    from llamamon.rules.tree import Call, Selector, subtrees

    everything = _longest_window(rules)
    longest: dict[str, float] = {}
    for rule in rules:
        for node in subtrees(rule.condition.tree):
            if not (isinstance(node, Call) and node.window and node.args):
                continue
            arg = node.args[0]
            window = node.window if isinstance(arg, Selector) else everything
            for sel in (n for n in subtrees(arg) if isinstance(n, Selector)):
                for name in (sel.metric, *catalog.histogram_parts(sel.metric)):
                    longest[name] = max(longest.get(name, 0.0), window)
    return {name: LOOKBACK + window + MARGIN_S for name, window in longest.items()}


class LiveAlerts:
    """Rules stepped over a trailing in-memory window; notifications through the shared ledger.

    ``scope`` names the file the AlertStates are kept in between processes (``alerts/engine-<scope>.json``);
    None keeps them in memory only (``record``: its run ends with the process).
    """

    def __init__(self, config: Config, metrics_dir: Path, *, scope: str | None = None) -> None:
        from llamamon.channels.dispatch import Dispatcher
        from llamamon.channels.registry import UnsetChannel, build_channels
        from llamamon.rules.builtin import rules_from_config
        from llamamon.rules.model import needed_metrics, reads, stored_names
        from llamamon.rules.states import AlertStates
        from llamamon.rules.tree import Call, subtrees
        from llamamon.runtime.alert_ledger import NotificationLedger

        def recorded(names: set[str] | None) -> set[str]:
            # Names the job logged in earlier runs count as known (new ones are declared under `metrics:`);
            # polars is imported only when a rule names something nothing else knows.
            from llamamon.store.reader import metric_names

            return metric_names(metrics_dir, names)

        self.rules = [
            r for r in rules_from_config(config, recorded=recorded, recorded_where=str(metrics_dir)) if r.enabled
        ]
        self.by_name = {r.name: r for r in self.rules}
        self.aliases = dict(getattr(config, "aliases", None) or {})
        self.window = trailing_window(self.rules)
        self._windows = metric_windows(self.rules)
        self.raw_metrics = stored_names(needed_metrics(self.rules), self.aliases)
        self._held_metrics = {
            m for m in self.raw_metrics if catalog.group_of(catalog.canonical(m, self.aliases)) == "training"
        }
        counted = {
            catalog.canonical(n.args[0].metric, self.aliases)  # type: ignore[union-attr]
            for r in self.rules
            for n in subtrees(r.condition.tree)
            if isinstance(n, Call) and n.func == "evals_since_best"
        }
        self._best_metrics = {m for m in self.raw_metrics if catalog.canonical(m, self.aliases) in counted}
        channels = build_channels(config.alerts.channels, source=config.source)
        # A channel whose ${VAR}s are unset (the built-in config's Slack and email on most machines) is off:
        # said once here, and its alerts are neither sent nor counted as failed deliveries.
        off = {name for name, channel in channels.items() if isinstance(channel, UnsetChannel)}
        for name in sorted(off):
            log.info("%s", channels[name].off_line())
        self.channels = {name: channel for name, channel in channels.items() if name not in off}
        self.dispatcher = Dispatcher(self.channels, off=off)
        self.ledger = NotificationLedger(metrics_dir, config.alerts.repeat_interval)
        self.state_path = alert_states_file(metrics_dir, scope) if scope else None
        self.states = AlertStates()
        self._saved = ""
        if self.state_path is not None and self.state_path.exists():
            try:
                self.states = AlertStates.from_json(self.state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Why not fatal: a damaged state file costs at most a `for` period re-waited.
                log.warning("alert engine state %s unreadable (%s); starting afresh", self.state_path, exc)
        # Why a lock: record's sampler adds rows while an evaluation runs in a worker thread.
        self._lock = threading.Lock()
        self._series: dict[Key, _Buffer] = {}
        self._by_run: dict[str, set[Key]] = {}
        self._layout: list[tuple[Group, list[Key]]] | None = None  # None: series changed
        self._best: dict[Group, Best] = {}  # evals_since_best over what was trimmed, per series
        self._names: dict[str, str] = {}
        self._label_cache: dict[tuple[str, str, str], dict[str, str]] = {}
        self._ended: dict[str, int] = {}
        self._closing: dict[str, int] = {}  # ended runs whose alerts are still to be ended (us of the marker)
        self._seen: dict[str, int] = {}  # run -> its latest row of any metric (us): the run's last sample
        # Evaluation points still to step (us -> rule names): new samples of what `for: 0` rules read, and
        # each ended run's last sample for every rule.
        self._events_of: dict[str, list[str]] = {}  # canonical metric -> `for: 0` rules that read it
        for r in self.rules:
            if r.for_ == 0:
                for m in reads(r):  # (a histogram's bucket series too)
                    self._events_of.setdefault(m, []).append(r.name)
        self._points: dict[int, set[str]] = {}
        self._stepped: dict[str, float] = {}  # rule -> its last step (s)
        self._since: int | None = None  # us: evaluation points before it are context, not news (follow_from)
        self.sent = 0

    # -- samples ----------------------------------------------------------------------------------

    def follow_from(self, t: float) -> None:
        """Judge only what happens from ``t`` on: the rows loaded from before it are history for windows
        and ``for``, never stepped at their own times.

        Why: ``watch`` started after a run ended loads that run's last minutes, and stepping them would page
        an alert that fired and resolved before anyone watched (``alerts test`` is where that history is
        judged). Each evaluation still judges every rule at its own ``now``.
        """
        self._since = round(t * US)

    def wants(self, metric: str) -> bool:
        return metric in self.raw_metrics

    def _insert(self, key: Key, t: int, value: float, stale: bool) -> None:
        """One row into its series, kept sorted by time; a row seen before (same time and kind) is dropped.

        Why dedup: a row may reach us twice (journal tail, then the Parquet file it was folded into).
        """
        buf = self._series.get(key)
        if buf is None:
            buf = self._series[key] = _Buffer([], [], [])
            self._by_run.setdefault(key[0], set()).add(key)
            self._layout = None
        times = buf.times
        if not times or t > times[-1]:
            k = len(times)
        else:
            k = bisect_right(times, t)
            for j in range(bisect_left(times, t), k):
                if buf.stale[j] == stale:
                    return
        times.insert(k, t)
        buf.values.insert(k, value)
        buf.stale.insert(k, stale)
        if not stale:
            names = self._events_of.get(self._canonical(key[2]))
            if names:
                self._points.setdefault(t, set()).update(names)

    def add(self, rows: Iterable[Row], run: str, host: str) -> None:
        """Rows of one run (``run`` "" for samples not recorded in a run) enter the window."""
        rows = list(rows)
        with self._lock:
            seen = self._seen.get(run, 0)
            for row in rows:
                if not math.isfinite(row.time):
                    continue
                t = round(row.time * US)
                seen = max(seen, t)
                if row.metric in self.raw_metrics:
                    self._insert((run, host, row.metric, labels_to_str(row.labels)), t, row.value, False)
            self._seen[run] = seen

    def add_entries(self, entries: Iterable[Entry]) -> None:
        """Rows already in the window's own shape (a store scan); metrics no rule needs are dropped."""
        with self._lock:
            for t, run, host, metric, value, labels, stale in entries:
                self._seen[run] = max(self._seen.get(run, 0), t)
                if metric in self.raw_metrics:
                    self._insert((run, host, metric, labels), t, value, stale)

    def end_run(self, run: str, at: float) -> float:
        """Mark every series of ``run`` stale just after ``at`` and its last sample; returns the marker's time.

        The run's end is an evaluation point of every rule, as in ``alerts test`` (a level that reached its
        ``for`` by the end fires), and the next evaluation at or after the marker ends every alert of the run.
        """
        with self._lock:
            keys = sorted(self._by_run.get(run, ()))
            last = max((self._series[k].times[-1] for k in keys), default=0)
            t = max(round(at * US), last) + 1
            self._ended[run] = t
            self._closing[run] = t
            if keys:
                self._points.setdefault(t - 1, set()).update(self.by_name)
            for key in keys:
                self._insert(key, t, math.nan, True)
        return t / US

    def last_time(self, run: str) -> float | None:
        """Seconds of the run's latest sample in the window (None when it has none)."""
        with self._lock:
            last = max((self._series[k].last_sample() for k in self._by_run.get(run, ())), default=-1)
        return None if last < 0 else last / US

    def _trim(self, now: float) -> None:
        """Drop what fell out of the window (under the lock); what evals_since_best counts is folded first."""
        cutoff = round((now - self.window) * US)
        cuts = {
            key: bisect_left(buf.times, round((now - self.kept_for(key[2])) * US)) for key, buf in self._series.items()
        }
        # Why: training metrics (loss ...) hold their last value until the next one or the run's end, however
        # old; so the newest row of each series stays, unless it is a staleness marker.
        for key, k in cuts.items():
            held = key[2] in self._held_metrics and key[2] not in self._best_metrics
            if k and held and not self._series[key].stale[k - 1]:
                cuts[key] = k - 1
        # A series counted by evals_since_best (held too) keeps only its newest row across an alias and its
        # canonical name, so what is folded precedes everything kept.
        trimmed: dict[Group, list[tuple[int, float, bool, Key]]] = {}
        for key, k in cuts.items():
            if k and key[2] in self._best_metrics:
                buf = self._series[key]
                rows = zip(buf.times[:k], buf.values[:k], buf.stale[:k], [key] * k, strict=True)
                trimmed.setdefault(self._group(key), []).extend(rows)
        for group, rows in trimmed.items():
            rows.sort(key=_time)
            if not rows[-1][2]:
                newest = rows.pop()
                cuts[newest[3]] -= 1
            folded = fold_best(self._best.get(group), [r[1] for r in rows if not r[2]])
            if folded is not None:
                self._best[group] = folded
        for key, k in cuts.items():
            if not k:
                continue
            buf = self._series[key]
            del buf.times[:k], buf.values[:k], buf.stale[:k]
            if not buf.times:
                del self._series[key]
                self._by_run[key[0]].discard(key)
                if not self._by_run[key[0]]:
                    del self._by_run[key[0]]
                self._layout = None
        if trimmed and self._layout is None:
            alive = {self._group(key) for key in self._series}
            for group in [g for g in self._best if g not in alive]:
                del self._best[group]
        for run in [r for r, t in self._ended.items() if t < cutoff]:
            del self._ended[run]
        for run in [r for r, t in self._seen.items() if t < cutoff and r not in self._ended]:
            del self._seen[run]

    def kept_for(self, metric: str) -> float:
        """Seconds of history the window keeps of a stored metric: what the range windows over it need, or the
        lookback of an instant comparison (``metric_windows``)."""
        return self._windows.get(self._canonical(metric), INSTANT_WINDOW)

    def _group(self, key: Key) -> Group:
        return key[0], key[1], self._canonical(key[2]), key[3]

    def _view(self, now: float) -> list[Series]:
        """The window as the engine sees it (under the lock): series by canonical name, each run's last sample
        counting every metric it recorded.

        Why the run's last sample from ``add``: a training metric (loss ...) holds until its run's last
        sample, and the window keeps only the metrics rules need.
        """
        self._trim(now)
        if self._layout is None:
            groups: dict[Group, list[Key]] = {}
            for key in self._series:
                groups.setdefault(self._group(key), []).append(key)
            self._layout = sorted(groups.items())  # the engine's series order: run, host, metric, labels
        series: list[Series] = []
        run_last: dict[str, int] = {}
        for group, keys in self._layout:
            run, host, metric, labels = group
            bufs = [self._series[k] for k in keys]
            if len(bufs) == 1:
                times, values, stale = bufs[0].times, bufs[0].values, bufs[0].stale
            else:  # an alias and its canonical name are one series
                rows = sorted((r for b in bufs for r in zip(b.times, b.values, b.stale, strict=True)), key=_time)
                times, values, stale = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
            series.append(
                Series(metric, self._labels(labels, run, host), times, values, stale, -1, self._best.get(group))
            )
            run_last[run] = max(run_last.get(run, -1), times[-1])
        for s, ((run, *_), _keys) in zip(series, self._layout, strict=True):
            # An ended run's series answer until its end, as offline where the run's metadata ends it.
            seen = self._ended[run] - 1 if run in self._ended else self._seen.get(run, -1)
            s.run_last = max(run_last[run], seen)
        return series

    def _canonical(self, metric: str) -> str:
        name = self._names.get(metric)
        if name is None:
            name = self._names[metric] = catalog.canonical(metric, self.aliases)
        return name

    def _labels(self, text: str, run: str, host: str) -> dict[str, str]:
        found = self._label_cache.get((text, run, host))
        if found is None:
            found = self._label_cache[(text, run, host)] = series_labels(text, run, host)
        return found

    # -- ticks ------------------------------------------------------------------------------------

    def evaluate(self, now: float) -> tuple[list[AlertEvent], list[AlertEvent]]:
        """Step every rule at ``now``: (state changes, notifications due). Blocking; run off the loop."""
        with self._lock:
            # Why under the lock: the series are the live buffers, not copies (record adds from its loop).
            points, self._points = self._points, {}
            if self._since is not None:
                points = {t: names for t, names in points.items() if t >= self._since}
            points.setdefault(round(now * US), set()).update(self.by_name)
            changes = step_at(self.states, self.rules, self._view(now), points, self._stepped)
            for run, t in [(r, t) for r, t in self._closing.items() if t <= round(now * US)]:
                del self._closing[run]
                changes += self.states.end_run(self.rules, run, t / US)
        due: list[AlertEvent] = []
        if self.channels:
            # Why the changes in order: an alert may fire and resolve within one evaluation (a run that ends
            # just after its `for` is reached), and that alert must still be told. Why every firing instance
            # after them: the ledger decides repeats (repeat_interval) from them.
            candidates = changes + self.firing_events(now)
            due = self.ledger.due(candidates, now)
        self.save()
        return changes, due

    async def tick(self, now: float | None = None) -> list[AlertEvent]:
        """Evaluate off the event loop, hand what is due to the channels in the background; return changes."""
        now = time.time() if now is None else now
        changes, due = await asyncio.to_thread(self.evaluate, now)
        if due:
            self.sent += len(due)
            self.dispatcher.submit(due)
        return changes

    def firing_events(self, now: float) -> list[AlertEvent]:
        return [
            self.states.event(rule, inst, "firing", now)
            for rule in self.rules
            for inst in self.states.firing(rule.name)
        ]

    def worst_firing(self) -> str | None:
        from llamamon.severity import SEVERITIES

        found = [r.severity for r in self.rules if self.states.firing(r.name) and r.severity in SEVERITIES]
        return max(found, key=SEVERITIES.index) if found else None

    def failure_samples(self) -> list[Sample]:
        return self.dispatcher.failure_samples() if self.channels else []

    def save(self) -> None:
        """Write the AlertStates when they changed (an fsync per tick would be wasted on a quiet host)."""
        if self.state_path is None:
            return
        text = self.states.to_json()
        if text != self._saved or not self.state_path.exists():
            atomic_write(self.state_path, text.encode())
            self._saved = text

    async def close(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Wait a little for deliveries still under way; state is saved."""
        self.save()
        await self.dispatcher.drain(timeout)


def describe(event: AlertEvent) -> str:
    """One log line for a state change: ``FIRING critical rule {labels} value=... run=...``."""
    shown = ",".join(f"{k}={v}" for k, v in event.labels if k not in ("alertname", "severity", "run", "host"))
    parts = [event.state.upper(), event.severity, event.rule]
    if shown:
        parts.append("{" + shown + "}")
    if event.value == event.value:
        from llamamon.channels.render import format_value

        parts.append(f"value={format_value(event.value, event.unit)}")  # as the notifications write it
    if event.run:
        parts.append(f"run={event.run}")
    return " ".join(parts)
