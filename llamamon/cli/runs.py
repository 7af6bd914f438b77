"""``llamamon runs``: the recorded runs, newest last (a table on a terminal, JSON with --json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from llamamon.cli.options import config_option, json_option, metrics_dir_option, parse_tags, verbosity_options

if TYPE_CHECKING:
    from llamamon.samples import RunInfo


@click.command("runs")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the N most recent runs.")
@click.option(
    "--tag", "tag_pairs", multiple=True, metavar="K=V", help="Only runs with this tag (repeatable: all of them)."
)
@click.option("--name", "name_glob", metavar="PATTERN", default=None, help="Only runs whose name matches this glob.")
@click.option("--status", type=click.Choice(["running", "finished", "unfinished", "failed"]), default=None)
@click.option("--group", "group", metavar="NAME", default=None, help="Only this run group's runs, one row each.")
@json_option
@config_option
@metrics_dir_option
@verbosity_options
def runs_command(
    limit: int | None,
    tag_pairs: tuple[str, ...],
    name_glob: str | None,
    status: str | None,
    group: str | None,
    as_json: bool,
    config_path: str | None,
    metrics_dir: str | None,
    quiet: bool,
    verbose: int,
) -> None:
    """List recorded runs.

    Id, name, start, duration, exit status, host, samples, size on disk, tags and command of each run, oldest
    first (``--status``: running, finished, unfinished = ended without an end, killed; failed = non-zero exit).
    The runs of a run group (a multi-node job, see ``record --group``) are one row: its hosts, ranks, start,
    duration and status (running while any runs, failed if any failed); ``--group NAME`` lists them.
    """
    # Deferred: the store and config modules are only needed once the command runs.
    import json
    import shlex
    import sys
    from datetime import datetime

    from llamamon.cli import setup_logging
    from llamamon.config import load_config
    from llamamon.store.journal import live_runs
    from llamamon.store.location import open_location
    from llamamon.store.retention import store_stats
    from llamamon.store.runs import group_runs, list_runs, run_status, select_runs
    from llamamon.units import format_bytes, format_duration

    setup_logging(verbose, quiet)
    location = open_location(metrics_dir or load_config(config_path).monitoring.metrics_path)
    location.pull(set())  # a bucket's run metadata; the data of runs that have not ended, below
    folder = location.root
    tags = parse_tags(tag_pairs)
    runs = list_runs(folder)
    if group is not None:
        runs = group_runs(runs, group, location.shown)
    live = live_runs(folder) if any(run.end is None for run in runs) else set()
    runs = select_runs(runs, tags=tags, name=name_glob, status=status, live=live)
    if limit is not None:
        runs = runs[-limit:]
    sizes = store_stats(folder).run_bytes if runs else {}
    samples = {run.id: run.samples for run in runs}
    # A recording that has not ended (killed, or still going) wrote no count yet: count its ticks on disk.
    # Only then is polars imported and anything read, so listing finished runs stays quick.
    unended = [run.id for run in runs if run.end is None and run.source == "record"]
    if unended:
        from llamamon.store.reader import stored_ticks

        location.pull(set(unended))
        samples.update((run_id, stored_ticks(folder, run_id)) for run_id in unended)

    def status_text(run: RunInfo) -> str:
        if run.end is not None:
            return "exit ?" if run.exit_code is None else f"exit {run.exit_code}"
        return run_status(run, live)  # running or unfinished

    if as_json:
        out = []
        for run in runs:
            out.append(
                {
                    "id": run.id,
                    "name": run.name,
                    "start": run.start,
                    "end": run.end,
                    "duration": run.duration,
                    "status": status_text(run),
                    "state": run_status(run, live),
                    "exit_code": run.exit_code,
                    "signal": run.signal,
                    "host": run.host,
                    "command": run.command,
                    "samples": samples[run.id],
                    "size_bytes": sizes.get(run.id, 0),
                    "tags": run.tags,
                    "config": run.config,
                    "source": run.source,
                    "run_group": run.run_group,
                    "node_rank": run.node_rank,
                    "rank": run.rank,
                }
            )
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    if not runs:
        click.echo(f"no runs in {folder}", err=True)
        return
    header = ("ID", "NAME", "START", "DURATION", "STATUS", "HOST", "SAMPLES", "SIZE", "TAGS", "COMMAND")

    def when(t: float) -> str:
        return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")

    rows = []
    for entry in group_rows(runs) if group is None else runs:
        if isinstance(entry, list):
            rows.append(group_row(entry, live, samples, sizes, when))
            continue
        run = entry
        rows.append(
            (
                run.id,
                run.name or "-",
                when(run.start),
                format_duration(run.duration) if run.duration is not None else "-",
                status_text(run),
                run.host,
                str(samples[run.id]),
                format_bytes(sizes.get(run.id, 0)),
                ",".join(f"{k}={v}" for k, v in sorted(run.tags.items())) or "-",
                shlex.join(run.command) if run.command else "-",
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    max_command = None
    if sys.stdout.isatty():
        import shutil

        max_command = max(20, shutil.get_terminal_size().columns - sum(widths) - 2 * len(widths))
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        command = row[-1]
        if max_command is not None and len(command) > max_command:
            command = command[: max_command - 1] + "…"
        click.echo("  ".join([*cells, command]).rstrip())
    if group is None and any(run.run_group for run in runs):
        click.echo("a run group (a multi-node job) is one row: `llamamon runs --group NAME` lists its runs", err=True)


def group_rows(runs: list[RunInfo]) -> list[RunInfo | list[RunInfo]]:
    """The runs in order, each run group's runs gathered into one list where its first run stood."""
    out: list[RunInfo | list[RunInfo]] = []
    groups: dict[str, list[RunInfo]] = {}
    for run in runs:
        if run.run_group is None:
            out.append(run)
        elif run.run_group in groups:
            groups[run.run_group].append(run)
        else:
            groups[run.run_group] = [run]
            out.append(groups[run.run_group])
    return out


