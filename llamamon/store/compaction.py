"""Compaction: rewrite each finished partition's many flush files into one sorted file, safely at any moment.

Protocol (one compaction or gc at a time, under ``_compact/.lock``):

1. write an *intent* ``_compact/<token>.json`` naming the partition, the new file and the files it replaces;
2. write ``compact-<token>.parquet`` atomically; its footer also lists the files it replaces;
3. remove the replaced files; 4. remove the intent.

llamamon's reader leaves out every file named in a valid compacted file's footer, so it never sees a
row twice or misses one, whether compaction is running or was killed at any step. Plain globbing
readers (``polars.scan_parquet("**/*.parquet")``, DuckDB) see the replaced files alongside the new one
only between steps 2 and 3 (or, after a kill there, until the next llamamon command opens the store:
``compaction_intents.recover`` finishes step 3 from the intent without needing pyarrow). A kill before
step 2 leaves only the untouched sources and, at worst, a hidden temporary that ``recover`` removes.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from llamamon.errors import StoreError
from llamamon.store import journal
from llamamon.store.compaction_intents import compaction_lock, remove_files, resolve_intents, write_intent
from llamamon.store.layout import COMPACT_PREFIX, DATA_SUFFIX, is_data_file, iter_partitions

log = logging.getLogger("llamamon.store")


@dataclass
class CompactResult:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped_live: int = 0
    skipped_recent: int = 0


def _ended_runs(root: Path) -> set[str]:
    from llamamon.store.runs import list_runs

    return {r.id for r in list_runs(root) if r.end is not None}


def compact(
    metrics_dir: str | os.PathLike[str],
    older_than: float = 3600.0,
    now: float | None = None,
    runs: Collection[str] | None = None,
) -> CompactResult:
    """Rewrite every finished partition (of ``runs`` only, when given) into one file sorted by (metric,
    labels, time).

    A partition is finished when no live writer holds a journal of its run and either the run has
    ended (runs/<id>.json) or its newest file is older than ``older_than`` seconds. Partitions of a run
    still being written are left alone. Running it twice changes nothing the second time.
    """
    from llamamon.store import open_store
    from llamamon.store.reader import partition_files

    root = open_store(metrics_dir)
    result = CompactResult()
    now = time.time() if now is None else now
    with compaction_lock(root) as held:
        if not held:
            raise StoreError(f"another compaction or gc is running on {root}; try again when it is done")
        resolve_intents(root)
        live = journal.live_runs(root)
        ended = _ended_runs(root)
        for _group, _date, run, folder in iter_partitions(root, runs=set(runs) if runs is not None else None):
            if run in live:
                result.skipped_live += 1
                continue
            for tmp in folder.glob(".*.tmp"):  # left by a writer killed mid-file; no writer is alive now
                tmp.unlink(missing_ok=True)
            files = partition_files(folder)
            if not files or (len(files) == 1 and files[0].name.startswith(COMPACT_PREFIX)):
                continue
            if run not in ended and max(f.stat().st_mtime for f in files) > now - older_than:
                result.skipped_recent += 1
                continue
            _compact_partition(root, folder, files, result)
    return result


def compact_ended_run(metrics_dir: Path, run_id: str, max_files: int, max_bytes: int) -> CompactResult | None:
    """What ``record`` does as its run ends: compact the run's partitions, when one holds more than one
    file and all together hold at most ``max_files`` files and ``max_bytes`` bytes (the cost is mostly per
    file). None when there is nothing to merge, when it is not cheap
    (``llamamon compact`` does it later), or when another compaction holds the store. Files are only
    listed here: polars and pyarrow are imported when there is work to do.
    """
    partitions = [
        [entry for entry in os.scandir(folder) if entry.is_file() and is_data_file(entry.name)]
        for _group, _date, _run, folder in iter_partitions(metrics_dir, runs={run_id})
    ]
    if all(len(files) <= 1 for files in partitions):
        return None
    count = sum(len(files) for files in partitions)
    size = sum(entry.stat().st_size for files in partitions for entry in files)
    if count > max_files or size > max_bytes:
        log.info("run %s: its %d files (%.1f MB) are left for `llamamon compact`", run_id, count, size / 1e6)
        return None
    try:
        return compact(metrics_dir, older_than=0.0, runs={run_id})
    except StoreError as exc:  # another compaction or gc holds the store: it, or a later one, does this run
        log.debug("run %s not compacted at exit: %s", run_id, exc)
        return None


def _compact_partition(root: Path, folder: Path, files: list[Path], result: CompactResult) -> None:
    import pyarrow as pa

    from llamamon.store import parquet

    try:
        tables = [parquet.read_table(f) for f in files]
    except parquet.CorruptFile as exc:
        log.warning("%s; partition %s not compacted", exc, folder)
        return
    table = parquet.sort_table(pa.concat_tables(tables).replace_schema_metadata(None))
    token = secrets.token_hex(4)
    new_name = f"{COMPACT_PREFIX}{token}{DATA_SUFFIX}"
    names = [f.name for f in files]
    intent = write_intent(root, token, folder, new_name, names)
    before = sum(f.stat().st_size for f in files)
    new_path = parquet.write_table(folder / new_name, table, replaces=names)
    remove_files(folder, names)
    intent.unlink(missing_ok=True)
    result.partitions += 1
    result.files_before += len(files)
    result.files_after += 1
    result.bytes_before += before
    result.bytes_after += new_path.stat().st_size
    log.debug("compacted %d file(s) in %s into %s", len(files), folder, new_name)
