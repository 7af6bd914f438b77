"""How ``record``'s rows become Parquet, decided in one place (:class:`ParquetRoute`), and the fold helper it may
use: a forked process that imports pyarrow while the job runs, then folds the journal when ``record`` asks.

Every row is journaled first, so a ``kill -9`` of ``record`` loses at most what was not journaled yet, and
a journal left behind is folded by the next llamamon command. Turning it into Parquet costs an import of
pyarrow with numpy, CPU that holds the GIL: for ``record -- true`` it would be most of the exit
(bench/RESULTS.md, "Start-up: `llamamon record -- true` wall time", whose phases show the fold). Hence
one rule, :meth:`ParquetRoute.writes_here`:

* while this process has not imported pyarrow (a run shorter than the store writer's first flush), it
  writes no Parquet: at exit it leaves the journal to the helper, which imported pyarrow on another core
  meanwhile, folds it and compacts the run, so a short run's exit does not wait for that import;
* once it has (the writer's first flush, or a fold of the job's own journals), it writes its Parquet
  itself from then on and the helper is ended, which would only idle;
* without a helper (not Linux, a thread already running, a failed fork) or when the helper fails, this
  process does the same exit work itself. The fold is always ``fold_orphans``, the one any llamamon
  command runs on a journal left behind.

The helper forks first thing (no second interpreter to start), before ``record`` reads its config.
Protocol, over two pipes: ``record`` writes ``fold <run id> <max files> <max bytes> <metrics folder>``; the helper
folds every orphaned segment of that store, compacts the run when that is cheap (``compact_ended_run``)
and answers ``folded <rows>``. End of input (``record`` killed, or done without it) makes the helper
exit, folding nothing: the journal is then folded by the next llamamon command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from llamamon.store.writer import StoreWriter

log = logging.getLogger("llamamon.record")

FLUSH_INTERVAL_S = 30.0  # the store writer's Parquet flushes, and the folds of the job's journals
# Parent side reads at most this much of the answer; it is one short line.
_ANSWER_LIMIT = 4096
# A run with at most this many files, and bytes, is compacted as it ends, where the wait is short (500
# files: an hour of four partitions in FLUSH_INTERVAL_S flushes); a bigger one is left for `llamamon
# compact`, which a user runs when the wait suits them.
COMPACT_AT_EXIT_FILES = 500
COMPACT_AT_EXIT_BYTES = 8 << 20


class ParquetRoute:
    """``record``'s store writer and the folds beside it; which process writes Parquet is :meth:`writes_here`
    (the module docstring says why). Used from the sampler's loop, but for :meth:`finish` and :meth:`stop`."""

    def __init__(self, helper: FoldHelper | None) -> None:
        self._helper = helper
        self._fold: asyncio.Future[None] | None = None
        self._next_fold = 0.0

    def writes_here(self) -> bool:
        """Whether this process writes its Parquet itself; the moment that becomes true, the helper is ended."""
        if self._helper is not None and "llamamon.store.parquet" in sys.modules:
            self.stop()
        return self._helper is None

    def stop(self) -> None:
        """End the helper now (not needed, or the run ended early), rather than let it idle."""
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.stop()

    def open_writer(self, metrics_dir: Path, run_id: str, host: str) -> StoreWriter:
        """The run's writer: it journals every row at once and writes Parquet every FLUSH_INTERVAL_S."""
        from llamamon.store.writer import StoreWriter

        self._next_fold = time.monotonic() + FLUSH_INTERVAL_S
        return StoreWriter(metrics_dir, run_id, host, flush_interval=FLUSH_INTERVAL_S)

    def after_tick(self, metrics_dir: Path) -> None:
        """Segments the job's llamamon.log() has finished (it rotates them) go into Parquet while it runs, in a
        thread beside the ticks, every FLUSH_INTERVAL_S: a long run's journal stays small and its exit quick."""
        self.writes_here()
        now = time.monotonic()
        if now >= self._next_fold and (self._fold is None or self._fold.done()):
            import asyncio  # here: `llamamon record` imports this module before it forks the helper, as light as it can

            self._next_fold = now + FLUSH_INTERVAL_S
            self._fold = asyncio.ensure_future(asyncio.to_thread(_fold_journals, metrics_dir))

    async def close_writer(self, writer: StoreWriter) -> None:
        """After the last tick: the fold under way done; the writer's last rows written as Parquet here, or
        left in its journal for the helper."""
        if self._fold is not None:
            await self._fold  # never raises: _fold_journals says what failed
        writer.close(write_parquet=self.writes_here())

    def finish(self, metrics_dir: Path, run_id: str) -> None:
        """At exit: the rows still in journals (the writer's last ones, the job's) into Parquet, then the run
        compacted when that is cheap; by the helper when it is there, else here."""
        bounds = (COMPACT_AT_EXIT_FILES, COMPACT_AT_EXIT_BYTES)
        helper, self._helper = self._helper, None
        if helper is not None and helper.fold(metrics_dir, run_id, *bounds) is not None:
            return
        _fold_journals(metrics_dir)
        from llamamon.store.compaction import compact_ended_run

        try:
            compact_ended_run(metrics_dir, run_id, *bounds)
        except Exception as exc:  # noqa: BLE001 - the run is recorded; `llamamon compact` can do this later
            log.warning("compacting the run failed: %s (its files stay as they are)", exc)


