"""Compaction's lock and intents: how a compaction a kill interrupted is finished or rolled back.

Why apart from ``store.compaction``: every command that opens the store runs ``recover`` (standard library
only, no pyarrow), and compaction itself opens the store first; in one module they would import each other.
The protocol is described in ``store.compaction``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from llamamon.fsutil import atomic_write
from llamamon.store.layout import compaction_dir

log = logging.getLogger("llamamon.store")


@contextlib.contextmanager
def compaction_lock(metrics_dir: Path) -> Iterator[bool]:
    """Hold the store's compaction lock; yields False (without waiting) when another process has it."""
    folder = compaction_dir(metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def write_intent(root: Path, token: str, partition: Path, new_file: str, replaces: list[str]) -> Path:
    """Step 1: say durably which files ``new_file`` will replace in ``partition``, before it is written."""
    intent = compaction_dir(root) / f"{token}.json"
    payload = {"partition": str(partition.relative_to(root)), "file": new_file, "replaces": replaces}
    atomic_write(intent, json.dumps(payload).encode())
    return intent


def recover(metrics_dir: str | os.PathLike[str]) -> int:
    """Finish or roll back compactions a kill interrupted; returns the intents resolved."""
    root = Path(metrics_dir)
    folder = compaction_dir(root)
    if not folder.is_dir() or not any(p.suffix == ".json" for p in folder.iterdir()):
        return 0
    with compaction_lock(root) as held:
        if not held:
            return 0  # a compaction is running: its intents are not stale
        return resolve_intents(root)


def resolve_intents(root: Path) -> int:
    """Every intent left behind, finished or rolled back (the caller holds the lock)."""
    folder = compaction_dir(root)
    for tmp in folder.glob(".*.tmp"):  # an intent whose writing was killed: nothing was started
        tmp.unlink(missing_ok=True)
    return sum(_resolve_intent(root, path) for path in sorted(folder.glob("*.json")))


def _resolve_intent(root: Path, intent: Path) -> int:
    try:
        data = json.loads(intent.read_text(encoding="utf-8"))
        partition = root / data["partition"]
        new_file = str(data["file"])
        replaces = [str(n) for n in data["replaces"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable compaction intent (%s); removed", intent, exc)
        intent.unlink(missing_ok=True)
        return 1
    if (partition / new_file).exists():
        remove_files(partition, replaces)  # the new file is whole (atomic): finish the job
    # Killed mid-write, the sources are untouched; either way a temporary may be left.
    for tmp in partition.glob(f".{new_file}.*.tmp"):
        tmp.unlink(missing_ok=True)
    intent.unlink(missing_ok=True)
    return 1


def remove_files(partition: Path, names: list[str]) -> None:
    """Step 3: the replaced files go, durably."""
    for name in names:
        (partition / name).unlink(missing_ok=True)
    _fsync_dir(partition)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
