"""Configuration: find and read monitoring.yaml, validate it over the shipped defaults.

This package may import only the leaf modules (errors, units); every other layer reads a Config.
"""

from __future__ import annotations

import os
from pathlib import Path

from llamamon.config.loader import RawConfig, find_config, parse_config_text, read_config
from llamamon.config.schema import (
    Alerts,
    ChannelConfig,
    Config,
    Monitoring,
    ParserConfig,
    RuleConfig,
    Thresholds,
    build_config,
)

__all__ = [
    "Alerts",
    "ChannelConfig",
    "Config",
    "Monitoring",
    "ParserConfig",
    "RuleConfig",
    "Thresholds",
    "example_config_path",
    "load_config",
]


def example_config_path() -> Path:
    """The commented example monitoring.yaml: inside the wheel, else at the checkout's root."""
    packaged = Path(__file__).resolve().parents[1] / "monitoring.yaml"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "monitoring.yaml"


def _defaults() -> RawConfig:
    # Parsed on each load (about a millisecond) so ${VAR}s reflect the environment of the moment.
    path = example_config_path()
    raw = parse_config_text(path.read_text(encoding="utf-8"), "built-in defaults")
    return RawConfig(raw.data, raw.lines, None)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """The Config in effect: ``path``, else $LLAMAMON_CONFIG, else ./monitoring.yaml, else defaults."""
    source = find_config(path)
    return build_config(read_config(source), _defaults())