def _fold_journals(metrics_dir: Path) -> None:
    """Fold here every journal segment whose writer is gone (the job's, once it has finished them)."""
    from llamamon.store.writer import fold_orphans

    try:
        fold_orphans(metrics_dir)  # a segment still locked (a job's child lives on) waits for next time
    except Exception as exc:  # noqa: BLE001 - the rows stay in the journal; the next store open folds them
        log.warning("folding the job's metrics journal failed: %s (kept for the next llamamon command)", exc)


class FoldHelper:
    """The helper process, seen from ``record`` (through its :class:`ParquetRoute`)."""

    def __init__(self, pid: int, command_fd: int, answer_fd: int) -> None:
        self.pid = pid
        self._command_fd = command_fd
        self._answer_fd = answer_fd
        self._done = False

    @classmethod
    def start(cls) -> FoldHelper | None:
        """Fork the helper, or None where forking is not safe or possible (record then folds itself).

        Only from a process with no other thread: a fork copies locks as other threads held them, and
        the helper imports modules. ``llamamon record`` calls this before it starts any thread. Only on
        Linux: macOS system libraries are not safe to use in a forked child (why multiprocessing spawns).
        """
        if not sys.platform.startswith("linux") or threading.active_count() > 1:
            return None
        command_read, command_write = os.pipe()
        answer_read, answer_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (command_read, command_write, answer_read, answer_write):
                os.close(fd)
            return None
        if pid == 0:  # the helper: never returns, never runs the parent's exit handlers
            code = 1
            try:
                os.close(command_write)
                os.close(answer_read)
                code = _serve(command_read, answer_write)
            finally:
                os._exit(code)
        os.close(command_read)
        os.close(answer_write)
        return cls(pid, command_write, answer_read)

    def fold(self, metrics_dir: str | os.PathLike[str], run_id: str, max_files: int, max_bytes: int) -> int | None:
        """Have the helper fold the store's finished journal segments, then compact ``run_id`` if its files
        are at most ``max_files`` and ``max_bytes`` (``compact_ended_run``): the rows it folded, or None when
        it did not (it died or failed; it said why on stderr): the caller then does both in-process."""
        if self._done:
            return None
        self._done = True
        answer = b""
        try:
            command = f"fold {run_id} {int(max_files)} {int(max_bytes)} {os.fspath(metrics_dir)}\n"
            os.write(self._command_fd, command.encode())
            self._close_command()  # end of input: the helper reads one line
            while len(answer) < _ANSWER_LIMIT:
                chunk = os.read(self._answer_fd, _ANSWER_LIMIT)
                if not chunk:
                    break
                answer += chunk
        except OSError:  # it is gone (EPIPE)
            answer = b""
        finally:
            self._reap(kill=False)
        words = answer.split()
        if len(words) != 2 or words[0] != b"folded" or not words[1].isdigit():
            return None
        return int(words[1])

    def stop(self) -> None:
        """Not needed (record writes its own Parquet, or ends early): end it now rather than let it idle."""
        if not self._done:
            self._done = True
            self._reap(kill=True)

    def _close_command(self) -> None:
        # Why -1 afterwards: closing a number twice could close whatever another thread opened under it since.
        if self._command_fd >= 0:
            os.close(self._command_fd)
            self._command_fd = -1

    def _reap(self, kill: bool) -> None:
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._close_command()
        with contextlib.suppress(OSError):
            os.close(self._answer_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(command_fd: int, answer_fd: int) -> int:
    # Its own session: a Ctrl-C or a closed terminal is for the job and for record, never for this helper.
    os.setsid()
    try:
        import llamamon.store.parquet  # noqa: F401 - the point of this process: loaded before it is needed
        from llamamon.store.compaction import compact_ended_run
        from llamamon.store.writer import fold_orphans

        with os.fdopen(command_fd, "rb") as commands:
            words = commands.readline().decode(errors="replace").rstrip("\n").split(" ", 4)
        if len(words) != 5 or words[0] != "fold":
            return 0  # record is gone, or wrote its Parquet itself
        _, run_id, max_files, max_bytes, metrics_dir = words
        rows = fold_orphans(metrics_dir)
        compact_ended_run(Path(metrics_dir), run_id, int(max_files), int(max_bytes))
        os.write(answer_fd, f"folded {rows}\n".encode())
        return 0
    except Exception as exc:  # noqa: BLE001 - record folds in-process instead; say why once
        with contextlib.suppress(OSError):
            sys.stderr.write(f"llamamon: the fold helper failed ({exc}); record folds the journal itself\n")
            sys.stderr.flush()
        return 1
