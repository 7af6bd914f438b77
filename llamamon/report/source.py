"""The report's door into the store: which runs, and a lazy frame of their samples (store.reader, store.runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.errors import StoreError
from llamamon.samples import RunInfo

if TYPE_CHECKING:
    import polars as pl


def resolve_runs(
    metrics_dir: Path,
    ids: tuple[str, ...] = (),
    latest: bool = False,
    since: float | None = None,
    group: str | None = None,
) -> list[RunInfo]:
    """Runs chosen on the command line (ids, names or id prefixes; --latest; --since; --group's runs); the
    latest by default."""
    from llamamon.store import open_store
    from llamamon.store import runs as store_runs

    if not metrics_dir.is_dir():
        raise StoreError(f"no metrics folder at {metrics_dir} (record a run with `llamamon record -- CMD`)")
    # Opening the store folds journals that a killed recorder left behind, so their rows are reported too.
    open_store(metrics_dir)
    if not store_runs.list_runs(metrics_dir):
        raise StoreError(f"no runs recorded in {metrics_dir} (record one with `llamamon record -- CMD`)")
    nothing_chosen = not ids and not latest and since is None and group is None
    chosen = store_runs.resolve_runs(metrics_dir, ids, latest=latest or nothing_chosen, since=since, group=group)
    if not chosen:
        raise StoreError(f"no run in {metrics_dir} was active in the last {since:.0f}s")
    return chosen


def skipped_files(metrics_dir: Path, runs: list[str] | None = None, since: float | None = None) -> list[str]:
    """Data files of these runs the store reader skips as unreadable (relative paths, named in the report)."""
    from llamamon.store.layout import is_data_file, iter_partitions, utc_date
    from llamamon.store.reader import check_file

    skipped = []
    partitions = iter_partitions(
        metrics_dir,
        runs=set(runs) if runs is not None else None,
        min_date=utc_date(since) if since is not None else None,
    )
    for _group, _date, _run, folder in partitions:
        for path in sorted(folder.iterdir()):
            if is_data_file(path.name) and check_file(path) is None:
                skipped.append(str(path.relative_to(metrics_dir)))
    return skipped


def scan_samples(
    metrics_dir: Path, runs: list[str] | None = None, since: float | None = None
) -> tuple[pl.LazyFrame | None, list[str]]:
    """Lazy frame of the chosen runs' samples (from ``since`` on; None when there are none), and the files
    skipped as unreadable."""
    from llamamon.store.reader import data_files, scan

    skipped = skipped_files(metrics_dir, runs, since)
    if not data_files(metrics_dir, runs=runs, since=since):
        return None, skipped
    return scan(metrics_dir, runs=runs, since=since), skipped
