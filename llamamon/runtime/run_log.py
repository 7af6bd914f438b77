"""What ``record`` says on stderr about its run: where it records as it starts, how the job ended as it ends,
and, while the job owns the terminal in raw mode, with the line endings such a terminal needs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from llamamon.samples import RunInfo
from llamamon.units import format_duration

log = logging.getLogger("llamamon.record")


def say_started(info: RunInfo, metrics_dir: Path, interval: float) -> None:
    log.info("run %s recording to %s (interval %ss)", info.id, _shown(metrics_dir), f"{interval:g}")


def say_ended(info: RunInfo, metrics_dir: Path) -> None:
    ended = f"exit {info.exit_code}"
    if info.signal is not None:
        ended += f" ({_signal_name(info.signal)})"
    duration = format_duration(info.duration or 0.0)
    log.info("run %s done in %s, %d samples, %s -> %s", info.id, duration, info.samples, ended, _shown(metrics_dir))


@contextlib.contextmanager
def line_endings_for(raw_terminal: bool) -> Iterator[None]:
    """While the terminal is raw, end our own stderr lines with "\r\n" so they do not staircase."""
    handlers = [
        h
        for h in logging.getLogger("llamamon").handlers
        if isinstance(h, logging.StreamHandler) and h.terminator == "\n"
    ]
    if raw_terminal:
        for handler in handlers:
            handler.terminator = "\r\n"
    try:
        yield
    finally:
        for handler in handlers:
            handler.terminator = "\n"


def _shown(path: Path) -> str:
    """The metrics folder as the user would write it: relative below the cwd, absolute elsewhere."""
    with contextlib.suppress(ValueError):
        return os.path.join(str(path.relative_to(Path.cwd())), "")
    return str(path)


def _signal_name(number: int) -> str:
    import signal

    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"killed by signal {number}"
