"""``record``'s uploads to a bucket: a thread that ships the run's finished files while the job runs, and what
is left at its end within a bounded wait.

Why a thread of its own: a PUT can take seconds (or a connect timeout when the network is down) and must
never delay a sample or the job's output. A bucket problem never touches the job either: it is one warning
line, the files wait in the mirror (store/location.py) and the next llamamon command ships them.
"""

from __future__ import annotations

import logging
import threading
import time

from llamamon.store.bucket import BucketError
from llamamon.store.location import Location

log = logging.getLogger("llamamon.record")

SHIP_EVERY_S = 10.0  # the store writer flushes every 30 s: a finished file waits at most this long more
SHIP_AT_EXIT_S = 20.0  # the longest ``record`` waits for uploads after the job ended


class Shipper:
    """Ships ``location``'s waiting files of one run every SHIP_EVERY_S; does nothing for a plain folder."""

    def __init__(self, location: Location, run_id: str, *, every: float = SHIP_EVERY_S) -> None:
        self.location = location
        self.run_id = run_id
        self.every = every
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one ship at a time: the thread's, or the final one
        self._warned = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.location.bucket is None:
            return
        self._thread = threading.Thread(target=self._loop, name="llamamon-shipper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # At once first: the run's metadata reaches the bucket as it starts (other hosts list it as running).
        while True:
            error = self._ship(runs={self.run_id})
            if error is not None and not self._warned:
                self._warned = True
                log.warning("%s (the files wait locally and are shipped later)", error)
            if self._stop.wait(self.every):
                return

    def _ship(self, deadline: float | None = None, runs: set[str] | None = None) -> str | None:
        """One pass over the waiting files; returns what failed (a line), or None."""
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):  # the thread's PUT is stuck (a black-holed network)
            return f"{self.location.shown}: uploading timed out"
        try:
            self.location.ship(deadline=deadline, runs=runs)
        except BucketError as exc:
            return str(exc)
        except OSError as exc:  # the mirror itself (a full disk): the files stay as they are
            return f"shipping to {self.location.shown} failed: {exc}"
        finally:
            self._lock.release()
        return None

    def pause(self) -> None:
        """Stop the thread's passes (before the run's end compacts its files: a pass under way holds the lock,
        and a file it finds gone is skipped); the last ship is :meth:`finish`'s."""
        self._stop.set()

    def finish(self, wait: float = SHIP_AT_EXIT_S) -> None:
        """Ship what is left (this run's and any earlier run's), at most ``wait`` seconds; say what still waits."""
        self.pause()
        if self.location.bucket is None:
            return
        error = self._ship(deadline=time.monotonic() + wait)
        left = len(self.location.waiting())
        if left:
            why = f"{error}; " if error is not None else ""
            log.warning(
                "%s%d files wait locally for %s (the next llamamon command ships them)", why, left, self.location.shown
            )
