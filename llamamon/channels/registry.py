"""Build channels from configuration: ``build_channel(name, type, options)``.

A channel's type is its name (``slack``, ``email`` …) unless its options set ``type:``, so one config
may hold several channels of one type. Channel modules are imported only when a channel of that type
is configured (the email module stays unimported, and with it aiosmtplib, until mail is wanted).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from llamamon.channels.base import Channel, Delivery
from llamamon.channels.options import OptionReader
from llamamon.config.loader import UnsetVariable
from llamamon.errors import ConfigError, did_you_mean
from llamamon.samples import AlertEvent

log = logging.getLogger("llamamon.channels")

# type -> (module, class)
CHANNEL_TYPES: dict[str, tuple[str, str]] = {
    "slack": ("llamamon.channels.slack", "SlackChannel"),
    "email": ("llamamon.channels.email", "EmailChannel"),
    "webhook": ("llamamon.channels.webhook", "WebhookChannel"),
    "alertmanager": ("llamamon.channels.alertmanager", "AlertmanagerChannel"),
}


class ChannelConfigLike(Protocol):
    name: str
    type: str
    options: Mapping[str, Any]
    line: int | None


def build_channel(name: str, type: str | None, options: Mapping[str, Any]) -> Channel:
    """A ready channel; a bad option raises ConfigError at ``alerts.channels.<name>.<key>``."""
    options = dict(options or {})
    # Why: accept options that still carry `type:` (the raw YAML mapping) as well as a separate type.
    declared = options.pop("type", None)
    explicit = type or declared
    kind = str(explicit or name)
    if kind not in CHANNEL_TYPES:
        hint = did_you_mean(kind, CHANNEL_TYPES)
        known = ", ".join(CHANNEL_TYPES)
        if explicit:
            raise ConfigError(
                f"unknown channel type {kind!r}{hint}; known: {known}", path=OptionReader.path(name, "type")
            )
        raise ConfigError(
            f"unknown channel type {kind!r}{hint}: name the channel after its type ({known}) or set type:",
            path=OptionReader.path(name),
        )
    unset = _unset_variable(options)
    if unset is not None:
        key, variable = unset
        return UnsetChannel(name, kind, variable, OptionReader.path(name, key))
    module, cls = CHANNEL_TYPES[kind]
    reader = OptionReader(name, options)
    channel = getattr(importlib.import_module(module), cls)(name, reader)
    reader.finish()
    return channel


def build_channels(configs: Mapping[str, ChannelConfigLike], *, source: object = None) -> dict[str, Channel]:
    """Every configured channel, by name; errors get the config file and the channel's line."""
    channels: dict[str, Channel] = {}
    for name, config in configs.items():
        try:
            channels[name] = build_channel(name, config.type, config.options)
        except ConfigError as exc:
            if exc.file or source is None:
                raise
            raise ConfigError(exc.message, file=str(source), line=exc.line or config.line, path=exc.path) from None
    return channels


class UnsetChannel:
    """A channel whose options name an unset ``${VAR}``: off. Sent to directly (``alerts notify-test``) it
    fails with the reason; ``record`` and ``watch`` leave it out and say so once (:meth:`off_line`).

    Why not an error at startup: the built-in monitoring.yaml references SLACK_WEBHOOK_URL; a machine
    without it must still record, and its alerts are still logged, without a "cannot send" per alert.
    """

    send_resolved = True

    def __init__(self, name: str, type: str, variable: str, option: str) -> None:
        self.name = name
        self.type = type
        self.variable = variable
        self.option = option
        self.reason = f"{option}: environment variable {variable} is not set"
        self._warned = False

    def off_line(self) -> str:
        """The one line that says this channel is off and which variable would turn it on."""
        return f"{self.type} channel {self.name!r} is off: {self.variable} is not set ({self.option}); nothing is sent to it"

    def target(self) -> str:
        return "(not configured)"

    def __repr__(self) -> str:
        return f"<UnsetChannel {self.name!r}: {self.reason}>"

    async def send(self, events: Sequence[AlertEvent]) -> Delivery:
        if not self._warned:
            self._warned = True
            log.warning("%s channel %r cannot send: %s", self.type, self.name, self.reason)
        return Delivery(self.name, self.type, False, 0, len(events), 0.0, f"not configured: {self.reason}")


def _unset_variable(value: Any, key: str = "") -> tuple[str, str] | None:
    """(option key, VAR) of the first value that came from an unset ``${VAR}``, looking into lists and maps."""
    if isinstance(value, UnsetVariable):
        return key, value.variable
    items: Any = ()
    if isinstance(value, Mapping):
        items = ((f"{key}.{k}" if key else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(value))
    for sub_key, item in items:
        found = _unset_variable(item, sub_key)
        if found is not None:
            return found
    return None
