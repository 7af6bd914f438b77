"""Atomic file replacement shared by finished Parquet files, .prom files and run metadata.

A reader (node_exporter, polars, another llamamon) must see the old file or the new one, never half
of either: write a temporary file in the same directory, fsync it, ``os.replace`` it over the target,
and remove the temporary file if anything fails.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None], *, durable: bool = True
) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically.

    ``durable=False`` skips the fsyncs: readers still see a whole file (the rename does that), but after a
    power cut the file may be old or empty. Only for files rewritten every few seconds that hold no
    history, such as the .prom view of the latest values.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name must not match the readers' glob (*.prom, *.parquet, *.json): a reader
    # listing the folder mid-write must not pick it up.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(target.parent)
    return target


def _fsync_dir(folder: Path) -> None:
    # Why: the rename itself is only durable once the directory entry is flushed (ext4, xfs).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
