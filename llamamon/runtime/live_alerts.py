"""Alert rules evaluated live, tick by tick, for ``llamamon record`` (its own run) and ``llamamon watch``.

Composition: samples go into a trailing window kept in memory (only the metrics some rule needs, so a
tick costs a small frame, never a store scan); each tick ``engine.step_all`` advances the persistent
``AlertStates``; the resulting resolves plus every instance still firing go to the shared
``NotificationLedger`` (once on firing, once on resolve, again every repeat_interval, never twice across
record and watch); what it lets through goes to ``Dispatcher.submit`` in the background, so delivery never
holds up a tick. A run that ends gets a staleness marker after its last sample, as Prometheus does for a
vanished target, so its alerts resolve when it ends rather than a lookback later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamamon import catalog
from llamamon.fsutil import atomic_write
from llamamon.samples import AlertEvent, Row, Sample, labels_to_str

if TYPE_CHECKING:
    from llamamon.config import Config
    from llamamon.rules.engine import Rule

log = logging.getLogger("llamamon.alerts")

DRAIN_TIMEOUT_S = 5.0
MARGIN_S = 5.0

# (time in microseconds as the store rounds it, run, host, metric, value, labels, stale)
Entry = tuple[int, str, str, str, float, str, bool]
US = 1_000_000


def _windows(node: Any) -> float:
    """The longest range window in a condition tree (0 without window functions)."""
    from llamamon.rules.lang import Binary, Call, Unary

    if isinstance(node, Call):
        return max([node.window, *(_windows(a) for a in node.args)])
    if isinstance(node, Unary):
        return _windows(node.operand)
    if isinstance(node, Binary):
        return max(_windows(node.left), _windows(node.right))
    return 0.0


def trailing_window(rules: Sequence[Rule]) -> float:
    """Seconds of history a tick needs: lookback + the longest range window + margin.

    ``for`` and ``keep_firing_for`` need no history: AlertStates carries them from tick to tick.
    """
    from llamamon.rules.engine import LOOKBACK

    longest = max((_windows(r.condition.tree) for r in rules), default=0.0)
    return LOOKBACK + longest + MARGIN_S


class LiveAlerts:
    """Rules stepped over a trailing in-memory window; notifications through the shared ledger.

    ``scope`` names the file the AlertStates are kept in between processes (``alerts/engine-<scope>.json``);
    None keeps them in memory only (``record``: its run ends with the process).
    """

    def __init__(self, config: Config, metrics_dir: Path, *, scope: str | None = None) -> None:
        from llamamon.channels.dispatch import Dispatcher
        from llamamon.channels.registry import build_channels
        from llamamon.rules.builtin import rules_from_config
        from llamamon.rules.engine import AlertStates, needed_metrics
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
        wanted = needed_metrics(self.rules)
        table = {**catalog.ALIASES, **self.aliases}
        self.raw_metrics = wanted | {alias for alias, target in table.items() if target in wanted}
        self._held_metrics = {
            m for m in self.raw_metrics if catalog.group_of(catalog.canonical(m, self.aliases)) == "training"
        }
        self.channels = build_channels(config.alerts.channels, source=config.source)
        self.dispatcher = Dispatcher(self.channels)
        self.ledger = NotificationLedger(metrics_dir, config.alerts.repeat_interval)
        self.state_path = Path(metrics_dir) / "alerts" / f"engine-{scope}.json" if scope else None
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
        self._entries: list[Entry] = []
        self._ended: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # run -> its latest row of any metric (us): the run's last sample
        self.sent = 0

    # -- samples ----------------------------------------------------------------------------------

    def wants(self, metric: str) -> bool:
        return metric in self.raw_metrics

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
                    self._entries.append((t, run, host, row.metric, row.value, labels_to_str(row.labels), False))
            self._seen[run] = seen

    def add_entries(self, entries: Iterable[Entry]) -> None:
        """Rows already in the window's own shape (a store scan); metrics no rule needs are dropped."""
        with self._lock:
            for e in entries:
                self._seen[e[1]] = max(self._seen.get(e[1], 0), e[0])
                if e[3] in self.raw_metrics:
                    self._entries.append(e)

    def end_run(self, run: str, at: float) -> float:
        """Mark every series of ``run`` stale just after ``at`` and its last sample; returns the marker's time."""
        with self._lock:
            last = max((e[0] for e in self._entries if e[1] == run), default=0)
            t = max(round(at * US), last) + 1
            self._ended[run] = t
            seen = {(e[1], e[2], e[3], e[5]) for e in self._entries if e[1] == run}
            for run_, host, metric, labels in seen:
                self._entries.append((t, run_, host, metric, math.nan, labels, True))
        return t / US

    def last_time(self, run: str) -> float | None:
        """Seconds of the run's latest sample in the window (None when it has none)."""
        with self._lock:
            last = max((e[0] for e in self._entries if e[1] == run and not e[6]), default=None)
        return None if last is None else last / US

    def _trim(self, now: float) -> tuple[list[Entry], set[str], dict[str, int]]:
        """Drop what fell out of the window; a copy of the entries, ended runs and runs' last samples."""
        cutoff = round((now - self.window) * US)
        with self._lock:
            held: dict[tuple[str, str, str, str], Entry] = {}
            for e in self._entries:
                # Why: training metrics (loss ...) hold their last value until the next one or the run's
                # end, however old; so the newest one of each series stays in the window.
                if e[0] < cutoff and e[3] in self._held_metrics:
                    key = (e[1], e[2], e[3], e[5])
                    if key not in held or held[key][0] <= e[0]:
                        held[key] = e
            kept = (e for e in held.values() if not e[6])  # a staleness marker: the run ended, let it go
            self._entries = [*kept, *(e for e in self._entries if e[0] >= cutoff)]
            for run in [r for r, t in self._ended.items() if t < cutoff]:
                del self._ended[run]
            for run in [r for r, t in self._seen.items() if t < cutoff and r not in self._ended]:
                del self._seen[run]
            return list(self._entries), set(self._ended), dict(self._seen)

    def _samples(self, now: float) -> Any:
        """The window prepared for the engine, each run's last sample counting every metric it recorded.

        Why: the engine holds a training metric (loss ...) until its run's last sample; the window keeps
        only the metrics rules need, so the run's last sample of anything is set from what ``add`` saw.
        """
        import polars as pl

        from llamamon.rules.engine import needed_metrics, prepare

        entries, ended, last_seen = self._trim(now)
        schema = {
            "time": pl.Int64,
            "run": pl.String,
            "host": pl.String,
            "metric": pl.String,
            "value": pl.Float64,
            "labels": pl.String,
            "stale": pl.Boolean,
        }
        df = pl.DataFrame(entries, schema=schema, orient="row")
        # Why unique: a row may reach us twice (journal tail, then the Parquet file it was folded into).
        df = df.unique(["time", "run", "host", "metric", "labels", "stale"], keep="first", maintain_order=True)
        df = df.with_columns(pl.col("time").cast(pl.Datetime("us", "UTC")))
        samples = prepare(df, needed_metrics(self.rules), self.aliases)
        if samples.labels:
            seen = [-1 if (run := lab.get("run", "")) in ended else last_seen.get(run, -1) for lab in samples.labels]
            by_sid = pl.Series("seen", seen, pl.Int64)
            samples.run_last = samples.run_last.sort("sid").with_columns(
                run_last=pl.max_horizontal("run_last", by_sid)  # sorted by sid, 0..n-1: aligned
            )
        return samples

    # -- ticks ------------------------------------------------------------------------------------

    def evaluate(self, now: float) -> tuple[list[AlertEvent], list[AlertEvent]]:
        """Step every rule at ``now``: (state changes, notifications due). Blocking; run off the loop."""
        from llamamon.rules.engine import step_all

        changes = step_all(self.states, self.rules, self._samples(now), now, aliases=self.aliases)
        due: list[AlertEvent] = []
        if self.channels:
            # Why every firing instance each tick: the ledger decides repeats (repeat_interval) from them.
            candidates = [e for e in changes if e.state == "resolved"] + self.firing_events(now)
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
            self.states._event(rule, inst, "firing", now)  # the engine's own event builder
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
        parts.append(f"value={event.value:.6g}")
    if event.run:
        parts.append(f"run={event.run}")
    return " ".join(parts)


