"""Fan a batch of alert events out to the channels that want them, concurrently, and count failures.

Each channel gets its own group (the events routed to it) in one ``send``; channels run side by side
with asyncio, so a hanging or refusing channel delays no other. Failures are logged by the channel and
counted here per channel, for the ``notification_failures`` metric.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from llamamon.channels.base import Channel, Delivery
from llamamon.channels.render import TEST_LABEL
from llamamon.samples import AlertEvent, Sample, make_labels

log = logging.getLogger("llamamon.channels")

FAILURES_METRIC = "notification_failures"


class Dispatcher:
    """Routes events to channels: an event's ``channels`` names them; an empty tuple means all of them."""

    def __init__(self, channels: Mapping[str, Channel]) -> None:
        self.channels = dict(channels)
        self.failures: Counter[str] = Counter({name: 0 for name in self.channels})
        self._warned: set[str] = set()

    def route(self, events: Sequence[AlertEvent]) -> dict[str, list[AlertEvent]]:
        groups: dict[str, list[AlertEvent]] = {}
        for event in events:
            for name in event.channels or tuple(self.channels):
                channel = self.channels.get(name)
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
        names = list(groups)
        deliveries = await asyncio.gather(*(self.channels[name].send(groups[name]) for name in names))
        for delivery in deliveries:
            if not delivery.ok:
                self.failures[delivery.channel] += 1
        return list(deliveries)

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
    host = host or socket.gethostname()
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
