"""Retention (``gc``) and size accounting (``store_stats``) of the metrics folder.

gc deletes whole partitions (a run's rows of one group and one UTC day) once the day is entirely
older than the retention, and a run's metadata once none of its partitions is left; it never touches
a run still being recorded. Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from llamamon.errors import StoreError
from llamamon.store import journal
from llamamon.store.compaction_intents import compaction_lock
from llamamon.store.layout import (
    COMPACT_PREFIX,
    is_data_file,
    iter_partitions,
    job_fields_file,
    parse_partition,
    run_file,
    runs_dir,
)

log = logging.getLogger("llamamon.store")


@dataclass
class StoreStats:
    total_bytes: int = 0
    files: int = 0
    uncompacted_files: int = 0
    run_bytes: dict[str, int] = field(default_factory=dict)
    journal_bytes: int = 0


def _folder_size(folder: Path) -> tuple[int, list[str]]:
    total = 0
    names = []
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
            names.append(entry.name)
    return total, names


def store_stats(metrics_dir: str | os.PathLike[str]) -> StoreStats:
    """Sizes for ``runs`` and ``doctor``: everything on disk, data files, flush files not yet compacted."""
    root = Path(metrics_dir)
    stats = StoreStats()
    for _group, _date, run, folder in iter_partitions(root):
        size, names = _folder_size(folder)
        data = [n for n in names if is_data_file(n)]
        stats.files += len(data)
        stats.uncompacted_files += sum(not n.startswith(COMPACT_PREFIX) for n in data)
        stats.run_bytes[run] = stats.run_bytes.get(run, 0) + size
        stats.total_bytes += size
    # A run's size is all of it: its partitions, the journal not folded yet, its metadata file.
    for path in journal.segment_paths(root):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        stats.journal_bytes += size
        stats.run_bytes[path.parent.name] = stats.run_bytes.get(path.parent.name, 0) + size
    stats.total_bytes += stats.journal_bytes
    for path in runs_dir(root).glob("*.json"):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        stats.total_bytes += size
        stats.run_bytes[path.stem] = stats.run_bytes.get(path.stem, 0) + size
    return stats


def _day_end(date: str) -> float | None:
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return (day + timedelta(days=1)).timestamp()


def _recording(root: Path) -> set[str]:
    """Runs being recorded: a journal writer holds a lock, or metadata without an end and a live pid here."""
    from llamamon.store.runs import list_runs

    live = journal.live_runs(root)
    here = os.uname().nodename
    for run in list_runs(root):
        if run.end is None and run.pid and run.host in {here, here.split(".")[0]} and _pid_alive(run.pid):
            live.add(run.id)
    return live


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gc(
    metrics_dir: str | os.PathLike[str], keep_seconds: float, dry_run: bool = False, now: float | None = None
) -> int:
    """Delete partitions whose whole day is older than ``keep_seconds`` (and then-empty runs); returns bytes freed.

    With ``dry_run`` nothing is deleted and the bytes that would be freed are returned. Each deletion is
    logged at info level.
    """
    root = Path(metrics_dir)
    if not root.is_dir():
        return 0
    with _gc_pass(root, keep_seconds, now) as (cutoff, recording):
        return _gc(root, cutoff, recording, dry_run)


@contextlib.contextmanager
def _gc_pass(root: Path, keep_seconds: float, now: float | None) -> Iterator[tuple[float, set[str]]]:
    """Under the compaction lock (one gc or compaction at a time): the cutoff and the runs being recorded."""
    with compaction_lock(root) as held:
        if not held:
            raise StoreError(f"another compaction or gc is running on {root}; try again when it is done")
        yield (time.time() if now is None else now) - keep_seconds, _recording(root)


def _verb(dry_run: bool) -> str:
    return "would delete" if dry_run else "deleted"


def _gc(root: Path, cutoff: float, recording: set[str], dry_run: bool) -> int:
    freed = 0
    remaining: set[str] = set()
    verb = _verb(dry_run)
    for _group, date, run, folder in iter_partitions(root):
        if not _expired(date, run, cutoff, recording):
            remaining.add(run)
            continue
        size, _names = _folder_size(folder)
        freed += size
        log.info("%s %s (%d bytes)", verb, folder.relative_to(root), size)
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
            _prune_empty(folder.parent, stop=root)
    freed += _gc_run_metadata(root, cutoff, recording | remaining, dry_run, verb)
    return freed


def _expired(date: str, run: str, cutoff: float, recording: set[str]) -> bool:
    """A partition goes once its whole UTC day is older than the cutoff, unless its run is being recorded."""
    end = _day_end(date)
    return run not in recording and end is not None and end <= cutoff


def gc_listed(
    metrics_dir: str | os.PathLike[str],
    sizes: Mapping[str, int],
    keep_seconds: float,
    dry_run: bool = False,
    now: float | None = None,
) -> tuple[int, list[str]]:
    """gc of a bucket from its listing (data object key -> size) and the run metadata in its mirror
    ``metrics_dir``: (bytes freed, keys of the expired partitions' objects, for the caller to delete).

    Why from the listing: deciding needs only each object's partition, so a machine that runs gc on a
    bucket downloads no data. Run metadata left without a partition goes from the mirror here, as ``gc``.
    """
    root = Path(metrics_dir)
    with _gc_pass(root, keep_seconds, now) as (cutoff, recording):
        verb = _verb(dry_run)
        expired: dict[str, list[str]] = {}
        remaining: set[str] = set()
        freed = 0
        for key, size in sorted(sizes.items()):
            where = parse_partition(Path(key))
            if where is None:
                continue
            group, date, run = where
            if not _expired(date, run, cutoff, recording):
                remaining.add(run)
                continue
            expired.setdefault(f"group={group}/date={date}/run={run}", []).append(key)
            freed += size
        for folder, keys in expired.items():
            log.info("%s %s (%d bytes)", verb, folder, sum(sizes[k] for k in keys))
        freed += _gc_run_metadata(root, cutoff, recording | remaining, dry_run, verb)
        return freed, [key for keys in expired.values() for key in keys]


def _gc_run_metadata(root: Path, cutoff: float, keep: set[str], dry_run: bool, verb: str) -> int:
    from llamamon.store.runs import list_runs

    freed = 0
    for run in list_runs(root):
        last = run.end if run.end is not None else run.start
        if run.id in keep or last > cutoff:
            continue
        path = run_file(root, run.id)
        size = path.stat().st_size
        freed += size
        log.info("%s run %s metadata", verb, run.id)
        if not dry_run:
            path.unlink(missing_ok=True)
            job_fields_file(root, run.id).unlink(missing_ok=True)
    return freed


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
