"""Run the recorded command untouched: its bytes, its terminal, its signals and its exit code.

The job must not be able to tell it is being recorded, so this module is about faithfulness:

* **Output.** When our stdout is a terminal the child gets a pseudo-terminal (progress bars, colours and
  ``isatty()`` behave as without llamamon): the real terminal is put in raw mode for the duration (restored
  on every exit path), the window size is copied and SIGWINCH followed. Otherwise stdout and stderr go
  through pipes and every chunk is written on to our fd 1/2 at once with ``os.write`` (no buffering, so a
  job writing without a newline still shows). ``on_output(stream, data)`` sees each chunk first, unchanged,
  for the parsers of a later issue. stdin is inherited directly unless it is the terminal of a pty session.
* **Signals.** The child stays in our process group in pipe mode, so a Ctrl-C on the terminal reaches it
  directly; signals sent to llamamon itself (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2) are forwarded
  once. Both are told apart with ``sigwaitinfo``: a signal the terminal driver sent (``SI_KERNEL``) already
  reached the whole foreground group and is not sent twice. A pty child is its own session, so everything is
  forwarded. Known limit: a signal sent to our whole process group by another program (``kill -TERM
  -PGID``) reaches a pipe-mode child directly and again through llamamon.
* **Exit code.** The child's; killed by signal N gives 128+N, as a shell reports it.
* **kill -9 of llamamon.** The child runs on: it is not our session's leader's hang-up target, and a small
  *keeper* process (no llamamon import, started in its own session) holds copies of the read ends of the
  child's pipes or pty. It sleeps on a lifeline pipe; if llamamon dies without saying goodbye the keeper
  takes over copying the child's output to the real stdout/stderr, so the job neither gets SIGPIPE nor a
  pty hang-up; it also puts the terminal back in the mode llamamon found it in. What is lost: at most one
  chunk llamamon had read but not yet written, and, in pty mode, keyboard input (the shell takes the
  terminal back).
* **Job control in pty mode.** A job alone in its pty's session is an orphaned process group, so the
  kernel drops the SIGTSTP its terminal makes of Ctrl-Z. llamamon sees the key in the input it forwards
  (only while the job's terminal has ISIG on; a full-screen program in raw mode gets the byte as usual)
  and does the shell's part: stops the job and itself, restoring the terminal, so the shell gets it back;
  on ``fg`` it puts the terminal back in raw mode and continues the job. A job started in the background (``llamamon
  record … &``) leaves the terminal's modes alone (changing them would stop llamamon with SIGTTOU), so
  its newlines arrive as "\r\r\n", which looks the same.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from llamamon.errors import LlamamonError
from llamamon.runtime.output_keeper import start_keeper
from llamamon.runtime.terminal import Terminal, copy_window_size, suspend_requested

log = logging.getLogger(__name__)

FORWARDED: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent, e.g. the terminal driver's Ctrl-C
CHUNK = 65536
DRAIN_IDLE_S = 0.25  # after the child exits: stop when its output has been quiet this long …
DRAIN_MAX_S = 5.0  # … or after this long; the keeper forwards whatever a grandchild still writes

OutputHook = Callable[[int, bytes], None]


class SpawnError(LlamamonError):
    """The command could not be started; exit codes follow the shell (127 not found, 126 not executable)."""

    exit_code: ClassVar[int] = 126


class CommandNotFound(SpawnError):
    exit_code: ClassVar[int] = 127


@dataclass(frozen=True, slots=True)
class ChildResult:
    pid: int
    exit_code: int  # as a shell reports it: the child's status, or 128 + signal number
    signal: int | None  # the signal that killed the child, if one did


def exit_code_of(status: int) -> tuple[int, int | None]:
    """(shell exit code, killing signal) from a raw wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.waitstatus_to_exitcode(status), None


class _Stream:
    """One output stream of the child: where we read it, where it goes, and its keeper letter."""

    __slots__ = ("letter", "number", "source", "target", "writable")

    def __init__(self, number: int, source: int, target: int) -> None:
        self.number = number  # 1 stdout, 2 stderr: what on_output is told
        self.source = source
        self.target = target
        self.letter = "o" if number == 1 else "e"
        self.writable = True


