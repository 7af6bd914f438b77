"""``llamamon watch``: live alerts for this host and the runs being recorded; a live view on a terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from llamamon.cli.options import config_option, interval_option, metrics_dir_option, verbosity_options

if TYPE_CHECKING:
    from llamamon.runtime.watcher import Snapshot

CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen: redraw in place without curses


@click.command("watch")
@config_option
@metrics_dir_option
@interval_option("Seconds between evaluations (default: monitoring.update_frequency).")
@click.option("--once", is_flag=True, help="Evaluate one tick and exit (for cron): exit 1 if a critical alert fires.")
@click.option(
    "--run", "run_ids", multiple=True, help="Follow only this run (id, id prefix, name or name prefix; repeatable)."
)
@click.option("--no-gpu", is_flag=True, help="Do not sample this host's GPUs.")
@verbosity_options
@click.pass_context
def watch_command(
    ctx: click.Context,
    config_path: str | None,
    metrics_dir: str | None,
    interval: float | None,
    once: bool,
    run_ids: tuple[str, ...],
    no_gpu: bool,
    quiet: bool,
    verbose: int,
) -> None:
    """Evaluate the alert rules live over this host and the runs being recorded, and notify.

    On a terminal a compact view is redrawn every tick; otherwise one line per alert change. Ctrl-C or
    SIGTERM stop it with its state saved; alert state is shared with `record`, so nothing is sent twice.
    """
    # Deferred: the watcher pulls in asyncio, psutil, polars and the store; `llamamon --help` must not.
    from llamamon.cli import setup_logging
    from llamamon.runtime.watcher import WatchOptions, watch

    setup_logging(verbose, quiet)
    live = sys.stdout.isatty() and not once

    def on_tick(snap: Snapshot) -> None:
        if live:
            click.echo(CLEAR + render(snap), nl=False)
        else:
            for event in snap.changes:
                click.echo(event_line(event, snap.time))

    options = WatchOptions(
        config_path=config_path,
        metrics_dir=metrics_dir,
        interval=interval,
        once=once,
        runs=list(run_ids),
        gpu=not no_gpu,
    )
    ctx.exit(watch(options, on_tick))


def _when(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_line(event: Any, now: float) -> str:
    from llamamon.runtime.live_alerts import describe

    return f"{_when(now)} {describe(event)}"


def _fmt(metric: str, value: float) -> str:
    from llamamon import catalog
    from llamamon.units import format_bytes

    unit = catalog.BY_NAME[metric].unit if metric in catalog.BY_NAME else ""
    if unit == "ratio":
        return f"{value * 100:.0f}%"
    if unit == "bytes":
        return format_bytes(value)
    if unit == "celsius":
        return f"{value:.0f}C"
    return f"{value:.4g}"


SHORT = {
    "cpu_usage": "cpu",
    "memory_usage": "mem",
    "gpu_utilization": "util",
    "gpu_memory_usage": "mem",
    "gpu_temperature": "temp",
    "process_cpu_usage": "cpu",
    "process_memory_rss": "rss",
    "loss": "loss",
    "learning_rate": "lr",
}


def render(snap: Snapshot) -> str:
    """The live view: one line per host, GPU and run with its key values, then the alerts firing."""
    from llamamon.samples import labels_from_str

    lines = [f"llamamon watch  {_when(snap.time)}  every {snap.interval:g}s  {snap.metrics_dir}"]
    # (kind, name) -> [(metric, value)]
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for (run, host, metric, labels), value in sorted(snap.latest.items()):
        gpu = dict(labels_from_str(labels)).get("gpu")
        if run:
            key = ("run", run)
        elif gpu is not None:
            key = ("gpu", f"{host} gpu{gpu}")
        else:
            key = ("host", host)
        groups.setdefault(key, []).append((metric, value))
    for (kind, name), values in sorted(groups.items(), key=lambda kv: ("host", "gpu", "run").index(kv[0][0])):
        shown = "  ".join(f"{SHORT.get(m, m)} {_fmt(m, v)}" for m, v in values)
        lines.append(f"{kind.upper():4} {name}  {shown}")
    if snap.runs:
        lines.append(f"following {len(snap.runs)} run(s)")
    lines.append("")
    lines.append(f"FIRING ({len(snap.firing)})" if snap.firing else "no alerts firing")
    from llamamon.runtime.live_alerts import describe

    for event in sorted(snap.firing, key=lambda e: (e.severity != "critical", e.rule)):
        lines.append("  " + describe(event).removeprefix("FIRING "))
    return "\n".join(lines) + "\n"
