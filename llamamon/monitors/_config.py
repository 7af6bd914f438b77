"""The config a monitor was given, or the one ``load_config`` finds: shared by both monitors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llamamon.config import Config


def monitor_config(config: Any) -> Config:
    from llamamon.config import Config, load_config

    return config if isinstance(config, Config) else load_config(config)
