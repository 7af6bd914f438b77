"""The collectors one command samples, opened, ticked and closed the same way in ``record``, ``watch`` and
``TrainingMonitor``.

Why one place: what a collector that fails, hangs or is off does to a recording is a promise (said once,
skipped, never fatal), and three copies of it had drifted apart. Every tick asks all collectors at once
and waits for each at most ``timeout``:

* a built-in collector runs on the caller's event loop (its blocking work already sits in threads: NVML,
  a scrape). One that has not answered in time is skipped for that tick and, while its call runs on, is
  not asked again: a stuck NVML call never gets a second one beside it.
* a user's collector (``user=``) runs on a loop of its own in a thread (custom.CollectorGuard): its code
  may block its loop, which must not be the recorder's.

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

from llamamon.collectors.base import MIN_WINDOW, MetricsCollector, normalize
from llamamon.collectors.custom import CollectorGuard
from llamamon.samples import Row, RowMaker, Sample

log = logging.getLogger("llamamon.collectors")


class _Member:
    """A built-in collector of the session, asked on the caller's loop."""

    __slots__ = ("busy", "collector", "rows")

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector
        self.rows = RowMaker(collector.group)
        self.busy: asyncio.Future[Any] | None = None  # its last call, still running past its tick's timeout


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
        self._first = True

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
        calls: dict[_Member, asyncio.Future[Any]] = {}
        for member in self._members:
            if member.busy is not None:
                if not member.busy.done():
                    continue
                member.busy = None
            calls[member] = asyncio.ensure_future(member.collector.collect())
        if calls:
            # A first collect may wait out what is left of a rate's MIN_WINDOW (base.py) before it reads.
            wait = self.timeout + MIN_WINDOW if self._first else self.timeout
            await asyncio.wait(calls.values(), timeout=wait)
        self._first = False
        found: list[tuple[_Member | _Guarded, list[Sample]]] = list(
            zip(self._guarded, await asyncio.gather(*guarded), strict=True)
        )
        for member in self._members:
            call = calls.get(member)
            found.append((member, [] if call is None else self._result(member, call)))
        return found

    def _result(self, member: _Member, call: asyncio.Future[Any]) -> list[Sample]:
        name = member.collector.name
        if not call.done():
            member.busy = call
            call.add_done_callback(_forget)
            self._report(name, "timeout", f"gave no answer within {self.timeout:g}s")
            return []
        try:
            return normalize(call.result(), name)
        except Exception as exc:  # noqa: BLE001 - one collector's bad tick must not stop the others
            self._report(name, f"error:{type(exc).__name__}", f"failed: {exc}")
            return []

    async def close(self) -> None:
        """Close every collector that was opened; one that fails to close does not keep the others open."""
        members, self._members = self._members, []
        for member in members:
            if member.busy is not None:
                member.busy.cancel()
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
    """A late answer goes nowhere; its exception is taken so that asyncio does not log it at exit."""
    if not call.cancelled():
        call.exception()
