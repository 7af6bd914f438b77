"""The collectors one command samples, opened, ticked and closed the same way in ``record``, ``watch`` and
``TrainingMonitor``.

Why one place: what a collector that fails, hangs or is off does to a recording is a promise (said once,
skipped, never fatal), and three copies of it had drifted apart. Each tick:

* a built-in collector that may stall (``MetricsCollector.may_stall``: NVML in a thread, a scrape) is
  asked beside the others and waited for at most ``timeout``. One that has not answered in time is
  skipped for that tick and, while its call runs on, not asked again: a stuck NVML call never gets a
  second one beside it. Its late answer is the samples of the first tick after it came, so an endpoint
  slower than the interval is still recorded, less often.
* the other built-ins (reads of /proc) are awaited in turn, on the caller's loop: a task each would cost
  the sampler's hot path more than their reads do.
* a user's collector (``user=``) runs on a loop of its own in a thread (custom.CollectorGuard), waited
  for at most ``timeout``: its code may block its loop, which must not be the recorder's.

A collector says itself how its being off is logged and what it adds to the run's metadata
(``MetricsCollector.off_notice`` / ``run_metadata``); its samples become rows through one
:class:`~llamamon.samples.RowMaker` each.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

from llamamon.collectors.base import MetricsCollector, normalize
from llamamon.collectors.custom import CollectorGuard
from llamamon.samples import Row, RowMaker, Sample

log = logging.getLogger("llamamon.collectors")


class _Member:
    """A built-in collector of the session, asked on the caller's loop."""

    __slots__ = ("collector", "late", "rows")

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector
        self.rows = RowMaker(collector.group)
        self.late: asyncio.Future[Any] | None = None  # its last call, which ran past its tick's timeout


class _Guarded:
    """A user's collector of the session, asked through its guard thread."""

    __slots__ = ("collector", "guard", "rows")

    def __init__(self, guard: CollectorGuard) -> None:
        self.guard = guard
        self.collector = guard.collector
        self.rows = RowMaker(guard.collector.group)


class CollectorSession:
    """``async with CollectorSession([...], timeout=interval) as session: rows = await session.rows(now)``.

    ``goes_on`` completes the once-only failure lines: "(logged once; recording goes on)".
    """

    def __init__(
        self,
        collectors: Sequence[MetricsCollector],
        *,
        timeout: float,
        user: Sequence[MetricsCollector] = (),
        goes_on: str = "recording",
    ) -> None:
        self.timeout = timeout
        self._wanted = list(collectors)
        self._user = list(user)
        self._goes_on = goes_on
        self._said: set[tuple[str, str]] = set()
        self._members: list[_Member] = []
        self._guarded: list[_Guarded] = []

    def _report(self, name: str, kind: str, message: str) -> None:
        if (name, kind) not in self._said:
            self._said.add((name, kind))
            log.warning("collector %s %s (logged once; %s goes on)", name, message, self._goes_on)

    async def open(self) -> None:
        """Open every collector; one that raises or is off is said once and left out of the ticks."""
        for collector in self._wanted:
            try:
                await collector.open()
            except Exception as exc:  # noqa: BLE001 - a collector that cannot start is reported, not fatal
                log.warning("collector %s not started: %s", collector.name, exc)
                continue
            if collector.available:
                self._members.append(_Member(collector))
            else:
                log.log(*collector.off_notice())
        guards = [CollectorGuard(c, functools.partial(self._report, c.name)) for c in self._user]
        opened = await asyncio.gather(*(guard.open(self.timeout) for guard in guards))
        for guard, ok in zip(guards, opened, strict=True):
            if ok and not guard.collector.available:
                log.log(*guard.collector.off_notice())
            self._guarded.append(_Guarded(guard))  # closed with the rest; asked only while available

    def run_metadata(self) -> dict[str, Any]:
        """What the collectors add to the run's metadata (the GPUs' description ...), opened or not."""
        found: dict[str, Any] = {}
        for collector in (*self._wanted, *self._user):
            found.update(collector.run_metadata())
        return found

    async def collect(self) -> list[tuple[MetricsCollector, list[Sample]]]:
        """One tick: each collector's samples, ``[]`` for one that failed, timed out or is still busy."""
        return [(item.collector, samples) for item, samples in await self._tick()]

    async def rows(self, now: float) -> list[Row]:
        """One tick as stored rows; a sample without its own time is stamped ``now``."""
        rows: list[Row] = []
        for item, samples in await self._tick():
            if samples:
                rows.extend(item.rows(samples, now))
        return rows

    async def _tick(self) -> list[tuple[_Member | _Guarded, list[Sample]]]:
        guarded = [asyncio.ensure_future(item.guard.collect(self.timeout)) for item in self._guarded]
        found: list[tuple[_Member | _Guarded, list[Sample]]] = []
        for member in self._members:
            if not member.collector.may_stall:
                try:
                    found.append((member, normalize(await member.collector.collect(), member.collector.name)))
                except Exception as exc:  # noqa: BLE001 - one collector's bad tick must not stop the others
                    self._failed(member, exc)
        # Asked after the /proc readers, as they always were: the GPU's process memory is summed over the pids
        # the process tree's collector has just found.
        calls: dict[_Member, asyncio.Future[Any] | None] = {}
        for member in self._members:
            if not member.collector.may_stall:
                continue
            late, member.late = member.late, None
            if late is None:
                calls[member] = asyncio.ensure_future(member.collector.collect())
            elif late.done():
                calls[member] = late  # answered since: this tick's samples
            else:
                member.late, calls[member] = late, None  # still busy: skipped, not asked again
        waits = [call for call in calls.values() if call is not None]
        if waits:
            await asyncio.wait(waits, timeout=self.timeout)
        for member, call in calls.items():
            found.append((member, [] if call is None else self._result(member, call)))
        if guarded:
            found.extend(zip(self._guarded, await asyncio.gather(*guarded), strict=True))
        return found

    def _result(self, member: _Member, call: asyncio.Future[Any]) -> list[Sample]:
        if not call.done():
            member.late = call
            self._report(member.collector.name, "timeout", f"gave no answer within {self.timeout:g}s")
            return []
        try:
            return normalize(call.result(), member.collector.name)
        except Exception as exc:  # noqa: BLE001 - one collector's bad tick must not stop the others
            self._failed(member, exc)
            return []

    def _failed(self, member: _Member, exc: Exception) -> None:
        self._report(member.collector.name, f"error:{type(exc).__name__}", f"failed: {exc}")

    async def close(self) -> None:
        """Close every collector that was opened; one that fails to close does not keep the others open."""
        members, self._members = self._members, []
        for member in members:
            if member.late is not None:
                member.late.cancel()
                member.late.add_done_callback(_forget)
            try:
                await member.collector.close()
            except Exception as exc:  # noqa: BLE001 - one collector's cleanup must not block the others
                log.debug("closing collector %s failed: %s", member.collector.name, exc)
        guarded, self._guarded = self._guarded, []
        for item in guarded:
            await item.guard.close(self.timeout)

    async def __aenter__(self) -> CollectorSession:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _forget(call: asyncio.Future[Any]) -> None:
    """A late answer at close goes nowhere; its exception is taken so that asyncio does not log it at exit."""
    if not call.cancelled():
        call.exception()
