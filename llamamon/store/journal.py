"""Append-only JSONL journal: what makes a ``kill -9`` lose at most the sample being written.

Standard library only: ``import llamamon`` and ``llamamon.log()`` write through this module and must
never pull in pyarrow or polars.

A writer (one process, one run) appends to a *segment* ``_journal/<run>/<writer>-<seq>.jsonl`` and holds
an exclusive ``flock`` on it for as long as the segment may still change. The lock is the liveness
signal: whoever can take it knows the writer is gone (it works across processes, and across NFS
clients on Linux), so a live writer's journal is never folded. Rows go to the OS with one ``os.write``
per ``append``; no fsync per tick (a process kill loses nothing the kernel already has).

Line 1 of a segment is a header object; every further line is ``[time, group, metric, value, labels,
step]``. A torn last line (killed mid-write) is skipped when read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llamamon.samples import Row, labels_from_str, labels_to_str
from llamamon.store.layout import JOURNAL_SUFFIX, journal_dir, segment_name, writer_id

log = logging.getLogger("llamamon.store")

FORMAT_VERSION = 1
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


def encode_rows(rows: Iterable[Row]) -> bytes:
    # NaN and ±inf are legal values (a diverging loss); Python's json writes and reads them as NaN/Infinity.
    return b"".join(
        (json.dumps([r.time, r.group, r.metric, r.value, labels_to_str(r.labels), r.step]) + "\n").encode()
        for r in rows
    )


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
        _journals.add(self)

    @property
    def writer(self) -> str:
        return self._writer

    @property
    def path(self) -> Path | None:
        """The segment now being appended to (None before the first append after a rotation)."""
        return self._path

    def append(self, rows: Iterable[Row]) -> int:
        """Write rows to the current segment (opening one if needed); returns how many were written."""
        rows = list(rows)
        if not rows:
            return 0
        data = encode_rows(rows)
        with self._lock:
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None
            _write_all(self._fd, data)
        return len(rows)

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
        self._dir.mkdir(parents=True, exist_ok=True)
        while True:
            self._seq += 1
            path = self._dir / f"{segment_name(self._writer, self._seq)}{JOURNAL_SUFFIX}"
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o644)
            except FileExistsError:
                continue
            except FileNotFoundError:
                # Why: a fold in another process removes empty run folders; recreate ours and retry.
                self._dir.mkdir(parents=True, exist_ok=True)
                self._seq -= 1
                continue
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = {"llamamon_journal": FORMAT_VERSION, "run": self.run_id, "host": self.host, "pid": os.getpid()}
            _write_all(fd, (json.dumps(header) + "\n").encode())
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise
        self._fd, self._path = fd, path

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


def read_segment(path: Path) -> tuple[dict[str, object], list[Row]]:
    """Header and rows of a segment; a torn last line and unreadable lines are skipped (with a warning)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline; else a line cut short by a kill
    if torn:
        log.warning("%s: skipped a torn last line (%d bytes), the writer was killed mid-write", path, len(torn))
    if not lines:
        return {}, []
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or "llamamon_journal" not in header:
            raise ValueError("no journal header")
    except ValueError:
        log.warning("%s: not a llamamon journal (bad header); skipped", path)
        return {}, []
    rows: list[Row] = []
    bad = 0
    for line in lines[1:]:
        try:
            t, group, metric, value, labels, step = json.loads(line)
            rows.append(Row(float(t), group, metric, float(value), labels_from_str(labels), step))
        except (ValueError, TypeError):
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    return header, rows


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
