"""``llamamon gc``: delete whole partitions (and run metadata) older than the retention."""

from __future__ import annotations

import click

from llamamon.cli.options import metrics_dir_option


@click.command("gc")
@metrics_dir_option
@click.option("--keep", default="30d", show_default=True, help="Keep data newer than this (e.g. 7d, 12h).")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
def gc_command(metrics_dir: str | None, keep: str, dry_run: bool) -> None:
    """Delete data older than --keep (never a run being recorded)."""
    from llamamon.store import open_store
    from llamamon.store.retention import gc
    from llamamon.units import format_bytes, parse_duration

    seconds = parse_duration(keep, path="--keep")
    root = open_store(metrics_dir or ".metrics")
    freed = gc(root, seconds, dry_run=dry_run)
    click.echo(f"{'would free' if dry_run else 'freed'} {format_bytes(freed)} (keeping the last {keep})")
