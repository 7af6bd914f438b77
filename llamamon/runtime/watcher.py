"""Composition root of ``llamamon watch``: this host's collectors + the runs being recorded -> live alerts.

Each tick samples the host (system, GPU), reads what the recorded runs appended since the last tick
(store.follower: their live journal segments, tailed by byte offset; a segment folded away meanwhile is caught up from
the Parquet file it became; a run that ended gets its series marked stale) and steps the rules over the
trailing window (runtime.live_alerts). The store is scanned once at start for that window, never per tick.
Rendering belongs to the CLI: each tick hands it a ``Snapshot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.errors import ConfigError
from llamamon.host import this_host
from llamamon.runtime.live_alerts import LiveAlerts
from llamamon.runtime.ticker import Stop, Ticker, run_ticks
from llamamon.samples import AlertEvent, Row, labels_to_str
from llamamon.severity import SEVERITIES
from llamamon.store.follower import RunFollower

if TYPE_CHECKING:
    from llamamon.collectors.base import MetricsCollector
    from llamamon.collectors.session import CollectorSession
    from llamamon.config import Config
    from llamamon.prometheus.textfile import TextfileWriter

log = logging.getLogger("llamamon.watch")

# Shown in the live view, per host / GPU / run.
VIEW_METRICS = (
    "cpu_usage",
    "memory_usage",
    "gpu_utilization",
    "gpu_memory_usage",
    "gpu_temperature",
    "process_cpu_usage",
    "process_memory_rss",
    "loss",
    "learning_rate",
)


@dataclass
class WatchOptions:
    config_path: str | None = None
    metrics_dir: str | None = None
    interval: float | None = None
    once: bool = False
    runs: list[str] = field(default_factory=list)
    gpu: bool = True


@dataclass
class Snapshot:
    """What one tick saw: latest values per (run, host, metric, labels), firing alerts, state changes."""

    time: float
    interval: float
    metrics_dir: Path
    latest: dict[tuple[str, str, str, str], float]
    firing: list[AlertEvent]
    changes: list[AlertEvent]
    runs: list[str]


def watch(options: WatchOptions, on_tick: Callable[[Snapshot], None]) -> int:
    """Watch until stopped (SIGINT/SIGTERM) or, with ``once``, for one tick; returns the exit status."""
    from llamamon.config import load_config
    from llamamon.store.location import open_location, resolved
    from llamamon.store.runs import list_runs

    config = load_config(options.config_path)
    interval = options.interval if options.interval is not None else config.monitoring.update_frequency
    if not interval > 0:
        raise ConfigError(f"must be more than 0 seconds (got {interval})", path="--interval")
    location = open_location(resolved(options.metrics_dir or config.monitoring.metrics_path))
    location.pull(set())  # a bucket: its run metadata first, to resolve the runs asked for
    metrics_dir = location.root
    only = _resolve(metrics_dir, options.runs) if options.runs else None

    def pull() -> None:
        """A bucket's metadata, then the partitions of the runs watched (those asked for, else the running)."""
        location.pull(set())
        location.pull(only if only is not None else {r.id for r in list_runs(metrics_dir) if r.end is None})

    pull()
    refresh = pull if location.bucket is not None else None
    watcher = Watcher(
        config, metrics_dir, float(interval), only=only, gpu=options.gpu, on_tick=on_tick, refresh=refresh
    )
    return asyncio.run(watcher.main(once=options.once))


def _resolve(metrics_dir: Path, refs: Iterable[str]) -> set[str]:
    from llamamon.store.runs import list_runs, resolve_run

    runs = list_runs(metrics_dir)
    return {resolve_run(metrics_dir, ref, runs).id for ref in refs}


PULL_EVERY_S = 10.0  # how often watch brings a bucket's new files into its mirror


