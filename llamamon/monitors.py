"""TrainingMonitor and InferenceMonitor: metrics recorded from inside a Python job.

Both write through ``llamamon.api`` (the same run and journal as ``llamamon.log``). TrainingMonitor adds
host, process and GPU samples for the duration of an ``async with`` block and keeps a small summary of
what was logged. InferenceMonitor measures requests (latency, tokens, cache hits, errors, timeouts),
stores every request's latency (so any percentile can be computed later) and, once per update interval,
the derived rates. Neither imports polars, pyarrow or matplotlib; psutil and pynvml are imported only
when a TrainingMonitor starts.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from llamamon import api
from llamamon.catalog import canonical
from llamamon.samples import Row, Sample
from llamamon.units import parse_duration

if TYPE_CHECKING:
    from llamamon.collectors.base import MetricsCollector
    from llamamon.config import Config

__all__ = ["InferenceMonitor", "Request", "TrainingMonitor"]

logger = logging.getLogger("llamamon.monitors")

F = TypeVar("F", bound=Callable[..., Any])


def _config(config: Any) -> Config:
    from llamamon.config import Config, load_config

    return config if isinstance(config, Config) else load_config(config)


def _rows(samples: list[Sample], group: str, now: float) -> list[Row]:
    return [Row(s.time if s.time is not None else now, group, s.metric, s.value, s.labels, s.step) for s in samples]


# -- training -----------------------------------------------------------------------------------------


class _Best:
    __slots__ = ("best", "best_step", "latest", "latest_step")

    def __init__(self) -> None:
        self.latest: float | None = None
        self.latest_step: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    def update(self, value: float, step: int | None) -> None:
        self.latest, self.latest_step = value, step
        if not math.isnan(value) and (self.best is None or value < self.best):
            self.best, self.best_step = value, step

    def summary(self) -> dict[str, Any]:
        return {"latest": self.latest, "best": self.best, "best_step": self.best_step, "step": self.latest_step}


class TrainingMonitor:
    """``async with TrainingMonitor() as monitor:`` records system and GPU metrics while the block runs.

    ``monitor.log(...)`` is ``llamamon.log`` plus a running summary for ``get_training_metrics()``.
    """

    def __init__(self, config: Config | str | os.PathLike[str] | None = None, interval: float | None = None) -> None:
        self.config = _config(config)
        self.interval = float(interval) if interval is not None else self.config.update_frequency
        self._aliases = dict(self.config.aliases) or None
        self._lock = threading.Lock()
        self._loss = _Best()
        self._val = _Best()
        self._lr: float | None = None
        self._steps: deque[tuple[float, int]] = deque(maxlen=64)  # (monotonic time, step) for steps/s
        self._collectors: list[tuple[str, MetricsCollector]] = []
        self._task: asyncio.Task[None] | None = None
        self._reported: set[str] = set()

    def log(self, metrics: Mapping[str, Any] | None = None, /, step: int | None = None, **values: Any) -> None:
        """Same as :func:`llamamon.log`; also feeds the summary (latest/best loss, learning rate, steps/s)."""
        api.log(metrics, step=step, **values)
        data = dict(metrics or {})
        data.update(values)
        if step is None:
            step = data.get("step")
        step_int = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None
        with self._lock:
            if step_int is not None and (not self._steps or self._steps[-1][1] != step_int):
                self._steps.append((time.monotonic(), step_int))
            for key, raw in data.items():
                name = canonical(str(key), self._aliases)
                if name not in ("loss", "validation_loss", "learning_rate"):
                    continue
                try:
                    value = float(raw)
                except (TypeError, ValueError):
                    continue
                if name == "loss":
                    self._loss.update(value, step_int)
                elif name == "validation_loss":
                    self._val.update(value, step_int)
                else:
                    self._lr = value

    def steps_per_second(self) -> float | None:
        """Over the last 64 distinct logged steps."""
        with self._lock:
            if len(self._steps) < 2:
                return None
            (t0, s0), (t1, s1) = self._steps[0], self._steps[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    async def get_training_metrics(self) -> dict[str, Any]:
        """Latest, best and step of best for loss and validation loss; learning rate; steps per second."""
        with self._lock:
            summary = {
                "loss": self._loss.summary(),
                "validation_loss": self._val.summary(),
                "learning_rate": self._lr,
                "step": self._steps[-1][1] if self._steps else None,
            }
        summary["steps_per_second"] = self.steps_per_second()
        return summary

    async def __aenter__(self) -> TrainingMonitor:
        where = api.current_run()
        metrics_dir = where[1] if where is not None else Path(self.config.metrics_path)
        if api.owns_run():
            self._collectors = await self._open_collectors(metrics_dir)
        else:
            # Under `llamamon record` the recorder already samples the machine, the job and its GPUs.
            logger.debug("TrainingMonitor: system and GPU metrics come from the recorder")
        self._task = asyncio.get_running_loop().create_task(self._sample_loop(), name="llamamon-training-monitor")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._tick()  # one last sample at the end of the block
        for _, collector in self._collectors:
            try:
                await collector.close()
            except Exception as exc:  # noqa: BLE001 - isolation: closing one collector must not hide the job's error
                logger.warning("collector %s: close failed: %s", collector.name, exc)
        self._collectors = []
        api.flush()

    async def _open_collectors(self, metrics_dir: Path) -> list[tuple[str, MetricsCollector]]:
        # Why imported here: psutil and pynvml are only needed once a monitor really starts.
        from llamamon.collectors.gpu import GpuCollector
        from llamamon.collectors.process import ProcessTreeCollector
        from llamamon.collectors.system import SystemCollector

        process = ProcessTreeCollector(os.getpid())
        candidates: list[MetricsCollector] = [
            SystemCollector(metrics_dir),
            process,
            GpuCollector(pids=process.pids),
        ]
        opened = []
        for collector in candidates:
            try:
                await collector.open()
            except Exception as exc:  # noqa: BLE001 - isolation: a collector that cannot start is skipped
                logger.warning("collector %s: cannot start: %s", collector.name, exc)
                continue
            if not collector.available:
                logger.info("%s metrics off: %s", collector.name, collector.reason)
                continue
            opened.append((collector.group, collector))
        return opened

    async def _sample_loop(self) -> None:
        next_at = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            if next_at < time.monotonic():  # fell behind (a blocked loop): skip missed ticks, no burst
                next_at = time.monotonic() + self.interval
            await self._tick()

    async def _tick(self) -> None:
        from llamamon.collectors.base import normalize

        now = time.time()
        rows: list[Row] = []
        for group, collector in self._collectors:
            try:
                samples = normalize(await asyncio.wait_for(collector.collect(), self.interval), collector.name)
            except Exception as exc:  # noqa: BLE001 - isolation: one collector's tick
                if collector.name not in self._reported:
                    self._reported.add(collector.name)
                    logger.warning("collector %s failed: %s; its samples are skipped", collector.name, exc)
                continue
            rows.extend(_rows(samples, group, now))
        sps = self.steps_per_second()
        if sps is not None:
            rows.append(Row(now, "training", "steps_per_second", sps))
        if rows:
            api.record_rows(rows)


# -- inference ----------------------------------------------------------------------------------------


class Request:
    """One tracked request: set ``tokens_out`` / ``cache_hit`` (or call ``add_tokens``) while it runs."""

    __slots__ = ("_start", "cache_hit", "error", "latency_ms", "timed_out", "tokens_in", "tokens_out")

    def __init__(self, tokens_in: int | None = None) -> None:
        self.tokens_in = tokens_in
        self.tokens_out = 0
        self.cache_hit = False
        self.error = False
        self.timed_out = False
        self.latency_ms: float | None = None
        self._start = time.perf_counter()

    def add_tokens(self, n: int = 1) -> None:
        self.tokens_out += n


_current: contextvars.ContextVar[Request | None] = contextvars.ContextVar("llamamon_request", default=None)


class _Track:
    """Context manager (sync and async) and decorator for one request; see InferenceMonitor.track."""

    def __init__(self, monitor: InferenceMonitor, tokens_in: int | None) -> None:
        self.monitor = monitor
        self.tokens_in = tokens_in
        self._request: Request | None = None
        self._token: contextvars.Token[Request | None] | None = None

    def __enter__(self) -> Request:
        self._request = Request(self.tokens_in)
        self._token = _current.set(self._request)
        return self._request

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        request, token = self._request, self._token
        if request is None or token is None:
            raise RuntimeError("track() exited without being entered")
        _current.reset(token)
        self._request = self._token = None
        self.monitor._finish(request, error=exc_type is not None and not issubclass(exc_type, GeneratorExit))
        return False  # the caller's exception, if any, propagates unchanged

    async def __aenter__(self) -> Request:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        return self.monitor._decorate(func, self.tokens_in)


class InferenceMonitor:
    """Measures requests and derives per-interval serving metrics.

    ``with monitor.track(tokens_in=12) as req: ...; req.tokens_out = n`` (or ``async with``), or decorate
    a sync or async function with ``@monitor.track`` / ``@monitor.track(tokens_in=...)``; inside it,
    ``InferenceMonitor.request()`` is the running request. An exception inside counts as an error and is
    re-raised; a request slower than ``monitoring.thresholds.inference.timeout`` counts as a timeout.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        interval: float | None = None,
        history: float = 3600.0,
    ) -> None:
        self.config = _config(config)
        self.interval = float(interval) if interval is not None else self.config.update_frequency
        self.timeout_ms = self.config.monitoring.thresholds.inference.timeout * 1000.0
        self.history = history  # seconds of per-request latencies kept in memory for get_latency_metrics
        self._lock = threading.Lock()
        self._done: deque[tuple[float, float]] = deque()  # (monotonic end, latency ms), pruned to history
        self._pending: list[Request] = []  # finished since the last interval
        self._queue_size: float | None = None
        self._interval_start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.totals = {"requests": 0, "errors": 0, "timeouts": 0, "cache_hits": 0, "tokens_out": 0}

    # -- measuring ---------------------------------------------------------------------------------

    def track(self, func: F | None = None, /, *, tokens_in: int | None = None) -> Any:
        """``with monitor.track(tokens_in=n) as req:``; or ``@monitor.track`` on a sync/async function."""
        if func is not None:
            return self._decorate(func, tokens_in)
        return _Track(self, tokens_in)

    @staticmethod
    def request() -> Request | None:
        """The request being tracked in this thread/task (for decorated functions to add tokens)."""
        return _current.get()

    def set_queue_size(self, n: float) -> None:
        self._queue_size = float(n)
        self._ensure_running()

    def _decorate(self, func: F, tokens_in: int | None) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with _Track(self, tokens_in):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Track(self, tokens_in):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def _finish(self, request: Request, error: bool) -> None:
        end = time.perf_counter()
        request.latency_ms = (end - request._start) * 1000.0
        request.error = error
        request.timed_out = request.latency_ms > self.timeout_ms
        now_mono, now = time.monotonic(), time.time()
        with self._lock:
            self._done.append((now_mono, request.latency_ms))
            self._pending.append(request)
            t = self.totals
            t["requests"] += 1
            t["errors"] += error
            t["timeouts"] += request.timed_out
            t["cache_hits"] += bool(request.cache_hit)
            t["tokens_out"] += int(request.tokens_out or 0)
        # Every request's latency is stored, so any percentile over any window can be computed later.
        api.record_rows([Row(now, "inference", "inference_latency", request.latency_ms)])
        self._ensure_running()

    # -- deriving ----------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._thread is None:
            api.current_run()  # first, so that at exit this monitor's last interval is written before the flush
            with self._lock:
                if self._thread is None:
                    atexit.register(self.close)
                    self._stop = threading.Event()
                    self._interval_start = time.monotonic()
                    self._thread = threading.Thread(target=self._run, name="llamamon-inference", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._interval_start + self.interval - time.monotonic())):
            self.emit_interval()

    def emit_interval(self) -> list[Row]:
        """Close the current interval: write and return its derived rows (called by the monitor's thread)."""
        now_mono, now = time.monotonic(), time.time()
        with self._lock:
            keep_from = now_mono - self.history
            while self._done and self._done[0][0] < keep_from:
                self._done.popleft()
            done, self._pending = self._pending, []
            elapsed = max(now_mono - self._interval_start, 1e-9)
            self._interval_start = now_mono
            queue = self._queue_size
        rows = [Row(now, "inference", name, value) for name, value in derive(done, elapsed).items()]
        if queue is not None:
            rows.append(Row(now, "inference", "batch_queue_size", queue))
        if rows:
            api.record_rows(rows)
        return rows

    async def get_latency_metrics(self, window: float | str = 60.0) -> dict[str, float | int | None]:
        """count, mean, p50, p90, p95, p99 and max latency (ms) of requests finished in the last ``window``."""
        seconds = parse_duration(window, path="window") if isinstance(window, str) else float(window)
        cutoff = time.monotonic() - seconds
        with self._lock:
            keep_from = time.monotonic() - self.history
            while self._done and self._done[0][0] < keep_from:
                self._done.popleft()
            latencies = sorted(lat for t, lat in self._done if t >= cutoff)
        return latency_summary(latencies)

    def close(self) -> None:
        """Stop the interval thread after writing the last interval, and flush to the journal (also at exit)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5.0)
            self._thread = None
            self.emit_interval()
            atexit.unregister(self.close)
        api.flush()

    def __enter__(self) -> InferenceMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> InferenceMonitor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)


def derive(done: list[Request], elapsed: float) -> dict[str, float]:
    """Per-interval serving metrics from the requests that finished in it (rates need >= 1 request)."""
    n = len(done)
    out = {
        "batch_throughput": n / elapsed,
        "token_throughput": sum(int(r.tokens_out or 0) for r in done) / elapsed,
    }
    if n:
        out["cache_hit_rate"] = sum(bool(r.cache_hit) for r in done) / n
        out["error_rate"] = sum(r.error for r in done) / n
        out["timeout_rate"] = sum(r.timed_out for r in done) / n
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(sorted_latencies: list[float]) -> dict[str, float | int | None]:
    if not sorted_latencies:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(sorted_latencies),
        "mean": sum(sorted_latencies) / len(sorted_latencies),
        "p50": percentile(sorted_latencies, 0.50),
        "p90": percentile(sorted_latencies, 0.90),
        "p95": percentile(sorted_latencies, 0.95),
        "p99": percentile(sorted_latencies, 0.99),
        "max": sorted_latencies[-1],
    }
