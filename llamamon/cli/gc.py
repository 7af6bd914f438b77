"""``llamamon gc``: delete whole partitions (and run metadata) older than the retention."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from llamamon.cli.options import config_option, metrics_dir_option
from llamamon.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from llamamon.config import Config


@click.command("gc")
@config_option
@metrics_dir_option
@click.option(
    "--keep",
    default=None,
    help="Keep data newer than this, e.g. 30d or 12h (default: monitoring.retention).",
)
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
def gc_command(config_path: str | None, metrics_dir: str | None, keep: str | None, dry_run: bool) -> None:
    """Delete data older than --keep (never a run being recorded).

    Also removes the Prometheus .prom files of runs that ended (past monitoring.textfile_grace) and of
    recorders that were killed, whatever --keep says: their values are frozen and no longer live.
    """
    from llamamon.config import load_config
    from llamamon.store.location import open_location
    from llamamon.store.retention import gc, gc_listed
    from llamamon.units import format_bytes, format_duration, parse_duration

    cfg = load_config(config_path)
    location = open_location(metrics_dir or cfg.monitoring.metrics_path)
    _prune_textfiles(cfg, location.root, dry_run)
    if keep is not None:
        seconds = parse_duration(keep, path="--keep")
    elif cfg.monitoring.retention is not None:
        seconds = cfg.monitoring.retention
    else:
        # Why: monitoring.yaml's default is to keep everything; deleting data needs an explicit horizon.
        raise ConfigError("no retention set: pass --keep (e.g. --keep 30d) or set monitoring.retention", path="--keep")
    if location.bucket is None:
        freed = gc(location.root, seconds, dry_run=dry_run)
    else:
        # Only the runs' metadata is pulled: which objects go is decided from the bucket's listing, so gc
        # downloads no data; what it removes from the mirror (run metadata) leaves the bucket on the way out.
        location.pull(runs=set())
        with location.tracking():
            freed, expired = gc_listed(location.root, location.data_listing(), seconds, dry_run=dry_run)
            if not dry_run:
                location.delete(expired)
    click.echo(
        f"{'would free' if dry_run else 'freed'} {format_bytes(freed)} (keeping the last {format_duration(seconds)})"
    )


def _prune_textfiles(cfg: Config, metrics_dir: Path, dry_run: bool) -> None:
    from llamamon.prometheus.textfile import prune, stale_textfiles
    from llamamon.store.layout import textfile_folder

    folder = textfile_folder(metrics_dir, cfg.monitoring.textfile_dir)
    grace = cfg.monitoring.textfile_grace
    stale = stale_textfiles(folder, grace) if dry_run else prune(folder, grace)
    for path in stale:
        click.echo(f"{'would remove' if dry_run else 'removed'} {path} (a finished or killed run's .prom file)")
