"""Fan a batch of alert events out to the channels that want them, concurrently, and count failures.

Each channel gets its own group (the events routed to it) in one ``send``; channels run side by side
with asyncio, so a hanging or refusing channel delays no other. Failures are logged by the channel and
counted here per channel, for the ``notification_failures`` metric.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from llamamon.channels.base import Channel, Delivery
from llamamon.channels.render import TEST_LABEL
from llamamon.host import this_host
from llamamon.samples import AlertEvent, Sample, make_labels

log = logging.getLogger("llamamon.channels")

FAILURES_METRIC = "notification_failures"


class Dispatcher:
    """Routes events to channels: an event's ``channels`` names them; an empty tuple means all of them.

    ``off`` names configured channels that are switched off (their ``${VAR}``s are unset, said once where
    they were built): events for them are skipped without a warning per alert.
    """

    def __init__(self, channels: Mapping[str, Channel], *, off: Collection[str] = ()) -> None:
        self.channels = dict(channels)
        self.off = frozenset(off)
        self.failures: Counter[str] = Counter({name: 0 for name in self.channels})
        self._warned: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[list[Delivery]]] = set()

    def route(self, events: Sequence[AlertEvent]) -> dict[str, list[AlertEvent]]:
        groups: dict[str, list[AlertEvent]] = {}
        for event in events:
            for name in event.channels or tuple(self.channels):
                channel = self.channels.get(name)
                if channel is None and name in self.off:
                    continue
                if channel is None:
                    if name not in self._warned:
                        self._warned.add(name)
                        log.warning("rule %s names channel %r, which is not configured; skipped", event.rule, name)
                    continue
                if event.state == "resolved" and not channel.send_resolved:
                    continue
                groups.setdefault(name, []).append(event)
        return groups

    async def dispatch(self, events: Sequence[AlertEvent]) -> list[Delivery]:
        """Deliver and wait for every channel (each bounded by its own timeouts and retries)."""
        groups = self.route(events)
        if not groups:
            return []
        deliveries = await asyncio.gather(*(self._send(name, group) for name, group in groups.items()))
        return list(deliveries)

    async def _send(self, name: str, events: list[AlertEvent]) -> Delivery:
        # Why the lock: batches to one channel go out in order (a resolve never overtakes its firing
        # while that one is still retrying); different channels still run side by side.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Why: an asyncio.Lock belongs to one event loop; a dispatcher may outlive an asyncio.run().
            self._locks.clear()
            self._loop = loop
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            delivery = await self.channels[name].send(events)
        if not delivery.ok:
            self.failures[name] += 1
        return delivery

    def submit(self, events: Sequence[AlertEvent]) -> asyncio.Task[list[Delivery]]:
        """Deliver in the background so the caller's tick loop goes on; ``drain`` waits for it at exit."""
        task = asyncio.get_running_loop().create_task(self.dispatch(events))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def drain(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for background deliveries; cancel what is left, return how many."""
        if not self._pending:
            return 0
        _, unfinished = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
            log.warning("gave up on %d notification batch(es) still being delivered at exit", len(unfinished))
        return len(unfinished)

    def failure_samples(self) -> list[Sample]:
        """Cumulative failed deliveries per channel, zeros included (a counter starts at 0, not absent)."""
        return [
            Sample(FAILURES_METRIC, float(count), make_labels(channel=name)) for name, count in self.failures.items()
        ]


def make_test_notification(*, host: str | None = None, now: float | None = None) -> AlertEvent:
    """The clearly marked notification ``llamamon alerts notify-test`` sends through every channel.

    It carries an end five minutes ahead so that an Alertmanager receiving it lets it expire by itself.
    """
    now = time.time() if now is None else now
    host = host or this_host()
    return AlertEvent(
        rule="llamamon_test_notification",
        state="firing",
        severity="info",
        labels=make_labels({TEST_LABEL: "true"}),
        annotations=make_labels(
            summary=f"Test notification from llamamon on {host}: this channel works, no action needed",
            description="Sent by `llamamon alerts notify-test`; it is not a real alert.",
        ),
        value=0.0,
        started_at=now,
        ended_at=now + 300,
        host=host,
    )
