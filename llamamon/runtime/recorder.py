"""Composition root of ``llamamon record``: child + ticker + collectors -> store, with run metadata.

Threads: the main thread runs the child (its I/O pass-through and signal forwarding, see child.py) so the
job's output never waits for a sample; a sampler thread runs an asyncio loop with the collectors on the
ticker and appends rows to the store writer (which journals them at once and writes Parquet every 30 s,
on the sampler thread, so pyarrow's import and conversion never stall the job's output either). The metric
lines parsed from the job's output are journaled by the same loop a few times per interval, on their own
schedule, so a ``kill -9`` of ``record`` loses well under an interval of them however long the collectors
take. Which process turns the journal into Parquet, and when, is the ``ParquetRoute``'s decision
(fold_helper.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import getpass
import logging
import os
import platform
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon import __version__
from llamamon.errors import ConfigError
from llamamon.masking import mask_command
from llamamon.runtime.child import Child, ChildResult
from llamamon.runtime.output_claim import ENV as OUTPUT_CLAIM_ENV
from llamamon.runtime.output_claim import OutputClaim
from llamamon.runtime.ticker import Stop, Ticker, TickStamps, run_ticks
from llamamon.samples import Row, RowMaker, RunInfo, Sample
from llamamon.units import format_duration

if TYPE_CHECKING:
    from llamamon.collectors.base import MetricsCollector
    from llamamon.collectors.session import CollectorSession
    from llamamon.collectors.stdout import OutputParser
    from llamamon.config import Config
    from llamamon.prometheus.textfile import TextfileWriter
    from llamamon.runtime.fold_helper import FoldHelper, ParquetRoute
    from llamamon.runtime.run_alerts import RunAlerts
    from llamamon.store.follower import RunFollower
    from llamamon.store.writer import StoreWriter

log = logging.getLogger("llamamon.record")

GIT_TIMEOUT_S = 2.0
FLUSH_INTERVAL_S = 30.0
# The job's parsed metric lines are journaled this many times per interval, and at least every second: a
# kill -9 loses only what was parsed since. Why not at the tick alone: its collectors (NVML, a scrape up to
# its timeout) may take most of an interval, and rows waiting for them in memory are what a kill loses.
OUTPUT_JOURNALS_PER_INTERVAL = 4
OUTPUT_JOURNAL_MAX_S = 1.0


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


def record(options: RecordOptions, folder: FoldHelper | None = None) -> int:
    """Run the command while recording it; returns the exit code llamamon should exit with.

    ``folder``: a fold helper started for this run (fold_helper.py), which this ends in every case.
    """
    from llamamon.runtime.fold_helper import ParquetRoute

    route = ParquetRoute(folder)
    try:
        from llamamon.config import load_config

        config = load_config(options.config_path)
        if not config.monitoring.enabled:
            log.info("monitoring.enabled is false in %s: running the command without recording", config.source)
            route.stop()  # now, not after a job that may run for days
            with Child(options.command) as child:
                return child.wait().exit_code
        interval = options.interval if options.interval is not None else config.monitoring.update_frequency
        if not interval > 0:
            raise ConfigError(f"must be more than 0 seconds (got {interval})", path="--interval")
        metrics_dir = Path(options.metrics_dir or config.monitoring.metrics_path).absolute()
        return Recorder(options, config, metrics_dir, float(interval), route).run()
    finally:
        route.stop()  # done with it already, or the run ended early


class Recorder:
    def __init__(
        self,
        options: RecordOptions,
        config: Config,
        metrics_dir: Path,
        interval: float,
        route: ParquetRoute,
    ) -> None:
        from llamamon.store import open_store
        from llamamon.store.layout import sanitize_run_name
        from llamamon.store.runs import new_run_id

        self.options = options
        self.config = config
        self.interval = interval
        self._stamps = TickStamps(interval)  # tick times on the grid, within 2 ms (ticker.py)
        self.metrics_dir = open_store(metrics_dir)
        from llamamon.collectors.system import SystemCollector

        self._system = SystemCollector(self.metrics_dir)
        self._system.prime()  # its first window runs while the rest starts up: no wait at the first sample
        self.host = socket.gethostname()
        start = time.time()
        self.info = RunInfo(
            id=new_run_id(self.host, start),
            host=self.host,
            start=start,
            name=sanitize_run_name(options.name) if options.name else None,
            tags=dict(options.tags),
            command=mask_command(options.command, config.monitoring.secret_options),
            cwd=os.getcwd(),
            user=_user(),
            python_version=platform.python_version(),
            llamamon_version=__version__,
            config_file=str(config.source) if config.source else None,
            interval=interval,
            source="record",
        )
        from llamamon.collectors.custom import load_collectors

        self.user_collectors = load_collectors(config)  # a mistake is a ConfigError before the job starts
        self.scrapers = _scrapers(config, options.scrape, interval)
        self.parsers = _output_parsers(config) if options.parse else {}
        self.parsed: collections.deque[Sample] = collections.deque()
        self._journaled_output: list[Row] = []  # parsed rows journaled since the last tick, for its alerts and .prom
        self._output_wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # see _journal_output
        self._output_signalled = False
        self.claim: OutputClaim | None = None  # where the job may say that it logs what it prints
        self.samples = 0
        self._failed: set[str] = set()
        self._output_rows = RowMaker("custom")  # the job's metric lines as rows
        self._stop_lock = threading.Lock()
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Stop | None = None
        self._sampler_error: BaseException | None = None
        self.alerts: RunAlerts | None = None
        # What the job logs itself (step, loss ...) is read once, for its live alerts and its .prom file both.
        textfile = config.monitoring.export_format == "prometheus"
        self._job: RunFollower | None = None
        if options.alerts:
            from llamamon.runtime.live_alerts import LiveAlerts
            from llamamon.runtime.run_alerts import RunAlerts
            from llamamon.store.follower import RunFollower

            # Built before the job starts: a bad rule or channel is a config error (exit 2), not a surprise later.
            live = LiveAlerts(config, self.metrics_dir)
            self._job = RunFollower.own_run(self.metrics_dir, self.info.id, live, latest=textfile)
            self.alerts = RunAlerts(config, live, self._job, self.info.id, self.host)
        elif textfile:
            from llamamon.store.follower import RunFollower

            self._job = RunFollower.own_run(self.metrics_dir, self.info.id, None, latest=True)
        self._textfile: TextfileWriter | None = None
        self._job_ended: float | None = None  # set before the sampler is told to stop
        self._route = route

    # -- main thread ------------------------------------------------------------------------------

    def run(self) -> int:
        from llamamon.store.runs import write_run

        info = self.info
        log.info("run %s recording to %s (interval %ss)", info.id, _shown(self.metrics_dir), _number(self.interval))
        env = dict(os.environ, LLAMAMON_RUN_ID=info.id, LLAMAMON_METRICS_DIR=str(self.metrics_dir))
        if self.config.source is not None:  # llamamon.log() in the job uses the same aliases
            env["LLAMAMON_CONFIG"] = str(Path(self.config.source).absolute())
        if self.parsers:
            self.claim = OutputClaim()
            env[OUTPUT_CLAIM_ENV] = str(self.claim.path)
        on_output = self._on_output if self.parsers else None
        born = time.monotonic()
        try:
            with Child(self.options.command, env=env, on_output=on_output) as child, _line_endings_for(child):
                info.pid = child.pid
                try:
                    write_run(self.metrics_dir, info)  # listed by `llamamon runs` from the start
                except OSError as exc:
                    log.warning("cannot write run metadata: %s", exc)  # the job is running: keep recording
                sampler = threading.Thread(target=self._sampler_main, args=(child.pid, born), name="llamamon-sampler")
                sampler.start()
                try:
                    result = child.wait()
                    ended = self._job_ended = time.time()
                    self._close_parsers()
                finally:
                    self._request_stop()
                    sampler.join()
                self._route.finish(self.metrics_dir, self.info.id)
                self._finish(result, ended)
                try:
                    write_run(self.metrics_dir, info)
                except OSError as exc:
                    log.error("cannot write run metadata: %s", exc)  # the exit code stays the job's
        finally:
            if self.claim is not None:
                self.claim.close()
        if self._sampler_error is not None:
            log.error("recording failed: %s (the job ran to completion)", self._sampler_error)
        ended = f"exit {result.exit_code}"
        if result.signal is not None:
            ended += f" ({_signal_name(result.signal)})"
        log.info(
            "run %s done in %s, %d samples, %s -> %s",
            info.id,
            format_duration(info.duration or 0.0),
            self.samples,
            ended,
            _shown(self.metrics_dir),
        )
        return result.exit_code

    def _on_output(self, stream: int, data: bytes) -> None:
        """Called with each chunk of the job's output before it is passed on (the bytes are not changed)."""
        parser = self.parsers.get(stream)
        if parser is not None and (self.claim is None or self.claim.since is None):
            self._parsed(self._unclaimed(parser.feed(data)))

    def _close_parsers(self) -> None:
        for parser in self.parsers.values():
            self._parsed(self._unclaimed(parser.close()))
        steps = next(iter(self.parsers.values())).steps if self.parsers else None
        if steps is not None:
            self._parsed(self._unclaimed(steps.release()))

    def _parsed(self, samples: list[Sample]) -> None:
        """Queue parsed samples for the journal and wake its task, once until it has taken them."""
        if not samples:
            return
        self.parsed.extend(samples)
        wake = self._output_wake
        if wake is not None and not self._output_signalled:
            self._output_signalled = True
            with contextlib.suppress(RuntimeError):  # the sampler's loop has closed: its last tick took the rest
                wake[0].call_soon_threadsafe(wake[1].set)

    def _unclaimed(self, samples: list[Sample]) -> list[Sample]:
        return samples if self.claim is None else self.claim.keep(samples)

    def _finish(self, result: ChildResult, ended: float) -> None:
        self.info.end = ended
        self.info.exit_code = result.exit_code
        self.info.signal = result.signal
        self.info.samples = self.samples

    def _request_stop(self) -> None:
        with self._stop_lock:
            self._stop_requested = True
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)

    # -- sampler thread ---------------------------------------------------------------------------

    def _sampler_main(self, pid: int, born: float) -> None:
        try:
            asyncio.run(self._sample(pid, born))
        except BaseException as exc:  # recording may fail; the job and its exit code must not
            self._sampler_error = exc
            log.debug("sampler thread failed", exc_info=True)

    async def _sample(self, pid: int, born: float) -> None:
        from llamamon.store.writer import StoreWriter

        stop = Stop()
        with self._stop_lock:
            self._loop = asyncio.get_running_loop()
            self._stop = stop
            if self._stop_requested:
                stop.set()
        writer = StoreWriter(self.metrics_dir, self.info.id, self.host, flush_interval=FLUSH_INTERVAL_S)
        self._textfile = self._open_textfile()
        # In a thread beside the collectors and the first samples: git on a big repository may take a
        # moment, and most of it is waiting on git, which leaves the GIL to the sampler.
        describe = asyncio.ensure_future(asyncio.to_thread(self._describe))
        collectors: CollectorSession | None = None
        fold: asyncio.Future[None] | None = None
        # Started before the collectors open (NVML's start-up can take a second): the job prints meanwhile.
        output = asyncio.ensure_future(self._journal_output(writer)) if self.parsers else None
        try:
            collectors = await self._open_collectors(pid, born)
            ticker = Ticker(self.interval)

            async def tick() -> None:
                await self._tick(collectors, writer)

            next_fold = time.monotonic() + FLUSH_INTERVAL_S

            async def tick_then_fold() -> None:
                nonlocal fold, next_fold
                await tick()
                now = time.monotonic()
                self._route.writes_here()  # ends the fold helper once this process has loaded pyarrow
                if now >= next_fold and (fold is None or fold.done()):
                    # Segments the job's llamamon.log() has finished (it rotates them) go into Parquet while
                    # it runs, beside the ticks: a long run's journal stays small and its exit quick.
                    next_fold = now + FLUSH_INTERVAL_S
                    fold = asyncio.ensure_future(asyncio.to_thread(self._route.fold_journals, self.metrics_dir))

            await run_ticks(ticker, tick_then_fold, stop)
            await tick()  # the last sample, at exit
            if self.alerts is not None:
                try:
                    # The job's end, as the run's metadata says, not this later moment: the rules judge
                    # the run as `alerts test` does, up to its end.
                    await self.alerts.finish(self._job_ended if self._job_ended is not None else time.time())
                    # What failed to go out after the last tick (an alert of the run's end) is counted too.
                    writer.append(self.alerts.failure_rows(time.time()))
                except Exception as exc:  # noqa: BLE001 - the recording itself is complete
                    log.error("final alert evaluation failed: %s", exc)
            if ticker.skipped:
                log.debug("%d ticks skipped because sampling overran the interval", ticker.skipped)
        finally:
            if output is not None:
                output.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await output
            await describe  # never raises: _describe reports its own failure
            if fold is not None:
                await fold  # never raises: fold_journals reports its own failure
            if collectors is not None:
                await collectors.close()
            writer.close(write_parquet=self._route.writes_here())
            if self._textfile is not None:
                # The run's file goes (or says llamamon_run_active 0 for its grace), its alerts with it.
                self._export(self._textfile.finish)

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

    async def _tick(self, collectors: CollectorSession, writer: StoreWriter) -> None:
        now = self._stamps(time.time())
        self._store_output(writer, now)  # before the collectors, which may take most of an interval
        rows = await collectors.rows(now)
        output, self._journaled_output = self._journaled_output, []
        if self.alerts is not None:
            # Evaluates beside the sampler, never inside its tick.
            rows.extend(self.alerts.on_tick([*output, *rows], now))
        if self._textfile is not None:
            # The job's rows are only taken when the file is rewritten: every series' latest since the last.
            due = self._textfile.due()
            job_rows = self._job.take_latest() if self._job is not None and due else []
            self._export(lambda: self._textfile.write([*output, *rows, *job_rows]))
        if self._append(writer, rows):
            self.samples += 1

    async def _journal_output(self, writer: StoreWriter) -> None:
        """Journal the job's parsed metric lines on their own schedule, until cancelled (see
        OUTPUT_JOURNALS_PER_INTERVAL); the GPU and scrape collectors wait in threads, so this runs meanwhile.
        Woken by ``_parsed`` when lines wait, at most once a period: a job printing no metric lines costs the
        sampler's loop no wake-ups."""
        period = min(self.interval / OUTPUT_JOURNALS_PER_INTERVAL, OUTPUT_JOURNAL_MAX_S)
        waiting = asyncio.Event()
        self._output_wake = (asyncio.get_running_loop(), waiting)
        while True:
            waiting.clear()
            self._output_signalled = False  # after the clear: a line queued from here on wakes the next round
            self._store_output(writer, time.time())
            await asyncio.sleep(period)
            await waiting.wait()

    def _store_output(self, writer: StoreWriter, now: float) -> None:
        """Journal the metric lines parsed since the last call. They are kept for the next tick too: its alerts
        and .prom file see every row of the interval."""
        if not self.parsed:
            return
        samples = [self.parsed.popleft() for _ in range(len(self.parsed))]
        rows = self._output_rows(samples, now)
        self._journaled_output.extend(rows)
        self._append(writer, rows)

    def _append(self, writer: StoreWriter, rows: list[Row]) -> bool:
        try:
            writer.append(rows)
        except Exception as exc:  # noqa: BLE001 - a full disk must not kill the job; say so once
            if "store" not in self._failed:
                self._failed.add("store")
                log.error("writing samples failed: %s (logged once; the job goes on)", exc)
            return False
        return True

    def _open_textfile(self) -> TextfileWriter | None:
        """The .prom file for node_exporter's textfile collector, unless monitoring.export_format is none."""
        monitoring = self.config.monitoring
        if monitoring.export_format != "prometheus":
            return None
        from llamamon.prometheus.textfile import TextfileWriter
        from llamamon.store.layout import textfile_folder

        folder = textfile_folder(self.metrics_dir, monitoring.textfile_dir)
        writer = TextfileWriter(
            folder, self.host, self.info.id, refresh=monitoring.textfile_refresh, grace=monitoring.textfile_grace
        )
        self._export(writer.prune)  # what ended runs and killed recorders left
        return writer

    def _export(self, write: Callable[[], object]) -> None:
        try:
            write()
        except (OSError, ValueError) as exc:  # an unwritable textfile folder must not stop the recording
            if "textfile" not in self._failed:
                self._failed.add("textfile")
                log.warning("writing the Prometheus textfile failed: %s (logged once; recording goes on)", exc)

    def _describe(self) -> None:
        """Complete the run metadata with what takes a moment to find out, and write it."""
        from llamamon.collectors.system import cpu_model
        from llamamon.store.runs import write_run

        try:
            self.info.cpu_model = cpu_model()
            self.info.git_commit, self.info.git_dirty = _git_state(self.info.cwd)
            write_run(self.metrics_dir, self.info)
        except Exception as exc:  # noqa: BLE001 - metadata that cannot be found must not stop the recording
            log.warning("cannot complete the run metadata: %s", exc)


