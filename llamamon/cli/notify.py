"""``llamamon alerts notify-test``: send a marked test notification through the configured channels.

Attach to the ``alerts`` group with ``alerts.add_command(notify_test_command)``.
"""

from __future__ import annotations

import click

from llamamon.cli.options import config_option, json_option, verbosity_options
from llamamon.errors import ChannelError, ConfigError, closest


@click.command("notify-test")
@config_option
@click.option(
    "--channel",
    "channel_names",
    multiple=True,
    metavar="NAME",
    help="Only this channel (repeatable; default: every channel in alerts.channels).",
)
@json_option
@verbosity_options
def notify_test_command(
    config_path: str | None, channel_names: tuple[str, ...], as_json: bool, quiet: bool, verbose: int
) -> None:
    """Send a clearly marked test notification through each channel and say which delivered.

    Exits 1 if any channel failed. Webhook URLs and passwords are never printed.
    """
    # Why here: the channel modules (and asyncio) stay off the `llamamon --help` path.
    import asyncio
    import json

    from llamamon.channels.dispatch import Dispatcher, make_test_notification
    from llamamon.channels.registry import build_channels
    from llamamon.cli import setup_logging
    from llamamon.config import load_config

    setup_logging(verbose, quiet)
    config = load_config(config_path)
    where = str(config.source) if config.source else "built-in defaults"
    channels = build_channels(config.alerts.channels, source=config.source)
    if not channels:
        raise ConfigError("no channels configured under alerts.channels", file=where)
    for name in channel_names:
        if name not in channels:
            close = closest(name, channels)
            hint = f'did you mean "{close}"? ' if close else ""
            raise ConfigError(
                f"no channel named {name!r} in {where} ({hint}configured: {', '.join(channels)})", path="--channel"
            )
    if channel_names:
        channels = {name: channels[name] for name in dict.fromkeys(channel_names)}

    deliveries = asyncio.run(Dispatcher(channels).dispatch([make_test_notification()]))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "channel": d.channel,
                        "type": d.type,
                        "ok": d.ok,
                        "attempts": d.attempts,
                        "elapsed": round(d.elapsed, 3),
                        "error": d.error,
                    }
                    for d in deliveries
                ],
                indent=2,
            )
        )
    else:
        for d in deliveries:
            status = "ok    " if d.ok else "FAILED"
            detail = f"delivered in {d.elapsed:.2f}s" if d.ok else d.error
            tries = f" ({d.attempts} attempts)" if d.attempts > 1 else ""
            click.echo(f"{status} {d.channel} ({d.type}) {channels[d.channel].target()}: {detail}{tries}")
    failed = [d.channel for d in deliveries if not d.ok]
    if failed:
        raise ChannelError(f"{len(failed)} of {len(deliveries)} channel(s) failed: {', '.join(failed)}")
