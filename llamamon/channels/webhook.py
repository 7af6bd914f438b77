"""Generic webhook channel: a JSON POST in Alertmanager's webhook payload shape (version 4).

Anything that already consumes Alertmanager webhooks (chat bridges, incident tools, custom scripts)
can take llamamon's notifications without new code.

Options: ``url`` (required, secret), ``headers`` (values secret), ``receiver`` (the channel name),
``external_url``, ``generator_url`` (``{run}``, ``{host}``, ``{rule}`` replaced per alert), ``max_alerts``
(0: all), ``send_resolved`` (true), and the common ``timeout``, ``attempts``, ``backoff``. Credentials in
the URL (``https://user:pw@host``) become Basic auth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamamon.channels.base import BaseChannel, RetryPolicy
from llamamon.channels.options import OptionReader
from llamamon.channels.render import alert_annotations, alert_labels, fingerprint, source_link, timestamp
from llamamon.channels.transport import post_json
from llamamon.masking import mask_url
from llamamon.samples import AlertEvent

# Why: Alertmanager writes the zero time of Go for an alert that has not ended.
ZERO_TIME = "0001-01-01T00:00:00Z"


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def webhook_payload(
    events: Sequence[AlertEvent], *, receiver: str, external_url: str = "", generator_url: str = "", max_alerts: int = 0
) -> dict[str, Any]:
    """The body Alertmanager's webhook receiver sends, built from one batch of llamamon events."""
    alerts = []
    for event in events:
        labels = alert_labels(event)
        ended = event.ended_at if event.state == "resolved" and event.ended_at is not None else None
        alerts.append(
            {
                "status": event.state,
                "labels": labels,
                "annotations": alert_annotations(event),
                "startsAt": timestamp(event.started_at),
                "endsAt": timestamp(ended) if ended is not None else ZERO_TIME,
                "generatorURL": source_link(generator_url, event),
                "fingerprint": fingerprint(labels),
            }
        )
    common_labels = _common([a["labels"] for a in alerts])
    group_labels = {"alertname": common_labels["alertname"]} if "alertname" in common_labels else {}
    group_key = "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}"
    shown = alerts[:max_alerts] if max_alerts else alerts
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": len(alerts) - len(shown),
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": shown,
    }


class WebhookChannel(BaseChannel):
    type = "webhook"

    def __init__(self, name: str, options: OptionReader) -> None:
        self.url: str = options.url("url")
        self.headers = options.text_mapping("headers")
        self.receiver: str = options.text("receiver", name)
        self.external_url: str = options.url("external_url", "")
        self.generator_url: str = options.url("generator_url", "")
        self.max_alerts: int = options.whole("max_alerts", 0)
        super().__init__(name, RetryPolicy.from_options(options), send_resolved=options.flag("send_resolved", True))

    def target(self) -> str:
        return mask_url(self.url)

    def secrets(self) -> tuple[str, ...]:
        return (self.url, *self.headers.values())

    async def _attempt(self, events: Sequence[AlertEvent]) -> None:
        payload = webhook_payload(
            events,
            receiver=self.receiver,
            external_url=self.external_url,
            generator_url=self.generator_url,
            max_alerts=self.max_alerts,
        )
        await post_json(self.url, payload, headers=self.headers, timeout=self.policy.timeout)
