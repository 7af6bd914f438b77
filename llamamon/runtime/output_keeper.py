"""The keeper: a small process that holds copies of the job's output ends, so the job outlives a kill -9 of llamamon.

Without it the job would get SIGPIPE (pipes) or a hang-up (pty) the moment llamamon died; with it, the
keeper copies the job's output on to the real stdout/stderr and puts the terminal back the way it was.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

# The keeper: stdlib only, started with -I -S so it costs a few milliseconds. argv: lifeline fd, then
# "<letter>:<source fd>:<target fd>" per stream. It sleeps on the lifeline; "q" means all is well, a letter
# means "the reader of that stream went away, drop it" (so the job gets its SIGPIPE as without llamamon),
# "r" means "llamamon restored the terminal itself". End of file on the lifeline means llamamon died or
# left output behind: restore the terminal's saved modes ("t:<fd>:<attrs>") unless told "r", then copy
# until the sources close.
_KEEPER = """
import os, select, sys
life = int(sys.argv[1])
streams = {}
terminals = []
for spec in sys.argv[2:]:
    letter, fd, rest = spec.split(":", 2)
    if letter == "t":
        terminals.append((int(fd), rest))
    else:
        streams[letter] = (int(fd), int(rest))
while True:
    msg = os.read(life, 64)
    if not msg:
        break
    if b"q" in msg:
        sys.exit(0)
    if b"r" in msg:
        terminals = []
    for letter in msg.decode("ascii", "replace"):
        if letter in streams:
            os.close(streams.pop(letter)[0])
if terminals:
    import ast, termios
    for fd, attrs in reversed(terminals):
        try:
            termios.tcsetattr(fd, termios.TCSADRAIN, ast.literal_eval(attrs))
        except (termios.error, OSError, ValueError):
            pass
        os.close(fd)
targets = dict(streams.values())
while targets:
    for src in select.select(list(targets), [], [])[0]:
        try:
            data = os.read(src, 65536)
        except OSError:
            data = b""
        try:
            if not data:
                raise EOFError
            while data:
                data = data[os.write(targets[src], data):]
        except (OSError, EOFError):
            os.close(src)
            del targets[src]
"""


def start_keeper(
    streams: Sequence[tuple[str, int, int]], saved_modes: Sequence[tuple[int, list]]
) -> tuple[int, int] | None:
    """Spawn the keeper for ``streams`` ((letter, source fd, target fd) each) and the terminal modes to restore
    ((fd, attributes) each); (its pid, our end of its lifeline), or None when it could not start."""
    life_r, life_w = os.pipe()
    base = max([life_r, *(fd for _, src, dst in streams for fd in (src, dst))]) + 1
    actions: list[tuple] = [(os.POSIX_SPAWN_DUP2, life_r, base)]
    specs = []
    for i, (letter, src, dst) in enumerate(streams):
        actions.append((os.POSIX_SPAWN_DUP2, src, base + 1 + 2 * i))
        actions.append((os.POSIX_SPAWN_DUP2, dst, base + 2 + 2 * i))
        specs.append(f"{letter}:{base + 1 + 2 * i}:{base + 2 + 2 * i}")
    for j, (fd, attrs) in enumerate(saved_modes):
        actions.append((os.POSIX_SPAWN_DUP2, fd, base + 1 + 2 * len(streams) + j))
        specs.append(f"t:{base + 1 + 2 * len(streams) + j}:{attrs!r}")
    actions.extend((os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2))
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", "-c", _KEEPER, str(base), *specs],
            {},
            file_actions=actions,
            setsid=True,  # out of reach of the terminal's Ctrl-C and hang-up
            setsigmask=(),
        )
    except OSError as exc:
        os.close(life_w)
        log.debug("keeper process not started (%s); the job depends on llamamon staying alive", exc)
        return None
    finally:
        os.close(life_r)
    return pid, life_w
