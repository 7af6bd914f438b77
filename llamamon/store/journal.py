"""Append-only JSONL journal: what makes a ``kill -9`` lose at most the sample being written.

Standard library only: ``import llamamon`` and ``llamamon.log()`` write through this module and must
never pull in pyarrow or polars.

A writer (one process, one run) appends to a *segment* ``_journal/<run>/<writer>-<seq>.jsonl`` and holds
an exclusive ``flock`` on it for as long as the segment may still change. The lock is the liveness
signal: whoever can take it knows the writer is gone (it works across processes, and across NFS
clients on Linux), so a live writer's journal is never folded. Rows go to the OS with one ``os.write``
per ``append``; no fsync per tick (a process kill loses nothing the kernel already has).

Line 1 of a segment is a header object; every further line is a row ``[time, group, metric, value, labels,
step]`` or a *column block* object (``encode_columns``): many rows of one labels set as packed arrays,
which is how ``llamamon.log()`` writes its single-metric calls at a fraction of a row line's CPU. A torn
last line (killed mid-write) is skipped when read (``store.segment_reader``).
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import fcntl
import functools
import json
import logging
import math
import os
import sys
import threading
import time
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamamon.catalog import GROUPS
from llamamon.errors import StoreError
from llamamon.samples import Row, labels_to_str
from llamamon.store.layout import JOURNAL_SUFFIX, journal_dir, segment_name, writer_id

log = logging.getLogger("llamamon.store")

FORMAT_VERSION = 2  # 2: column blocks
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class Segment:
    """A closed segment still locked by its owner: convert its rows, then ``discard()`` it."""

    path: Path
    fd: int
    run_id: str
    host: str

    @property
    def stem(self) -> str:
        return self.path.name[: -len(JOURNAL_SUFFIX)]

    def discard(self) -> None:
        """The rows are in Parquet now: remove the segment, then release the lock (in that order)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


_INT64 = 2**63
MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second a date= folder can name


def row_problem(row: Row) -> tuple[str, str] | None:
    """(kind, message) of what Parquet could not hold in this row, or None when it is fine."""
    if row.group not in GROUPS:
        return "group", f"{row.metric}: unknown metric group {row.group!r} (one of {', '.join(GROUPS)})"
    if not (isinstance(row.time, (int, float)) and math.isfinite(row.time) and 0 <= row.time <= MAX_TIME):
        return "time", f"{row.metric}: time {row.time!r} is not a Unix time in seconds"
    if row.step is not None and not (isinstance(row.step, int) and -_INT64 <= row.step < _INT64):
        return "step", f"{row.metric}: step {row.step!r} is not a 64-bit integer"
    if not isinstance(row.value, (int, float)):
        return "value", f"{row.metric}: value {row.value!r} is not a number"
    return None


def check_row(row: Row) -> Row:
    """The row itself, or StoreError saying what Parquet could not hold."""
    problem = row_problem(row)
    if problem is not None:
        raise StoreError(problem[1])
    return row


# (time, group, metric, value, labels as labels_to_str, step): a row already flattened for writing.
Fields = tuple[float, str, str, float, str, "int | None"]

_INF = float("inf")
_float_repr = float.__repr__  # what json.dumps writes for a finite float (also for float subclasses)
_json_strings: dict[str, str] = {}


def _json_str(text: str) -> str:
    found = _json_strings.get(text)
    if found is None:
        found = json.dumps(text)
        if len(_json_strings) < 65536:  # names and label sets repeat; a bound keeps odd callers from growing it
            _json_strings[text] = found
    return found


# A recorder writes the same few label sets every tick: their JSON text is made once.
_labels_text = functools.lru_cache(maxsize=65536)(labels_to_str)


def _json_float(value: float) -> str:
    if -_INF < value < _INF:
        return _float_repr(value)
    return json.dumps(value)  # NaN, Infinity, -Infinity


def encode_fields(records: Iterable[Fields]) -> bytes:
    """Row lines exactly as ``json.dumps`` of ``[time, group, metric, value, labels, step]`` writes them,
    without its cost per row.

    ``time`` and ``value`` must be floats and ``step`` an int or None; names and label strings are
    JSON-encoded once each and reused.
    """
    js, jf = _json_str, _json_float
    lines = []
    last_t, last_text = None, ""
    for t, group, metric, value, labels, step in records:
        if t is not last_t:  # the metrics of one log() call share one time: format it once
            last_t, last_text = t, jf(t)
        lines.append(
            f"[{last_text}, {js(group)}, {js(metric)}, {jf(value)}, {js(labels)}, {'null' if step is None else step}]\n"
        )
    return "".join(lines).encode()