class RunAlerts:
    """``record``'s hook: its own run's rows in, notifications out; one call per tick, one at exit.

    Evaluation runs beside the sampler, never inside its tick: a slow evaluation (polars' first import,
    a long window) skips an evaluation, never a sample; the next one sees every row. What the job logs
    itself (``llamamon.log()``, its own journal segments) is followed as ``watch`` follows a run.
    """

    def __init__(self, config: Config, metrics_dir: Path, run_id: str, host: str) -> None:
        from llamamon.runtime.watcher import RunFollower

        self.live = LiveAlerts(config, metrics_dir)
        self.run_id = run_id
        self.host = host
        self.job = RunFollower(Path(metrics_dir), self.live, {run_id}, skip_pid=os.getpid())
        # Why not every sample tick: rules are defined on the update_frequency grid (as `alerts test`
        # evaluates them), and one evaluation costs tens of ms of polars work; `--interval 0.1` must not
        # turn that into the recorder's main cost.
        self.period = config.update_frequency
        self._next_eval = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def on_tick(self, rows: Sequence[Row], now: float) -> list[Row]:
        """Feed the tick's rows, start an evaluation unless one is under way; returns the
        notification_failures rows to store with the tick."""
        self.live.add(rows, self.run_id, self.host)
        if now >= self._next_eval and (self._task is None or self._task.done()):
            self._next_eval = now + self.period
            self._task = asyncio.get_running_loop().create_task(self._evaluate(now))
        group = catalog.group_of("notification_failures")
        return [Row(now, group, s.metric, s.value, s.labels, None) for s in self.live.failure_samples()]

    async def _evaluate(self, now: float, *, final_at: float | None = None) -> None:
        try:
            await asyncio.to_thread(self.job.poll, now)
            if final_at is not None:
                now = max(now, self.live.end_run(self.run_id, final_at))
            for event in await self.live.tick(now):
                log.info("alert %s", describe(event))
        except Exception as exc:  # noqa: BLE001 - alerting must never stop the recording
            if not self._failed:
                self._failed = True
                log.error("evaluating alert rules failed: %s (logged once; recording goes on)", exc)

    async def finish(self, ended: float) -> None:
        """The run is over: its alerts resolve, the last notifications get a short while to go out."""
        if self._task is not None:
            await self._task
        await self._evaluate(time.time(), final_at=ended)
        await self.live.close()