def group_row(
    runs: list[RunInfo],
    live: set[str],
    samples: dict[str, int],
    sizes: dict[str, int],
    when: Callable[[float], str],
) -> tuple[str, ...]:
    """One table row for a run group: its hosts (count and names), ranks, span and status."""
    import shlex

    from llamamon.store.runs import group_status
    from llamamon.units import format_bytes, format_duration

    ordered = sorted(runs, key=lambda r: (r.node_rank is None, r.node_rank or 0, r.host))
    hosts = list(dict.fromkeys(r.host for r in ordered))
    start = min(r.start for r in runs)
    ends = [r.end for r in runs if r.end is not None]
    duration = format_duration(max(ends) - start) if len(ends) == len(runs) else "-"
    what = f"{len(runs)} runs"
    for label, values in (("nodes", [r.node_rank for r in runs]), ("ranks", [r.rank for r in runs])):
        known = sorted({v for v in values if v is not None})
        if known:
            what += f", {label} {_span_text(known)}"
    commands = {shlex.join(r.command) for r in runs if r.command}
    command = commands.pop() if len(commands) == 1 else (f"{len(commands)} commands" if commands else "-")
    common = set(runs[0].tags.items()).intersection(*(r.tags.items() for r in runs[1:]))
    return (
        f"group {runs[0].run_group}",
        what,
        when(start),
        duration,
        group_status(runs, live),
        f"{len(hosts)} host{'s' if len(hosts) > 1 else ''}: " + _names(hosts),
        str(sum(samples[r.id] for r in runs)),
        format_bytes(sum(sizes.get(r.id, 0) for r in runs)),
        ",".join(f"{k}={v}" for k, v in sorted(common)) or "-",
        command,
    )


def _span_text(values: list[int]) -> str:
    """0-7 for a contiguous range, else the first few."""
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values[:6])) + (",…" if len(values) > 6 else "")


def _names(hosts: list[str], shown: int = 4) -> str:
    return ",".join(hosts[:shown]) + (f",… (+{len(hosts) - shown})" if len(hosts) > shown else "")