class Child:
    """The recorded command, started at once; ``wait()`` pumps its I/O until it exits.

    Use as a context manager: on leaving, the terminal mode and our signal mask are restored and the
    keeper is dismissed (or left to copy what a grandchild still writes). Signals stay blocked and
    forwarded until then, so a SIGTERM during the recorder's final flush cannot cut it short.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        on_output: OutputHook | None = None,
        use_pty: bool | None = None,
        keeper: bool = True,
    ) -> None:
        if not argv:
            raise SpawnError("no command given (usage: llamamon record -- CMD [ARGS...])")
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.on_output = on_output
        self.pty = os.isatty(1) if use_pty is None else use_pty
        self.pid = 0
        self.result: ChildResult | None = None
        self._use_keeper = keeper
        self._streams: list[_Stream] = []
        self._master: int | None = None
        self._stdin_to_master = False
        self._pending_input = b""
        self._terminal = Terminal()
        self._sigset: set[signal.Signals] = set(FORWARDED)
        self._old_mask: set[signal.Signals] | None = None
        self._signal_thread: threading.Thread | None = None
        self._stopping = False
        self._lifeline: int | None = None
        self._keeper_pid: int | None = None
        self._keeper_done = False
        self._hook_failed = False
        self.start()

    @property
    def raw_terminal(self) -> bool:
        """True while our terminal is in raw mode (a line we print then needs "\r\n", not "\n")."""
        return self._terminal.raw

    # -- starting -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.pty:
            self._sigset.add(signal.SIGWINCH)
        # Blocked before the spawn so that a signal arriving in between waits for the forwarder instead
        # of killing llamamon; threads started later (the sampler) inherit the mask.
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._sigset)
        try:
            self.pid = self._spawn()
            self._signal_thread = threading.Thread(target=self._forward_signals, name="llamamon-signals", daemon=True)
            self._signal_thread.start()
            if self._use_keeper:
                streams = [(s.letter, s.source, s.target) for s in self._streams]
                started = start_keeper(streams, self._terminal.saved)
                if started is not None:
                    self._keeper_pid, self._lifeline = started
        except BaseException:
            self._terminal.restore()
            self._close_fds()
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            raise

    def _spawn(self) -> int:
        actions: list[tuple] = []
        child_ends: list[int] = []
        if self.pty:
            master, slave = os.openpty()
            self._master = master
            child_ends.append(slave)
            self._terminal.prepare_pty(slave)
            on_tty = [fd for fd in (0, 1, 2) if fd == 1 or os.isatty(fd)]
            actions.append((os.POSIX_SPAWN_OPEN, on_tty[0], os.ttyname(slave), os.O_RDWR, 0))
            actions.extend((os.POSIX_SPAWN_DUP2, on_tty[0], fd) for fd in on_tty[1:])
            self._streams.append(_Stream(1, master, 1))
            self._stdin_to_master = 0 in on_tty
            if 2 not in on_tty:
                err_r, err_w = os.pipe()
                child_ends.append(err_w)
                actions.append((os.POSIX_SPAWN_DUP2, err_w, 2))
                self._streams.append(_Stream(2, err_r, 2))
        else:
            for number in (1, 2):
                read_end, write_end = os.pipe()
                child_ends.append(write_end)
                actions.append((os.POSIX_SPAWN_DUP2, write_end, number))
                self._streams.append(_Stream(number, read_end, number))
        try:
            return os.posix_spawnp(
                self.argv[0],
                self.argv,
                self.env,
                file_actions=actions,
                setsid=self.pty,  # a pty child is its own session, so the pty becomes its terminal
                setsigmask=(),  # our blocked forwarding set must not be inherited
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores these; the job must not
            )
        except FileNotFoundError as exc:
            raise CommandNotFound(f"command not found: {self.argv[0]}") from exc
        except PermissionError as exc:
            raise SpawnError(f"cannot execute {self.argv[0]}: permission denied") from exc
        except OSError as exc:
            raise SpawnError(f"cannot execute {self.argv[0]}: {exc.strerror or exc}") from exc
        finally:
            for fd in child_ends:
                os.close(fd)

    def _tell_keeper(self, message: bytes) -> None:
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.write(self._lifeline, message)

    # -- signals --------------------------------------------------------------------------------

    def _forward_signals(self) -> None:
        while True:
            info = signal.sigwaitinfo(self._sigset)
            sig = info.si_signo
            if self._stopping and sig == signal.SIGUSR1 and info.si_pid == os.getpid():
                return
            if sig == signal.SIGWINCH:
                if self._master is not None:
                    copy_window_size(self._master)  # the kernel then signals the job itself
                continue
            if info.si_code == SI_KERNEL and not self.pty:
                continue  # the terminal sent it to our whole foreground group: the job has it already
            if self.result is None:  # once reaped, the pid may belong to someone else
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)

    # -- pumping --------------------------------------------------------------------------------

    def wait(self) -> ChildResult:
        """Copy the child's I/O until it exits and its output is drained; return its exit status."""
        if self.result is not None:
            return self.result
        try:
            pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None
        if self._master is not None:
            os.set_blocking(self._master, False)
        status: int | None = None
        exited_at = 0.0
        try:
            while True:
                readers = [s.source for s in self._streams]
                if self._stdin_to_master:
                    readers.append(0)
                writers = [self._master] if self._pending_input and self._master is not None else []
                if status is None:
                    if pidfd is not None:
                        readers.append(pidfd)
                    timeout = None if pidfd is not None else 0.05
                else:
                    if not self._streams or time.monotonic() - exited_at > DRAIN_MAX_S:
                        break
                    timeout = DRAIN_IDLE_S
                ready, can_write, _ = select.select(readers, writers, [], timeout)
                if can_write:
                    self._send_input()
                for fd in ready:
                    if fd == 0:
                        self._read_input()
                    elif fd != pidfd:
                        self._pump(fd)
                if status is None and (pidfd in ready or pidfd is None):
                    reaped, raw = os.waitpid(self.pid, 0 if pidfd is not None else os.WNOHANG)
                    if reaped:
                        status = raw
                        exited_at = time.monotonic()
                        code, sig = exit_code_of(raw)
                        self.result = ChildResult(self.pid, code, sig)
                        self._stdin_to_master = False
                elif status is not None and not ready:
                    break  # quiet since the exit: what is left (a grandchild's output) is the keeper's
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if self._streams:
            log.debug("job's output still open after it exited; the keeper process copies the rest")
            self._keeper_done = True  # leave it running: closing the lifeline without "q" hands over
        assert self.result is not None
        return self.result

    def _pump(self, fd: int) -> None:
        stream = next(s for s in self._streams if s.source == fd)
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the pty's last slave closed, i.e. end of file
                log.debug("reading the job's output failed: %s", exc)
            data = b""
        if not data:
            self._drop(stream)
            return
        if self.on_output is not None and not self._hook_failed:
            try:
                self.on_output(stream.number, data)
            except Exception:  # a parser bug must never cost the job its output
                self._hook_failed = True
                log.warning("output parser failed; the job's output is still passed through", exc_info=True)
        if stream.writable:
            self._write_all(stream, data)

    def _write_all(self, stream: _Stream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(stream.target, view) :]
            except BlockingIOError:
                select.select([], [stream.target], [])
            except InterruptedError:
                continue
            except BrokenPipeError:
                if self.pty and stream.number == 1:
                    stream.writable = False  # cannot close a pty half; discard so the job never blocks
                else:
                    # Whoever read our output is gone: close the pipe so the job gets SIGPIPE/EPIPE on its
                    # next write, exactly as it would without llamamon.
                    self._tell_keeper(stream.letter.encode())
                    self._drop(stream)
                return
            except OSError as exc:
                log.debug("writing the job's output to fd %d failed: %s; discarding it", stream.target, exc)
                stream.writable = False
                return

    def _drop(self, stream: _Stream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
            if stream.source != self._master:
                os.close(stream.source)

    def _read_input(self) -> None:
        try:
            data = os.read(0, CHUNK)
        except OSError:
            data = b""
        if not data:
            self._stdin_to_master = False
            return
        self._pending_input += data
        self._send_input()
        if self._master is not None and suspend_requested(self._master, data):
            self._terminal.suspend(self.pid, self._master)

    def _send_input(self) -> None:
        assert self._master is not None
        try:
            sent = os.write(self._master, self._pending_input)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._pending_input)  # the job's terminal is gone; nobody reads input any more
        self._pending_input = self._pending_input[sent:]
        if len(self._pending_input) > 1 << 20:
            self._stdin_to_master = False  # the job stopped reading; stop reading for it

    # -- leaving --------------------------------------------------------------------------------

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Restore the terminal and signal mask; dismiss the keeper unless output is still flowing."""
        if self.result is None:
            # Leaving before the child ended (an exception in the recorder): it keeps running, the
            # keeper takes over its output.
            self._keeper_done = True
        self._terminal.restore()
        if self._lifeline is not None:
            self._tell_keeper(b"q" if not self._keeper_done else b"r")
            os.close(self._lifeline)
            self._lifeline = None
        if self._keeper_pid is not None and not self._keeper_done:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._keeper_pid, 0)
        self._close_fds()
        if self._signal_thread is not None and self._signal_thread.is_alive():
            self._stopping = True
            signal.pthread_kill(self._signal_thread.ident, signal.SIGUSR1)
            self._signal_thread.join()
        if self._old_mask is not None:
            # Signals that came after the child was reaped are dropped, not delivered to us on unblock.
            while signal.sigtimedwait(self._sigset, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            self._old_mask = None

    def _close_fds(self) -> None:
        for stream in self._streams:
            if stream.source != self._master:
                with contextlib.suppress(OSError):
                    os.close(stream.source)
        self._streams.clear()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None


def run(argv: Sequence[str], **kwargs: object) -> ChildResult:
    """Start, pump and clean up in one call (what a caller without sampling needs)."""
    with Child(argv, **kwargs) as child:  # type: ignore[arg-type]
        return child.wait()
