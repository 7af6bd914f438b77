"""A fixed-rate schedule on a monotonic clock: tick k is due at ``origin + k * interval``.

Due times are computed from the origin, never by adding the interval to "now", so slow ticks do not make
the schedule drift; a tick that overran one or more periods skips the ticks it missed instead of firing them
in a burst (samples are snapshots: three catch-up samples in a row say nothing new). Wall-clock jumps (NTP,
the user changing the time) do not touch the schedule. The clock is injected so tests drive it by hand.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable


class Ticker:
    def __init__(self, interval: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 (got {interval})")
        self.interval = float(interval)
        self.clock = clock
        self.origin = clock()
        self.index = 0  # the tick due next (tick 0 is due at once)
        self.skipped = 0  # ticks missed because an earlier one overran, over the whole run

    @property
    def due(self) -> float:
        return self.origin + self.index * self.interval

    def delay(self) -> float:
        """Seconds until the next tick is due (0 when it is due already)."""
        return max(0.0, self.due - self.clock())

    def advance(self) -> int:
        """Move past the tick just taken to the next one not yet passed; return how many were skipped."""
        elapsed = self.clock() - self.origin
        # The first tick whose due time is now or later; never go backwards, never stay on the same tick.
        upcoming = max(self.index + 1, math.ceil(elapsed / self.interval - 1e-9))
        skipped = upcoming - self.index - 1
        self.index = upcoming
        self.skipped += skipped
        return skipped


# Prometheus snaps scrape timestamps the same way, by the same default (``--scrape.timestamp-tolerance``).
STAMP_TOLERANCE = 0.002


class TickStamps:
    """Wall-clock stamps for ticks: on the tick grid when the real time is within ``tolerance`` of it.

    Why: a tick wakes a fraction of a millisecond late, by a different amount each time (timer slack, the
    event loop polling in whole milliseconds), and those microseconds are all a stored timestamp carries
    beyond the schedule: ~11 random bits per tick and partition, about a third of the store's bytes per
    sample (bench/storage.py). Snapped, a series' timestamps are an exact progression that DELTA encoding
    stores in ~0 bytes. A stamp is never more than ``tolerance`` from the real time (the samples
    themselves take longer than that to read); a skipped tick keeps the grid, and a wall-clock step or
    drift past the tolerance starts a new grid at the real time. Stamps increase as the real times do.
    """

    def __init__(self, interval: float, tolerance: float = STAMP_TOLERANCE) -> None:
        self.interval = float(interval)
        self.tolerance = tolerance
        self._anchor: float | None = None
        self._index = 0

    def __call__(self, now: float) -> float:
        if self._anchor is not None:
            index = round((now - self._anchor) / self.interval)
            # anchor + index * interval, not last + interval: no rounding error piles up over a day.
            snapped = self._anchor + index * self.interval
            if index > self._index and abs(now - snapped) <= self.tolerance:
                self._index = index
                return snapped
        self._anchor, self._index = now, 0
        return now


class Stop:
    """A stop flag the tick loop sleeps on: one future and one timer per wait, no task, no cancellation.

    (``asyncio.wait_for(event.wait(), delay)`` would create a task per tick and cancel it on timeout, which
    costs about as much again as the wait itself.) ``set()`` must run on the loop's thread; from another
    thread use ``loop.call_soon_threadsafe(stop.set)``.
    """

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the flag is set meanwhile."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(delay, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def run_ticks(
    ticker: Ticker,
    on_tick: Callable[[], Awaitable[None]],
    stop: Stop,
) -> None:
    """Call ``on_tick`` on schedule until ``stop`` is set; the first call is immediate and always made.

    When ``stop`` is set the wait ends at once (no partial interval is slept away); the caller takes the
    final sample itself, so a job shorter than one interval still has a first and a last sample.
    """
    while True:
        await on_tick()
        if stop.is_set():
            return
        ticker.advance()
        delay = ticker.delay()
        if delay > 0:
            await stop.sleep(delay)
        if stop.is_set():
            return


class LoopThread:
    """``main(stop)`` on an asyncio loop in a thread of its own, which another thread ends with :meth:`stop`.

    Why the lock: a stop may come before the loop has started (a job that exits at once); it is then set
    as the loop starts. What ``main`` raised is kept in ``error``: a recording may fail, the job must not.
    """

    def __init__(self, main: Callable[[Stop], Awaitable[None]], name: str) -> None:
        self.error: BaseException | None = None
        self._main = main
        self._lock = threading.Lock()
        self._requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Stop | None = None
        self._thread = threading.Thread(target=self._run, name=name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Set its Stop (from any thread) and wait until ``main`` has returned."""
        with self._lock:
            self._requested = True
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - kept for the caller, which says it
            self.error = exc

    async def _serve(self) -> None:
        stop = Stop()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._stop = stop
            if self._requested:
                stop.set()
        await self._main(stop)
