"""Composition root of ``llamamon record``: child + ticker + collectors -> store, with run metadata.

Threads: the main thread runs the child (its I/O pass-through and signal forwarding, see child.py) so the
job's output never waits for a sample; a sampler thread runs an asyncio loop with the collectors on the
ticker and appends rows to the store writer (which journals them at once and writes Parquet on the
sampler thread, so a flush never stalls the job's output either). The metric lines
parsed from the job's output are journaled by the same loop on their own schedule (job_output.py), so a
``kill -9`` of ``record`` loses well under an interval of them however long the collectors take. How the
journal becomes Parquet, and when, is the ``ParquetRoute``'s decision (parquet_route.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.errors import ConfigError
from llamamon.host import this_host
from llamamon.runtime.child import Child
from llamamon.runtime.live_run import LiveRun
from llamamon.runtime.ticker import LoopThread, Stop, Ticker, TickStamps, run_ticks

if TYPE_CHECKING:
    from llamamon.collectors.base import MetricsCollector
    from llamamon.collectors.session import CollectorSession
    from llamamon.config import Config
    from llamamon.runtime.job_output import JobOutput
    from llamamon.runtime.parquet_route import ParquetRoute
    from llamamon.samples import Row
    from llamamon.store.location import Location
    from llamamon.store.writer import StoreWriter

log = logging.getLogger("llamamon.record")


@dataclass
class RecordOptions:
    command: list[str]
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    interval: float | None = None
    config_path: str | None = None
    metrics_dir: str | None = None
    gpu: bool = True
    alerts: bool = True
    parse: bool = True  # recognise metric lines in the job's stdout/stderr
    scrape: list[str] = field(default_factory=list)  # Prometheus endpoints, besides monitoring.yaml's scrape:
    group: str | None = None  # --group; else the launcher's environment says (llamamon.launcher)


def record(options: RecordOptions) -> int:
    """Run the command while recording it; returns the exit code llamamon should exit with."""
    from llamamon.config import load_config
    from llamamon.runtime.parquet_route import ParquetRoute

    config = load_config(options.config_path)
    if not config.monitoring.enabled:
        log.info("monitoring.enabled is false in %s: running the command without recording", config.source)
        with Child(options.command) as child:
            return child.wait().exit_code
    interval = options.interval if options.interval is not None else config.monitoring.update_frequency
    if not interval > 0:
        raise ConfigError(f"must be more than 0 seconds (got {interval})", path="--interval")
    from llamamon.store.location import open_location, resolved

    # A bucket is not asked anything before the job starts: a problem with it is a warning, later.
    location = open_location(resolved(options.metrics_dir or config.monitoring.metrics_path), sync=False)
    return Recorder(options, config, location, float(interval), ParquetRoute()).run()


class Recorder:
    def __init__(
        self, options: RecordOptions, config: Config, location: Location, interval: float, route: ParquetRoute
    ) -> None:
        from llamamon.collectors.custom import load_collectors
        from llamamon.collectors.system import SystemCollector
        from llamamon.launcher import launch_from
        from llamamon.runtime.run_info import new_run_info
        from llamamon.runtime.shipper import Shipper

        self.options = options
        self.config = config
        self.interval = interval
        self._stamps = TickStamps(interval)  # tick times on the grid, within 2 ms (ticker.py)
        self.metrics_dir = location.root  # a bucket's local mirror: the journal and Parquet files are written here
        self._system = SystemCollector(self.metrics_dir)
        self._system.prime()  # its first window runs while the rest starts up: no wait at the first sample
        self.host = this_host()
        launch = launch_from(os.environ, options.command, options.group)
        self.info = new_run_info(
            options.command, options.name, options.tags, config, interval, self.host, time.time(), launch
        )
        # Mistakes in these are ConfigErrors before the job starts.
        self.user_collectors = load_collectors(config)
        self.scrapers: list[MetricsCollector] = []
        if config.scrape or options.scrape:
            from llamamon.collectors.scrape import scrapers_for

            self.scrapers.extend(scrapers_for(config, options.scrape, interval))
        self.output: JobOutput | None = None
        if options.parse:
            from llamamon.runtime.job_output import JobOutput

            self.output = JobOutput(config, interval)
        self.samples = 0
        self._store_failed = False
        self.live = LiveRun(config, self.metrics_dir, self.info.id, self.host, alerts=options.alerts)
        self._job_ended: float | None = None  # set before the sampler is told to stop
        self._route = route
        self._shipper = Shipper(location, self.info.id)

    # -- main thread ------------------------------------------------------------------------------

    def run(self) -> int:
        from llamamon.runtime.run_log import line_endings_for, say_ended, say_started
        from llamamon.store.runs import write_run

        info = self.info
        say_started(info, self.metrics_dir, self.interval)
        env = dict(os.environ, LLAMAMON_RUN_ID=info.id, LLAMAMON_METRICS_DIR=str(self.metrics_dir))
        if self.config.source is not None:  # llamamon.log() in the job uses the same aliases
            env["LLAMAMON_CONFIG"] = str(Path(self.config.source).absolute())
        if info.run_group is not None:  # what the job starts outside this run (its own llamamon.init) joins the job
            env["LLAMAMON_GROUP"] = info.run_group
        output = self.output
        if output is not None:
            env.update(output.claim_env())
        born = time.monotonic()
        try:
            on_output = output.on_output if output is not None else None
            child = Child(self.options.command, env=env, on_output=on_output)
            with child, line_endings_for(child.raw_terminal):
                info.pid = child.pid
                try:
                    write_run(self.metrics_dir, info)  # listed by `llamamon runs` from the start
                except OSError as exc:
                    log.warning("cannot write run metadata: %s", exc)  # the job is running: keep recording
                self._shipper.start()
                sampler = LoopThread(lambda stop: self._sample(stop, child.pid, born), name="llamamon-sampler")
                sampler.start()
                try:
                    result = child.wait()
                    self._job_ended = time.time()
                    if output is not None:
                        output.end()
                finally:
                    sampler.stop()
                self._shipper.pause()  # the run's end may compact the files it would be shipping
                self._route.finish(self.metrics_dir, info.id)
                info.end, info.exit_code, info.signal = self._job_ended, result.exit_code, result.signal
                info.samples = self.samples
                try:
                    write_run(self.metrics_dir, info)
                except OSError as exc:
                    log.error("cannot write run metadata: %s", exc)  # the exit code stays the job's
                self._shipper.finish()
        finally:
            if output is not None:
                output.close()
        if sampler.error is not None:
            log.error("recording failed: %s (the job ran to completion)", sampler.error)
            log.debug("sampler thread failed", exc_info=sampler.error)
        say_ended(info, self.metrics_dir)
        return result.exit_code

    # -- sampler thread ---------------------------------------------------------------------------

    async def _sample(self, stop: Stop, pid: int, born: float) -> None:
        from llamamon.runtime.run_info import complete_run_info

        writer = self._route.open_writer(self.metrics_dir, self.info.id, self.host)
        append = self._appender(writer)
        self.live.open()
        # In a thread beside the collectors and the first samples (run_info.py says why).
        describe = asyncio.ensure_future(asyncio.to_thread(complete_run_info, self.info, self.metrics_dir))
        collectors: CollectorSession | None = None
        # Started before the collectors open (NVML's start-up can take a second): the job prints meanwhile.
        output = asyncio.ensure_future(self.output.journal(append)) if self.output is not None else None
        try:
            collectors = await self._open_collectors(pid, born)
            ticker = Ticker(self.interval)

            async def tick_then_fold() -> None:
                await self._tick(collectors, append)
                self._route.after_tick(self.metrics_dir)

            await run_ticks(ticker, tick_then_fold, stop)
            await self._tick(collectors, append)  # the last sample, at exit
            # What failed to go out after the last tick (an alert of the run's end) is counted too.
            append(await self.live.finish(self._job_ended))
            if ticker.skipped:
                log.debug("%d ticks skipped because sampling overran the interval", ticker.skipped)
        finally:
            if output is not None:
                output.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await output
            await describe  # never raises: complete_run_info reports its own failure
            if collectors is not None:
                await collectors.close()
            await self._route.close_writer(writer)
            self.live.close()

    async def _open_collectors(self, pid: int, born: float) -> CollectorSession:
        from llamamon.collectors.process import ProcessTreeCollector
        from llamamon.collectors.session import CollectorSession

        process = ProcessTreeCollector(pid, born=born)
        wanted: list[MetricsCollector] = [self._system, process]
        if self.options.gpu:
            from llamamon.collectors.gpu import GpuCollector

            wanted.append(GpuCollector(pids=process.pids))
        else:
            self.info.gpu = {"available": False, "reason": "disabled with --no-gpu"}
        wanted.extend(self.scrapers)
        # User collectors wait at most one interval each, on loops of their own (collectors/custom.py).
        session = CollectorSession(wanted, timeout=self.interval, user=self.user_collectors)
        await session.open()
        for key, value in session.run_metadata().items():
            setattr(self.info, key, value)
        return session

    async def _tick(self, collectors: CollectorSession, append: Callable[[list[Row]], bool]) -> None:
        now = self._stamps(time.time())
        if self.output is not None:
            self.output.store(append, now)  # before the collectors, which may take most of an interval
        rows = await collectors.rows(now)
        output = self.output.take() if self.output is not None else []  # journaled during this interval
        rows.extend(self.live.on_tick(output, rows, now))
        if append(rows):
            self.samples += 1

    def _appender(self, writer: StoreWriter) -> Callable[[list[Row]], bool]:
        """``writer.append`` that says a failure once (a full disk must not kill the job) and returns success."""

        def append(rows: list[Row]) -> bool:
            try:
                writer.append(rows)
            except Exception as exc:  # noqa: BLE001 - isolation: the job goes on without its recording
                if not self._store_failed:
                    self._store_failed = True
                    log.error("writing samples failed: %s (logged once; the job goes on)", exc)
                return False
            return True

        return append
