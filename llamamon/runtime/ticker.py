"""A fixed-rate schedule on a monotonic clock: tick k is due at ``origin + k * interval``.

Due times are computed from the origin, never by adding the interval to "now", so slow ticks do not make
the schedule drift; a tick that overran one or more periods skips the ticks it missed instead of firing them
in a burst (samples are snapshots: three catch-up samples in a row say nothing new). Wall-clock jumps (NTP,
the user changing the time) do not touch the schedule. The clock is injected so tests drive it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
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


async def run_ticks(
    ticker: Ticker,
    on_tick: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
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
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
