"""Composition root of ``llamamon watch``: this host's collectors + the runs being recorded -> live alerts.

Each tick samples the host (system, GPU), reads what the recorded runs appended since the last tick
(their live journal segments, tailed by byte offset; a segment folded away meanwhile is caught up from
the Parquet file it became; a run that ended gets its series marked stale) and steps the rules over the
trailing window (runtime.live_alerts). The store is scanned once at start for that window, never per tick.
Rendering belongs to the CLI: each tick hands it a ``Snapshot``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.errors import ConfigError, RunNotFound
from llamamon.runtime.live_alerts import Entry, LiveAlerts
from llamamon.runtime.ticker import Stop, Ticker, run_ticks
from llamamon.samples import AlertEvent, Row, labels_to_str
from llamamon.severity import SEVERITIES

if TYPE_CHECKING:
    from llamamon.collectors.base import MetricsCollector
    from llamamon.config import Config
    from llamamon.prometheus.textfile import TextfileWriter
    from llamamon.store.journal import ColumnBlock

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
    from llamamon.store import open_store

    config = load_config(options.config_path)
    interval = options.interval if options.interval is not None else config.monitoring.update_frequency
    if not interval > 0:
        raise ConfigError(f"must be more than 0 seconds (got {interval})", path="--interval")
    metrics_dir = open_store(Path(options.metrics_dir or config.monitoring.metrics_path).absolute())
    only = _resolve(metrics_dir, options.runs) if options.runs else None
    watcher = Watcher(config, metrics_dir, float(interval), only=only, gpu=options.gpu, on_tick=on_tick)
    return asyncio.run(watcher.main(once=options.once))


def _resolve(metrics_dir: Path, refs: Iterable[str]) -> set[str]:
    from llamamon.store.runs import list_runs, resolve_run

    runs = list_runs(metrics_dir)
    return {resolve_run(metrics_dir, ref, runs).id for ref in refs}


class RunFollower:
    """Follows the runs recorded into a metrics folder, feeding their new rows into ``live``."""

    def __init__(
        self, metrics_dir: Path, live: LiveAlerts, only: set[str] | None = None, *, skip_pid: int | None = None
    ) -> None:
        self.metrics_dir = metrics_dir
        self.live = live
        self.only = only
        self.skip_pid = skip_pid  # segments this process writes itself (record's own samples)
        self.skipped: set[Path] = set()
        self.offsets: dict[Path, int] = {}
        self.segment_run: dict[Path, tuple[str, str]] = {}
        self.hosts: dict[str, str] = {}  # followed run -> host
        self.ended: dict[str, float] = {}
        self.known_files: set[str] = set()
        self.on_rows: Callable[[Iterable[Row], str, str], None] = live.add
        # Metrics whose every row on_rows needs; of the others a column block gives only its latest row.
        self.metrics: set[str] = set(live.raw_metrics)

    def _wanted(self, run: str) -> bool:
        return self.only is None or run in self.only

    def start(self, now: float) -> None:
        """Load the trailing window from the store, once."""
        from llamamon.store.layout import runs_dir

        self.known_files = set(_names(runs_dir(self.metrics_dir)))
        self._catch_up(None, now - self.live.window)

    def _catch_up(self, run: str | None, since: float) -> None:
        """Rows already folded into Parquet (of one run, or of all followed runs) from ``since`` on."""
        import polars as pl

        from llamamon.store.reader import scan

        runs = [run] if run is not None else (sorted(self.only) if self.only is not None else None)
        frame = (
            scan(self.metrics_dir, runs=runs, since=since)
            .filter(pl.col("metric").is_in(sorted(self.live.raw_metrics)))
            .select(
                pl.col("time").dt.epoch("us"),
                pl.col("run").cast(pl.String),
                pl.col("host").fill_null(""),
                "metric",
                "value",
                pl.col("labels").fill_null(""),
                pl.lit(False).alias("stale"),
            )
            .collect()
        )
        entries: list[Entry] = list(frame.iter_rows())
        self.live.add_entries(entries)
        for _t, run_id, host, *_ in entries:
            self.hosts.setdefault(run_id, host)

    def poll(self, now: float) -> None:
        from llamamon.store.journal import segment_paths, tail_segment
        from llamamon.store.layout import runs_dir

        present = set()
        for path in segment_paths(self.metrics_dir):
            run = path.parent.name
            if not self._wanted(run) or run in self.ended or path in self.skipped:
                continue
            present.add(path)
            header, rows, blocks, offset = tail_segment(path, self.offsets.get(path, 0))
            if header is not None and self.skip_pid is not None and header.get("pid") == self.skip_pid:
                # Why before the offset is kept: a tracked segment that vanishes is caught up from the
                # store, and record's own segments vanish into Parquet every flush.
                self.skipped.add(path)
                continue
            self.offsets[path] = offset
            if header is not None:
                host = str(header.get("host") or "")
                self.segment_run[path] = (str(header.get("run") or run), host)
            run, host = self.segment_run.get(path, (run, ""))
            self.hosts.setdefault(run, host)
            for block in blocks:
                rows.extend(self._rows_of(block))
            if rows:
                self.on_rows(rows, run, host)
        for path in [p for p in self.offsets if p not in present]:
            # Folded into Parquet since the last tick: its last rows may never have been tailed.
            del self.offsets[path]
            run, _host = self.segment_run.pop(path, (path.parent.name, ""))
            if run not in self.ended:
                self._catch_up(run, self.live.last_time(run) or now - self.live.window)
        folder = runs_dir(self.metrics_dir)
        for name in _names(folder):
            if name in self.known_files:
                continue
            self.known_files.add(name)
            run = name.removesuffix(".json")
            if self._wanted(run) and run not in self.hosts:
                # Started (and maybe already ended) between two ticks, before we saw a journal of it.
                self._catch_up(run, now - self.live.window)
        self._check_ends(now)

    def _rows_of(self, block: ColumnBlock) -> list[Row]:
        """The rows of the metrics wanted, and the block's latest row: a job logging many metrics at a high
        rate is never decoded whole, and the window still learns how far the run has got."""
        rows = block.rows_of(self.metrics)
        if block.times:
            latest = block.times.index(max(block.times))
            if block.series[block.codes[latest]][1] not in self.metrics:
                rows.append(block.row(latest))
        return rows

    def _check_ends(self, now: float) -> None:
        from llamamon.store.runs import read_run

        for run in [r for r in self.hosts if r not in self.ended]:
            try:
                info = read_run(self.metrics_dir, run)
            except (RunNotFound, OSError, ValueError):
                continue  # rows logged without `record` (llamamon.log): the lookback ends them
            if info.end is None:
                continue
            # Everything the run wrote is on disk by the time its end is: take what we have not seen.
            self._catch_up(run, self.live.last_time(run) or now - self.live.window)
            self.ended[run] = self.live.end_run(run, info.end)
        cutoff = now - self.live.window
        for run in [r for r, t in self.ended.items() if t < cutoff]:
            del self.ended[run]
            self.hosts.pop(run, None)

    def running(self) -> list[str]:
        return sorted(r for r in self.hosts if r not in self.ended)


def _names(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return []


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
    ) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        self.interval = interval
        self.gpu = gpu
        self.on_tick = on_tick
        self.host = socket.gethostname()
        self.live = LiveAlerts(config, metrics_dir, scope="watch")
        self.follower = RunFollower(metrics_dir, self.live, only)
        self.follower.on_rows = self._observe
        self.follower.metrics.update(VIEW_METRICS)
        self.latest: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        self._failed: set[str] = set()
        self.textfile: TextfileWriter | None = None
        if config.monitoring.export_format == "prometheus":
            from llamamon.prometheus.textfile import TextfileWriter, textfile_folder

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

    def _observe(self, rows: Iterable[Row], run: str, host: str) -> None:
        rows = list(rows)
        self.live.add(rows, run, host)
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
            self.follower.start(time.time())
            if once:
                await self._tick(collectors)
            else:
                await run_ticks(Ticker(self.interval), lambda: self._tick(collectors), stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for collector in collectors:
                with contextlib.suppress(Exception):
                    await collector.close()
            await self.live.close()
            if self.textfile is not None:
                try:  # watch's file goes (or says llamamon_run_active 0 for its grace): nothing it showed looks live
                    self.textfile.finish()
                except OSError as exc:
                    log.warning("removing the Prometheus textfile failed: %s", exc)
        worst = self.live.worst_firing()
        return 1 if worst == "critical" else 0

    async def _open_collectors(self) -> list[MetricsCollector]:
        from llamamon.collectors.system import SystemCollector

        wanted: list[MetricsCollector] = [SystemCollector(self.metrics_dir)]
        if self.gpu:
            from llamamon.collectors.gpu import GpuCollector

            wanted.append(GpuCollector())
        opened = []
        for collector in wanted:
            try:
                await collector.open()
            except Exception as exc:  # noqa: BLE001 - a collector that cannot start is reported, not fatal
                log.warning("collector %s not started: %s", collector.name, exc)
                continue
            if collector.available:
                opened.append(collector)
            elif collector.name == "gpu":
                log.info("GPU metrics off: %s", collector.reason)
            else:
                log.warning("collector %s off: %s", collector.name, collector.reason)
        return opened

    async def _tick(self, collectors: list[MetricsCollector]) -> None:
        from llamamon import catalog
        from llamamon.collectors.base import normalize

        now = time.time()
        rows: list[Row] = []
        for collector in collectors:
            try:
                samples = normalize(await collector.collect(), collector.name)
            except Exception as exc:  # noqa: BLE001 - one collector's bad tick must not stop watching
                if collector.name not in self._failed:
                    self._failed.add(collector.name)
                    log.warning("collector %s failed: %s (logged once; watching goes on)", collector.name, exc)
                continue
            for s in samples:
                group = catalog.group_of(s.metric)
                rows.append(Row(s.time if s.time is not None else now, group, s.metric, s.value, s.labels, s.step))
        self._observe(rows, "", self.host)
        try:
            await asyncio.to_thread(self.follower.poll, now)
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not end the watch
            log.warning("reading recorded runs failed: %s", exc)
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
