"""The job's output read for metric lines: parsed as it passes (its bytes unchanged), journaled on a schedule
of its own, and left alone once the job says it logs those metrics itself (output_claim.py).

Why a schedule of its own: the parsed lines are journaled several times per interval, and at least every
second (:data:`JOURNALS_PER_INTERVAL`, :data:`JOURNAL_MAX_S`), so a kill -9 of ``record`` loses only what
was parsed since. At the tick alone they would wait in memory for the collectors (NVML, a scrape up to its
timeout), which may take most of an interval, and rows waiting in memory are what a kill loses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llamamon.runtime.output_claim import ENV as OUTPUT_CLAIM_ENV
from llamamon.runtime.output_claim import OutputClaim
from llamamon.samples import Row, RowMaker, Sample

if TYPE_CHECKING:
    from llamamon.collectors.stdout import OutputParser
    from llamamon.config import Config

JOURNALS_PER_INTERVAL = 4
JOURNAL_MAX_S = 1.0

Append = Callable[[list[Row]], object]


class JobOutput:
    """What the job prints on stdout (1) and stderr (2), as metric rows.

    Threads: :meth:`on_output` and :meth:`end` run on the main thread (the child's I/O); :meth:`journal`,
    :meth:`store` and :meth:`take` on the sampler's loop, which :meth:`on_output` wakes when lines wait.
    """

    def __init__(self, config: Config, interval: float) -> None:
        self.parsers = _output_parsers(config)
        self.interval = interval
        self.claim: OutputClaim | None = None  # where the job may say that it logs what it prints
        self._parsed: collections.deque[Sample] = collections.deque()
        self._journaled: list[Row] = []  # rows journaled since the last tick, for its alerts and .prom file
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # see journal()
        self._signalled = False
        self._rows = RowMaker("custom")

    def claim_env(self) -> dict[str, str]:
        """The variable telling the job where to claim its output (the claim is made now)."""
        self.claim = OutputClaim()
        return {OUTPUT_CLAIM_ENV: str(self.claim.path)}

    def close(self) -> None:
        if self.claim is not None:
            self.claim.close()

    def on_output(self, stream: int, data: bytes) -> None:
        """Called with each chunk of the job's output before it is passed on (the bytes are not changed)."""
        parser = self.parsers.get(stream)
        if parser is not None and (self.claim is None or self.claim.since is None):
            self._queue(self._unclaimed(parser.feed(data)))

    def end(self) -> None:
        """The job ended: what its parsers still hold (a last line without a newline, a waiting Trainer dict)."""
        for parser in self.parsers.values():
            self._queue(self._unclaimed(parser.close()))
        steps = next(iter(self.parsers.values())).steps
        if steps is not None:
            self._queue(self._unclaimed(steps.release()))

    def _queue(self, samples: list[Sample]) -> None:
        """Queue parsed samples for the journal and wake its task, once until it has taken them."""
        if not samples:
            return
        self._parsed.extend(samples)
        wake = self._wake
        if wake is not None and not self._signalled:
            self._signalled = True
            with contextlib.suppress(RuntimeError):  # the sampler's loop has closed: its last tick took the rest
                wake[0].call_soon_threadsafe(wake[1].set)

    def _unclaimed(self, samples: list[Sample]) -> list[Sample]:
        return samples if self.claim is None else self.claim.keep(samples)

    async def journal(self, append: Append) -> None:
        """Journal the parsed lines on their own schedule, until cancelled; the GPU and scrape collectors wait
        in threads, so this runs meanwhile. Woken by :meth:`on_output` when lines wait, at most once a period:
        a job printing no metric lines costs the sampler's loop no wake-ups."""
        period = min(self.interval / JOURNALS_PER_INTERVAL, JOURNAL_MAX_S)
        waiting = asyncio.Event()
        self._wake = (asyncio.get_running_loop(), waiting)
        while True:
            waiting.clear()
            self._signalled = False  # after the clear: a line queued from here on wakes the next round
            self.store(append, time.time())
            await asyncio.sleep(period)
            await waiting.wait()

    def store(self, append: Append, now: float) -> None:
        """Journal the lines parsed since the last call. They are kept for the next tick too (:meth:`take`):
        its alerts and .prom file see every row of the interval."""
        if not self._parsed:
            return
        samples = [self._parsed.popleft() for _ in range(len(self._parsed))]
        rows = self._rows(samples, now)
        self._journaled.extend(rows)
        append(rows)

    def take(self) -> list[Row]:
        """The rows journaled since the last tick."""
        rows, self._journaled = self._journaled, []
        return rows


def _output_parsers(config: Config) -> dict[int, OutputParser]:
    """One line parser per stream (stdout 1, stderr 2), with monitoring.yaml's parsers and aliases."""
    from llamamon.collectors.stdout import OutputParser
    from llamamon.collectors.trainer_steps import TrainerSteps

    patterns = [parser.pattern for parser in config.parsers]
    steps = TrainerSteps()  # the Trainer's dicts (stdout) get their step from its progress bar (stderr)
    return {stream: OutputParser(patterns, config.aliases, steps=steps) for stream in (1, 2)}
