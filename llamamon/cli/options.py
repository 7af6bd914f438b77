"""Option decorators shared by several commands, defined once (sqlite-utils style)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from llamamon.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


CONFIG_HELP = "monitoring.yaml to use (default: $LLAMAMON_CONFIG, then ./monitoring.yaml, then built-in defaults)."
METRICS_DIR_HELP = "Metrics folder, or s3://bucket/prefix (default: monitoring.metrics_path, .metrics)."


def config_option(fn: F) -> F:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)(fn)


def metrics_dir_option(fn: F) -> F:
    return click.option("--metrics-dir", type=click.Path(file_okay=False), help=METRICS_DIR_HELP)(fn)


def verbosity_options(fn: F) -> F:
    fn = click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")(fn)
    return click.option("-v", "--verbose", count=True, help="More detail on stderr (repeatable).")(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(fn)


def interval_option(help_text: str) -> Callable[[F], F]:
    """``--interval SECONDS``, read as seconds: a number or a duration such as 500ms, 2s; more than 0."""
    return click.option("--interval", default=None, metavar="SECONDS", callback=_seconds, help=help_text)


def _seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from llamamon.units import parse_duration

    seconds = parse_duration(value, path="--interval")
    if not seconds > 0:
        raise click.BadParameter(f"must be more than 0 seconds (got {value})", ctx=ctx, param=param)
    return seconds


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    """``--tag team=nlp --tag gpu=a100`` -> dict; a pair without ``=`` or with an empty key is a ConfigError."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE (got {pair!r})", path="--tag")
        tags[key.strip()] = value
    return tags
