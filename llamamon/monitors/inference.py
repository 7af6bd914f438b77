"""InferenceMonitor: requests measured in a serving process (latency, tokens, cache hits, errors, timeouts).

Every request's latency is stored (so any percentile can be computed later) and, once per update
interval, the derived rates, through ``llamamon.api`` (the same run and journal as ``llamamon.log``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import inspect
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from llamamon import api
from llamamon.monitors._config import monitor_config
from llamamon.samples import Row
from llamamon.units import parse_duration

if TYPE_CHECKING:
    from llamamon.config import Config

logger = logging.getLogger("llamamon.monitors")

F = TypeVar("F", bound=Callable[..., Any])


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
        self.config = monitor_config(config)
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