def _scrapers(config: Config, urls: Sequence[str], interval: float) -> list[MetricsCollector]:
    """One collector per Prometheus endpoint (monitoring.yaml's scrape: and --scrape), each URL checked now."""
    if not config.scrape and not urls:
        return []
    from llamamon.collectors.scrape import ScrapeCollector
    from llamamon.config.schema import ScrapeTarget

    entries = [(target, f"scrape[{i}]", True) for i, target in enumerate(config.scrape)]
    entries += [(ScrapeTarget(url), "--scrape", False) for url in urls]
    found: dict[str, MetricsCollector] = {}
    for target, path, in_config in entries:
        if target.url in found:
            continue
        try:
            found[target.url] = ScrapeCollector.from_target(target, default_timeout=min(interval, 10.0))
        except ValueError as exc:
            raise (config.error(path, str(exc)) if in_config else ConfigError(str(exc), path=path)) from None
    return list(found.values())


def _output_parsers(config: Config) -> dict[int, OutputParser]:
    """One line parser per stream (stdout 1, stderr 2), with monitoring.yaml's parsers and aliases."""
    from llamamon.collectors.stdout import OutputParser
    from llamamon.collectors.trainer_steps import TrainerSteps

    patterns = [parser.pattern for parser in config.parsers]
    steps = TrainerSteps()  # the Trainer's dicts (stdout) get their step from its progress bar (stderr)
    return {stream: OutputParser(patterns, config.aliases, steps=steps) for stream in (1, 2)}


@contextlib.contextmanager
def _line_endings_for(child: Child) -> Iterator[None]:
    """While the terminal is raw, end our own stderr lines with "\r\n" so they do not staircase."""
    handlers = [
        h
        for h in logging.getLogger("llamamon").handlers
        if isinstance(h, logging.StreamHandler) and h.terminator == "\n"
    ]
    if child.raw_terminal:
        for handler in handlers:
            handler.terminator = "\r\n"
    try:
        yield
    finally:
        for handler in handlers:
            handler.terminator = "\n"


def _git_state(cwd: str) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding cwd, or (None, None) outside one or without git."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (None if status is None else bool(status.strip()))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _shown(path: Path) -> str:
    """The metrics folder as the user would write it: relative below the cwd, absolute elsewhere."""
    with contextlib.suppress(ValueError):
        return os.path.join(str(path.relative_to(Path.cwd())), "")
    return str(path)


def _number(value: float) -> str:
    return f"{value:g}"


def _signal_name(number: int) -> str:
    import signal

    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"killed by signal {number}"


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    """``["team=nlp", "gpu=a100"]`` -> dict; a pair without ``=`` or with an empty key is a ConfigError."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE (got {pair!r})", path="--tag")
        tags[key.strip()] = value
    return tags
