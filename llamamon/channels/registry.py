"""Build channels from configuration: ``build_channel(name, type, options)``.

A channel's type is its name (``slack``, ``email`` …) unless its options set ``type:``, so one config
may hold several channels of one type. Channel modules are imported only when a channel of that type
is configured (the email module stays unimported, and with it aiosmtplib, until mail is wanted).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any, Protocol

from llamamon.channels.base import Channel
from llamamon.channels.options import OptionReader
from llamamon.errors import ConfigError

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
        close = difflib.get_close_matches(kind, list(CHANNEL_TYPES), n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        known = ", ".join(CHANNEL_TYPES)
        if explicit:
            raise ConfigError(
                f"unknown channel type {kind!r}{hint}; known: {known}", path=OptionReader.path(name, "type")
            )
        raise ConfigError(
            f"unknown channel type {kind!r}{hint}: name the channel after its type ({known}) or set type:",
            path=OptionReader.path(name),
        )
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
