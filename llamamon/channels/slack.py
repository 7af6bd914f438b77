"""Slack incoming-webhook channel: one message per batch, one coloured attachment per alert event.

Options: ``webhook_url`` (required, secret), ``channel``, ``username``, ``icon_emoji``, ``send_resolved``
(true), and the common ``timeout`` (10s), ``attempts`` (3), ``backoff`` (500ms, doubling).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llamamon.channels.base import BaseChannel, RetryPolicy
from llamamon.channels.options import OptionReader
from llamamon.channels.render import colour, fields, headline, title
from llamamon.channels.transport import post_json
from llamamon.masking import mask_url
from llamamon.samples import AlertEvent

# Why: Slack truncates messages with more than 100 attachments and recommends far fewer.
MAX_ATTACHMENTS = 20
_SHORT_FIELDS = frozenset({"Severity", "Rule", "Value", "Host", "Run", "Started", "Resolved", "Duration"})


def escape(text: str) -> str:
    """Slack reads ``<…>`` as links or mentions and ``&`` as an entity: ``loss < 0.5`` must stay text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(
    events: Sequence[AlertEvent],
    *,
    channel: str | None = None,
    username: str | None = None,
    icon_emoji: str | None = None,
) -> dict[str, Any]:
    """The JSON body Slack's incoming webhook expects (``text`` is the notification/fallback line)."""
    attachments = []
    for event in events[:MAX_ATTACHMENTS]:
        rows = fields(event)
        attachments.append(
            {
                "color": colour(event),
                "fallback": escape(f"{title(event)}: {event.summary}"),
                "title": escape(title(event)),
                "text": escape(event.summary),
                "fields": [
                    {"title": n, "value": escape(v), "short": n in _SHORT_FIELDS} for n, v in rows if n != "Summary"
                ],
                "footer": "llamamon",
                "ts": int(event.ended_at if event.state == "resolved" and event.ended_at else event.started_at),
            }
        )
    if len(events) > MAX_ATTACHMENTS:
        attachments.append({"color": "#999999", "text": f"… and {len(events) - MAX_ATTACHMENTS} more alert events"})
    payload: dict[str, Any] = {"text": escape(headline(events)), "attachments": attachments}
    if channel:
        payload["channel"] = channel
    if username:
        payload["username"] = username
    if icon_emoji:
        payload["icon_emoji"] = icon_emoji
    return payload


class SlackChannel(BaseChannel):
    type = "slack"

    def __init__(self, name: str, options: OptionReader) -> None:
        self.webhook_url: str = options.url("webhook_url")
        self.channel: str | None = options.text("channel", None)
        self.username: str | None = options.text("username", None)
        self.icon_emoji: str | None = options.text("icon_emoji", None)
        super().__init__(name, RetryPolicy.from_options(options), send_resolved=options.flag("send_resolved", True))

    def target(self) -> str:
        return mask_url(self.webhook_url) + (f" {self.channel}" if self.channel else "")

    def secrets(self) -> tuple[str, ...]:
        return (self.webhook_url,)

    async def _attempt(self, events: Sequence[AlertEvent]) -> None:
        payload = slack_payload(events, channel=self.channel, username=self.username, icon_emoji=self.icon_emoji)
        # Why: any 2xx is success; Slack answers "ok", Slack-compatible servers (Mattermost …) vary.
        await post_json(self.webhook_url, payload, timeout=self.policy.timeout)
