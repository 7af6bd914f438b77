"""StoreWriter: rows go to the journal at once and into Parquet at every flush; orphaned journals are folded.

A flush turns one journal segment into at most one Parquet file per (group, date) partition, each
named after the segment (``<writer>-<seq>.parquet``). That name is what makes folding idempotent and
crash-safe: whether the writer itself flushed, or died and the next llamamon command folds its
segment, the same rows land under the same name, a file that already exists is left as it is, and the
segment is removed only once every file exists. Killed anywhere in between, the next fold finishes the
job without losing or duplicating a row.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from pathlib import Path

from llamamon.errors import StoreError
from llamamon.samples import Row, labels_to_str
from llamamon.store import flush_file, journal
from llamamon.store.flush_file import Entry
from llamamon.store.layout import data_file, journal_dir, utc_date
from llamamon.store.segment_reader import ColumnBlock, read_segment_blocks

log = logging.getLogger("llamamon.store")


def write_partitions(
    metrics_dir: Path,
    run_id: str,
    host: str,
    stem: str,
    rows: Sequence[Row],
    blocks: Sequence[ColumnBlock] = (),
) -> list[Path]:
    """Write ``rows`` (and the journal's column ``blocks``) as ``<stem>.parquet`` in each (group, date)
    partition they touch, sorted by (metric, labels, time); skip files already there."""
    by_partition: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    dates: dict[int, str] = {}  # UTC day number -> date= value: one strftime per day, not per row
    for row in rows:
        day = int(row.time // 86_400)
        date = dates.get(day)
        if date is None:
            date = dates[day] = utc_date(row.time)
        entry = Entry(row.metric, labels_to_str(row.labels), round(row.time * 1_000_000), row.value, row.step)
        by_partition[(row.group, date)].append(entry)
    for block in blocks:
        _add_block(by_partition, dates, block)
    written = []
    for group, date in sorted(by_partition):
        path = data_file(metrics_dir, group, date, run_id, stem)
        if path.exists():
            continue  # written by an earlier flush or fold of this very segment
        entries = by_partition[(group, date)]
        entries.sort(key=_SORT_KEY)  # stable: rows of equal keys keep the journal's order
        flush_file.write(path, entries, host)
        written.append(path)
    return written


_SORT_KEY = itemgetter(0, 1, 2)  # Entry's (metric, labels, micros): the store's sort order


def _add_block(by_partition: dict[tuple[str, str], list[Entry]], dates: dict[int, str], block: ColumnBlock) -> None:
    """A column block's rows as entries, straight from its packed arrays (no Row, no labels parsing)."""
    series, labels = block.series, block.labels
    steps = block.steps if block.steps is not None else array("q", [-1]) * len(block.times)
    for code, seconds, value, step in zip(block.codes, block.times, block.values, steps, strict=True):
        micros = round(seconds * 1_000_000)
        day = micros // 86_400_000_000
        date = dates.get(day)
        if date is None:
            date = dates[day] = utc_date(day * 86_400.0)
        group, metric = series[code]
        by_partition[(group, date)].append(Entry(metric, labels, micros, value, None if step < 0 else step))


def fold_segment(metrics_dir: Path, segment: journal.Segment) -> int:
    """Move one claimed, writer-less segment into Parquet and remove it; returns the rows folded."""
    try:
        header, rows, blocks = read_segment_blocks(segment.path)
        if rows or blocks:
            host = str(header.get("host") or "")
            run_id = str(header.get("run") or segment.run_id)
            write_partitions(metrics_dir, run_id, host, segment.stem, rows, blocks)
        segment.discard()
        return len(rows) + sum(len(block.times) for block in blocks)
    except BaseException:
        segment.release()
        raise


def fold_orphans(metrics_dir: str | os.PathLike[str]) -> int:
    """Fold every journal segment whose writer is gone (never a live one); returns the rows folded."""
    root = Path(metrics_dir)
    total = 0
    for segment in journal.orphans(root):
        try:
            count = fold_segment(root, segment)
        except StoreError as exc:
            log.warning("%s: could not fold journal: %s", segment.path, exc)
            continue
        total += count
        log.debug("folded %d row(s) from %s", count, segment.path)
    journal.remove_stale_temporaries(root)
    _remove_empty_journal_dirs(root)
    return total


def _remove_empty_journal_dirs(root: Path) -> None:
    for folder in journal_dir(root).glob("*"):
        # Not empty (a live writer), or already gone: leave it.
        with contextlib.suppress(OSError):
            folder.rmdir()


class StoreWriter:
    """Thread-safe writer of one run's rows: journal first (crash safety), Parquet every ``flush_interval`` s.

    ``append`` writes the rows to the journal before returning, so a ``kill -9`` loses at most the
    rows of the call it interrupts. ``flush`` runs on the appending thread when due, and at ``close``
    (also called at interpreter exit).
    """

    def __init__(
        self,
        metrics_dir: str | os.PathLike[str],
        run_id: str,
        host: str,
        flush_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.run_id = run_id
        self.host = host
        self.flush_interval = flush_interval
        self._clock = clock
        self._journal = journal.Journal(self.metrics_dir, run_id, host)
        self._buffer: list[Row] = []
        self._lock = threading.Lock()  # guards the buffer and the segment swap
        self._flush_lock = threading.Lock()  # one Parquet conversion at a time
        self._last_flush = clock()
        self._closed = False
        self.rows_written = 0
        atexit.register(self.close)

    def append(self, rows: Iterable[Row]) -> int:
        rows = self._journal.accept(rows)  # drop here what a flush could never write
        if not rows:
            return 0
        with self._lock:
            if self._closed:
                raise StoreError(f"writer for run {self.run_id} is closed")
            self._journal.append_checked(rows)
            self._buffer.extend(rows)
            due = self._clock() - self._last_flush >= self.flush_interval
        if due:
            self.flush()
        return len(rows)

    def flush(self) -> int:
        """Write buffered rows as Parquet and drop their journal segment; returns the rows written."""
        with self._flush_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
                segment = self._journal.rotate()
                self._last_flush = self._clock()
            if segment is None:
                return 0
            try:
                write_partitions(self.metrics_dir, self.run_id, self.host, segment.stem, rows)
            except BaseException:
                # The rows are safe in the segment; unlocked, the next fold (or open_store) converts it.
                segment.release()
                raise
            segment.discard()
            self.rows_written += len(rows)
            return len(rows)

    def close(self) -> None:
        """Flush and stop."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
            self._journal.close()
            atexit.unregister(self.close)
            with contextlib.suppress(OSError):  # other writers of this run may still use it (or a segment)
                journal_dir(self.metrics_dir, self.run_id).rmdir()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
