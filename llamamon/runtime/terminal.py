"""Our real terminal while the job runs in a pseudo-terminal: raw for the duration, its size followed, Ctrl-Z.

Raw, because the pty already does the line discipline (echo, "\\n" to "\\r\\n", Ctrl-C) for the job; the real
terminal doing it again would double it. The modes found are kept, to be put back on every exit path
(and handed to the keeper in case llamamon dies without doing so).
"""

from __future__ import annotations

import contextlib
import os
import signal


class Terminal:
    """The modes of our terminal's fds that llamamon changed, and the changes themselves."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, list]] = []  # (fd, termios attributes found), in the order changed

    @property
    def raw(self) -> bool:
        """True while in raw mode (a line we print then needs "\\r\\n", not "\\n")."""
        return bool(self.saved)

    def prepare_pty(self, slave: int) -> None:
        """Give the pty the real terminal's settings and size, then make the real terminal transparent."""
        import termios

        source = 0 if os.isatty(0) else 1
        with contextlib.suppress(termios.error):
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(source))
        copy_window_size(slave)
        self.make_raw()

    def make_raw(self) -> None:
        import termios
        import tty

        if _in_background(1):
            # A mode change would stop us with SIGTTOU; output then gets "\r\r\n", which looks the same.
            return
        raw_device = None
        if os.isatty(0):
            self.saved.append((0, termios.tcgetattr(0)))
            tty.setraw(0, termios.TCSANOW)
            raw_device = os.fstat(0).st_rdev
        if os.isatty(1) and os.fstat(1).st_rdev != raw_device:
            # Output only: the pty already turned "\n" into "\r\n"; the real terminal must not do it again.
            attrs = termios.tcgetattr(1)
            self.saved.append((1, [*attrs]))
            attrs[1] &= ~termios.OPOST
            termios.tcsetattr(1, termios.TCSANOW, attrs)

    def restore(self) -> None:
        import termios

        while self.saved:
            fd, attrs = self.saved.pop()
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, attrs)

    def suspend(self, pid: int, master: int) -> None:
        """Do the shell's part of Ctrl-Z: stop the job and llamamon, and on ``fg`` continue both."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGSTOP)  # the job leads its own session and process group
        self.restore()
        os.kill(os.getpid(), signal.SIGSTOP)  # the shell sees its job stop and takes the terminal back
        # … continued by `fg` or `bg` (SIGCONT):
        self.make_raw()
        copy_window_size(master)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGCONT)


def copy_window_size(pty_fd: int) -> None:
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        size = fcntl.ioctl(1, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(pty_fd, termios.TIOCSWINSZ, size)


def suspend_requested(master: int, data: bytes) -> bool:
    """Whether typed input holds the job terminal's suspend key (Ctrl-Z) while that terminal has ISIG on.

    The kernel turns it into SIGTSTP for the job, but discards it: a job alone in its own session is an
    orphaned process group, which the terminal may not stop (nobody could continue it). So llamamon
    does what the shell would have (``Terminal.suspend``).
    """
    import termios

    try:
        attrs = termios.tcgetattr(master)
    except termios.error:
        return False
    suspend = attrs[6][termios.VSUSP]
    return bool(attrs[3] & termios.ISIG) and suspend not in (b"\0", 0) and suspend in data


def _in_background(fd: int) -> bool:
    """True when fd is our controlling terminal and another process group owns it (``llamamon … &``)."""
    try:
        return os.tcgetpgrp(fd) != os.getpgrp()
    except OSError:
        return False  # not our controlling terminal: no job control applies
