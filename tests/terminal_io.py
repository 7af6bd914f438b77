"""Reading what a process writes to a pseudo-terminal (or pipe), with deadlines: polls, never sleeps blindly."""

from __future__ import annotations

import os
import select
import subprocess
import time


def read_until(fd: int, needle: bytes, deadline_s: float = 20) -> bytes:
    """Read fd until ``needle`` shows up (or EOF / deadline)."""
    got = b""
    deadline = time.monotonic() + deadline_s
    while needle not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side closed
                break
            if not chunk:
                break
            got += chunk
    return got


def read_all(fd: int, proc: subprocess.Popen, deadline_s: float = 30) -> bytes:
    """Read fd until EOF, or until ``proc`` has exited and nothing more comes (or the deadline)."""
    got = b""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        elif proc.poll() is not None:
            # The process is gone and nothing is left to read.
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                break
    return got