def line_templates(group: str, metric: str, labels: str) -> tuple[str, str]:
    """``%``-templates of one row's line as ``encode_fields`` writes it: (with a step, without one).

    Fill the first with ``% (time, value, step)`` and the second with ``% (time, value)``; ``time`` and
    ``value`` must be finite floats (``%r`` is ``float.__repr__``) and ``step`` an int. Why: formatting a
    line from a template cached per metric costs a third of building it field by field.
    """
    group, metric, labels = (_json_str(text).replace("%", "%%") for text in (group, metric, labels))
    middle = f"{group}, {metric}, %r, {labels}"
    return f"[%r, {middle}, %d]\n", f"[%r, {middle}, null]\n"


# Why little-endian on disk whatever the host: a journal left by a crash may be folded on another machine.
SWAP_BYTES = sys.byteorder != "little"
NO_STEP = -1  # what a column block's writer stores for "no step"; any negative step reads back as none


def _packed(column: array) -> bytes:  # type: ignore[type-arg]
    if SWAP_BYTES:
        column = array(column.typecode, column)
        column.byteswap()
    return binascii.b2a_base64(column, newline=False)


def encode_columns(
    series: Sequence[tuple[str, str]],
    labels: str,
    codes: array | None,  # type: ignore[type-arg]
    times: array,  # type: ignore[type-arg]
    values: array,  # type: ignore[type-arg]
    steps: array | None,  # type: ignore[type-arg]
) -> bytes:
    """One journal line holding ``len(times)`` rows: row i is ``series[codes[i]]`` (group, metric) with
    ``labels`` (a ``labels_to_str`` string), ``times[i]``, ``values[i]`` and ``steps[i]``.

    ``times`` and ``values`` are arrays of doubles (NaN and infinities are kept as they are), ``steps``
    of 64-bit integers (a negative one for none, as ``llamamon.log`` treats a negative step; no array when
    no row has one), ``codes`` of unsigned
    integers (no array when there is one series). Why: packing arrays is done in C, so a row costs tens
    of nanoseconds instead of the microsecond of formatting a row line.
    """
    head = {"rows": len(times), "series": [list(pair) for pair in series], "labels": labels}
    # The packed columns are base64 (nothing to escape): joined as they are, not run through json.dumps.
    parts = [json.dumps(head)[:-1].encode(), b', "time": "', _packed(times), b'", "value": "', _packed(values), b'"']
    if codes is not None:
        parts += [b', "codes": ["', codes.typecode.encode(), b'", "', _packed(codes), b'"]']
    if steps is not None:
        parts += [b', "step": "', _packed(steps), b'"']
    parts.append(b"}\n")
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_journals: weakref.WeakSet[Journal] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for journal in list(_journals):
        journal._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Journal:
    """One process's journal for one run. Thread-safe; a forked child starts its own segments."""

    def __init__(self, metrics_dir: str | os.PathLike[str], run_id: str, host: str) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.run_id = run_id
        self.host = host
        self._dir = journal_dir(self.metrics_dir, run_id)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._writer = writer_id(os.getpid())
        self._seq = 0
        self._size = 0
        self._warned: set[tuple[str, str]] = set()
        _journals.add(self)

    @property
    def writer(self) -> str:
        return self._writer

    @property
    def path(self) -> Path | None:
        """The segment now being appended to (None before the first append after a rotation)."""
        return self._path

    def accept(self, rows: Iterable[Row]) -> list[Row]:
        """The rows Parquet can hold; the others are dropped with one warning per metric and reason.

        Why not raise: one collector's bad value must not cost the whole tick (or every later tick).
        """
        good = []
        for row in rows:
            problem = row_problem(row)
            if problem is None:
                good.append(row)
                continue
            key = (row.metric, problem[0])
            if key not in self._warned:
                self._warned.add(key)
                log.warning("run %s: dropped a row of %s (warned once per metric)", self.run_id, problem[1])
        return good

    def append(self, rows: Iterable[Row]) -> int:
        """Write rows to the current segment (opening one if needed); returns how many were written."""
        return self.append_checked(self.accept(rows))

    def append_checked(self, rows: list[Row]) -> int:
        """``append`` for rows that already went through ``accept``."""
        if not rows:
            return 0
        text = _labels_text
        self._write(
            encode_fields(
                (
                    float(r.time),
                    r.group,
                    r.metric,
                    float(r.value),
                    text(r.labels),
                    None if r.step is None else int(r.step),
                )
                for r in rows
            )
        )
        return len(rows)

    def append_lines(self, data: bytes, count: int) -> int:
        """``append`` for ``count`` rows already encoded (``line_templates``, ``encode_fields``); returns ``count``."""
        if data:
            self._write(data)
        return count

    @property
    def size(self) -> int:
        """Bytes of rows in the current segment (0 before the first append after a rotation)."""
        return self._size

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None
            _write_all(self._fd, data)
            self._size += len(data)

    def rotate(self) -> Segment | None:
        """Close the current segment for further appends and hand it over, still locked, to be converted."""
        with self._lock:
            if self._fd is None or self._path is None:
                return None
            segment = Segment(self._path, self._fd, self.run_id, self.host)
            self._fd = None
            self._path = None
            return segment

    def close(self) -> None:
        """Stop writing; an unconverted segment stays on disk, unlocked, for the next fold."""
        segment = self.rotate()
        if segment is not None:
            segment.release()
        _journals.discard(self)

    def _open_segment(self) -> None:
        # Why a hidden name first: between creating a file and locking it, a fold in another process
        # could take the unlocked, empty segment for an orphan and remove it. The segment only gets
        # its visible name once it is locked and has its header; a rename keeps the inode and the lock.
        self._seq += 1
        name = f"{segment_name(self._writer, self._seq)}{JOURNAL_SUFFIX}"
        path, tmp = self._dir / name, self._dir / f".{name}.tmp"
        for _attempt in range(3):
            try:
                fd = os.open(tmp, _OPEN_FLAGS, 0o644)
                break
            except FileNotFoundError:
                # A fold in another process removes empty run folders; recreate ours and retry.
                self._dir.mkdir(parents=True, exist_ok=True)
        else:
            raise StoreError(f"cannot create a journal segment in {self._dir}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = {"llamamon_journal": FORMAT_VERSION, "run": self.run_id, "host": self.host, "pid": os.getpid()}
            _write_all(fd, (json.dumps(header) + "\n").encode())
            os.rename(tmp, path)  # the name is ours alone: pid + random token + our own sequence
        except BaseException:
            os.close(fd)
            for leftover in (tmp, path):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            raise
        self._fd, self._path = fd, path
        self._size = 0

    def _forget_after_fork(self) -> None:
        # Why: the child shares the parent's open file description (and so its lock); it must neither write
        # into the parent's segment nor unlock it. Closing our copy of the fd leaves the parent's lock intact.
        self._lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._path = None
        self._writer = writer_id(os.getpid())
        self._seq = 0


def claim(path: Path) -> Segment | None:
    """Lock a segment whose writer is gone; None while a live writer holds it (or it vanished)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    if not path.exists():  # folded and removed by someone else between our open and our lock
        os.close(fd)
        return None
    run_id = path.parent.name
    return Segment(path, fd, run_id, "")


def segment_paths(metrics_dir: Path, run_id: str | None = None) -> list[Path]:
    """Every journal segment on disk (of one run, or all), oldest sequence first."""
    root = journal_dir(Path(metrics_dir))
    folders = [root / run_id] if run_id is not None else sorted(p for p in _listdir(root) if p.is_dir())
    return sorted(p for folder in folders for p in _listdir(folder) if p.name.endswith(JOURNAL_SUFFIX))


def is_locked(path: Path) -> bool:
    """True while a live writer holds the segment (the fold's and compaction's liveness test)."""
    segment = claim(path)
    if segment is None:
        return path.exists()
    segment.release()
    return False


def live_runs(metrics_dir: Path) -> set[str]:
    """Runs with a writer alive right now (one of their journal segments is locked)."""
    return {p.parent.name for p in segment_paths(metrics_dir) if is_locked(p)}


def remove_stale_temporaries(metrics_dir: Path, min_age: float = 60.0) -> None:
    """Remove segments a writer was killed while creating (hidden, at most a header, no rows).

    A live writer renames its temporary within microseconds; ``min_age`` keeps us from racing one.
    """
    root = journal_dir(Path(metrics_dir))
    cutoff = time.time() - min_age
    for folder in (p for p in _listdir(root) if p.is_dir()):
        for tmp in (p for p in _listdir(folder) if p.name.startswith(".") and p.name.endswith(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()


def orphans(metrics_dir: Path) -> Iterator[Segment]:
    """Claimed segments whose writers are gone; the caller converts and discards (or releases) each."""
    for path in segment_paths(metrics_dir):
        segment = claim(path)
        if segment is not None:
            yield segment


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