class Watcher:
    def __init__(
        self,
        config: Config,
        metrics_dir: Path,
        interval: float,
        *,
        only: set[str] | None = None,
        gpu: bool = True,
        on_tick: Callable[[Snapshot], None],
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._refresh = refresh  # a bucket's pull, in a thread every PULL_EVERY_S (never awaited by a tick)
        self._pulling: asyncio.Future[None] | None = None
        self._next_pull = 0.0
        self.metrics_dir = metrics_dir
        self.interval = interval
        self.gpu = gpu
        self.on_tick = on_tick
        self.host = this_host()
        self.live = LiveAlerts(config, metrics_dir, scope="watch")
        self.follower = RunFollower(metrics_dir, self.live, only, metrics=VIEW_METRICS)
        self.latest: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        self._failed: set[str] = set()
        self.textfile: TextfileWriter | None = None
        if config.monitoring.export_format == "prometheus":
            from llamamon.prometheus.textfile import TextfileWriter
            from llamamon.store.layout import textfile_folder

            # This host's samples and the alerts firing; the runs' own textfiles come from `record`.
            folder = textfile_folder(metrics_dir, config.monitoring.textfile_dir)
            self.textfile = TextfileWriter(
                folder,
                self.host,
                "watch",
                labels={"host": self.host},
                refresh=config.monitoring.textfile_refresh,
                grace=config.monitoring.textfile_grace,
            )

    def _pull(self, now: float) -> None:
        """Start the next pull of the bucket when due and the last one is done; say a failure once."""
        if self._refresh is None or now < self._next_pull or (self._pulling is not None and not self._pulling.done()):
            return
        if self._pulling is not None and self._pulling.exception() is not None and "pull" not in self._failed:
            self._failed.add("pull")
            log.warning("pulling the bucket failed: %s (logged once; watching goes on)", self._pulling.exception())
        self._next_pull = now + PULL_EVERY_S
        self._pulling = asyncio.ensure_future(asyncio.to_thread(self._refresh))

    def _show(self, rows: Iterable[Row], run: str, host: str) -> None:
        """The latest value of each shown series (VIEW_METRICS), for the live view."""
        for row in rows:
            if row.metric in VIEW_METRICS:
                key = (run, host, row.metric, labels_to_str(row.labels))
                old = self.latest.get(key)
                if old is None or row.time >= old[0]:
                    self.latest[key] = (row.time, row.value)

    async def main(self, *, once: bool = False) -> int:
        stop = Stop()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        collectors = await self._open_collectors()
        try:
            started = time.time()
            self.live.follow_from(started)
            self.follower.start(started)
            if once:
                await self._tick(collectors)
            else:
                await run_ticks(Ticker(self.interval), lambda: self._tick(collectors), stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await collectors.close()
            await self.live.close()
            if self._pulling is not None:
                with contextlib.suppress(Exception):  # said already, or the next watch says it
                    await self._pulling
            if self.textfile is not None:
                try:  # watch's file goes (or says llamamon_run_active 0 for its grace): nothing it showed looks live
                    self.textfile.finish()
                except OSError as exc:
                    log.warning("removing the Prometheus textfile failed: %s", exc)
        worst = self.live.worst_firing()
        return 1 if worst == "critical" else 0

    async def _open_collectors(self) -> CollectorSession:
        from llamamon.collectors.session import CollectorSession
        from llamamon.collectors.system import SystemCollector

        wanted: list[MetricsCollector] = [SystemCollector(self.metrics_dir)]
        if self.gpu:
            from llamamon.collectors.gpu import GpuCollector

            wanted.append(GpuCollector())
        session = CollectorSession(wanted, timeout=self.interval, goes_on="watching")
        await session.open()
        return session

    async def _tick(self, collectors: CollectorSession) -> None:
        now = time.time()
        rows = await collectors.rows(now)
        self.live.add(rows, "", self.host)
        self._show(rows, "", self.host)
        try:
            batches = await asyncio.to_thread(self.follower.poll, now)
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not end the watch
            batches = []
            log.warning("reading recorded runs failed: %s", exc)
        for batch in batches:
            self._show(*batch)
        self._pull(now)
        changes = await self.live.tick(now)
        self._forget(now)
        firing = self.live.firing_events(now)
        if self.textfile is not None:
            counts = {sev: sum(e.severity == sev for e in firing) for sev in SEVERITIES}
            if self.textfile.due():  # as often as the file is rewritten: a directory listing, a few reads
                await asyncio.to_thread(self.textfile.prune)
            try:
                self.textfile.write([*rows, *self.live.failure_samples()], alerts_firing=counts)
            except (OSError, ValueError) as exc:  # an unwritable textfile folder must not stop watching
                if "textfile" not in self._failed:
                    self._failed.add("textfile")
                    log.warning("writing the Prometheus textfile failed: %s (logged once; watching goes on)", exc)
        self.on_tick(
            Snapshot(
                time=now,
                interval=self.interval,
                metrics_dir=self.metrics_dir,
                latest={k: v for k, (_t, v) in self.latest.items()},
                firing=firing,
                changes=changes,
                runs=self.follower.running(),
            )
        )

    def _forget(self, now: float) -> None:
        """Drop shown values of runs that ended, and values too old to mean anything."""
        cutoff = now - self.live.window
        ended = set(self.follower.ended)
        for key in [k for k, (t, _v) in self.latest.items() if t < cutoff or k[0] in ended]:
            del self.latest[key]
