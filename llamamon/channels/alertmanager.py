"""Alertmanager channel: POST alerts to ``/api/v2/alerts`` so teams keep their routing and silences.

A firing alert is posted with an ``endsAt`` in the future (``expire_after``, longer than llamamon's
repeat interval) so Alertmanager keeps it active between llamamon's re-notifications, yet lets it
expire if llamamon stops; a resolve posts the same labels with ``endsAt`` = the resolve time.

Options: ``url`` (required: the Alertmanager base URL, ``/api/v2/alerts`` is added), ``headers``,
``generator_url`` (each alert's "Source" link; ``{run}``, ``{host}`` and ``{rule}`` are replaced by the
alert's), ``expire_after`` (4h15m), and the common ``timeout``, ``attempts``, ``backoff``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from llamamon.channels.base import BaseChannel, RetryPolicy
from llamamon.channels.options import OptionReader
from llamamon.channels.render import alert_annotations, alert_labels, source_link, timestamp
from llamamon.channels.transport import post_json
from llamamon.masking import mask_url
from llamamon.samples import AlertEvent

API_PATH = "/api/v2/alerts"
# Why: llamamon re-notifies every repeat_interval (4h by default); a firing alert must outlive that gap.
DEFAULT_EXPIRE_AFTER = 4 * 3600 + 15 * 60


def alertmanager_alerts(
    events: Sequence[AlertEvent],
    *,
    generator_url: str = "",
    expire_after: float = DEFAULT_EXPIRE_AFTER,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The postableAlerts body of ``POST /api/v2/alerts`` for one batch."""
    now = time.time() if now is None else now
    alerts = []
    for event in events:
        if event.state == "resolved":
            ends = event.ended_at if event.ended_at is not None else now
        else:
            # An explicit end in the future (a test notification) wins over the default expiry.
            ends = event.ended_at if event.ended_at is not None and event.ended_at > now else now + expire_after
        alert: dict[str, Any] = {
            "labels": alert_labels(event),
            "annotations": alert_annotations(event),
            "startsAt": timestamp(event.started_at),
            # Why: Alertmanager rejects endsAt before startsAt (a resolve stamped in the same second).
            "endsAt": timestamp(max(ends, event.started_at)),
        }
        if generator_url:
            alert["generatorURL"] = source_link(generator_url, event)
        alerts.append(alert)
    return alerts


class AlertmanagerChannel(BaseChannel):
    type = "alertmanager"

    def __init__(self, name: str, options: OptionReader) -> None:
        base = options.url("url").rstrip("/")
        self.url = base if base.endswith(API_PATH) else base + API_PATH
        self.headers = options.text_mapping("headers")
        self.generator_url: str = options.url("generator_url", "")
        self.expire_after = options.duration("expire_after", DEFAULT_EXPIRE_AFTER)
        # Why: no send_resolved option here; without the resolve Alertmanager would keep the alert until expiry.
        super().__init__(name, RetryPolicy.from_options(options))

    def target(self) -> str:
        return mask_url(self.url)

    def secrets(self) -> tuple[str, ...]:
        return (self.url, *self.headers.values())

    async def _attempt(self, events: Sequence[AlertEvent]) -> None:
        body = alertmanager_alerts(events, generator_url=self.generator_url, expire_after=self.expire_after)
        await post_json(self.url, body, headers=self.headers, timeout=self.policy.timeout)
