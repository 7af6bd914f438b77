"""``.prom`` files for node_exporter's textfile collector: one file per writer, replaced atomically.

The recorder (``record``) and the watcher (``watch``) own one ``TextfileWriter`` each and call
``write(samples)`` on every tick with the samples of that tick. ``finish(grace)`` at the end removes the
file, or with a grace rewrites it with ``llamamon_run_active 0`` so its final values can still be scraped
for that long; ``prune`` removes what outlived its grace and the files of writers that were killed, so a
finished run's frozen values neither linger in Prometheus nor fire its alerts, and every run's ``run``
label does not stay a live series forever. Files carry no timestamps (node_exporter rejects them);
freshness is ``llamamon_last_sample_timestamp_seconds``. Each file names its writer in a comment line
(pid and process start), which is how ``prune`` tells a live writer from a dead one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from llamamon.fsutil import atomic_write
from llamamon.host import this_host
from llamamon.prometheus.snapshot import DEFAULT_BUCKETS, RunSnapshot
from llamamon.samples import Row, Sample

log = logging.getLogger("llamamon.prometheus")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_WRITER = re.compile(rb"^# llamamon writer pid=(\d+) started=([0-9.]+)$", re.MULTILINE)
_INACTIVE = re.compile(rb"^llamamon_run_active(\{[^}]*\})? 0(\.0)?$", re.MULTILINE)


def textfile_name(host: str, name: str) -> str:
    """``llamamon-<host>-<run id or "watch">.prom``; anything unsafe in a file name becomes ``_``."""
    return f"llamamon-{_UNSAFE.sub('_', host)}-{_UNSAFE.sub('_', name)}.prom"


class TextfileWriter:
    """Keeps the latest values of one run and rewrites ``<folder>/llamamon-<host>-<name>.prom``.

    ``labels`` go on every series; by default ``{"host": host, "run": name}``. ``clock`` stamps
    samples whose ``time`` is ``None`` (tests pass their own). ``refresh`` is the least time in seconds
    between two rewrites (``monitoring.textfile_refresh``): every sample still reaches the snapshot
    (a histogram counts each observation), only rendering and replacing the file waits. Rendering and
    the rename were a quarter of the recorder's CPU per sample when done every tick (bench/RESULTS.md).
    """

    def __init__(
        self,
        folder: str | Path,
        host: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        clock: Callable[[], float] = time.time,
        refresh: float = 0.0,
        grace: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(folder) / textfile_name(host, name)
        self.grace = grace  # monitoring.textfile_grace: how long the file stays once finished
        self._writer = f"# llamamon writer pid={os.getpid()} started={_started(os.getpid())!r}\n"
        self.snapshot = RunSnapshot({"host": host, "run": name} if labels is None else labels, buckets)
        self._clock = clock
        self.refresh = refresh
        self._monotonic = monotonic
        self._written_at: float | None = None

    def due(self) -> bool:
        """Whether the next ``write`` rewrites the file (the first one always does)."""
        return self._written_at is None or self._monotonic() - self._written_at >= self.refresh

    def write(
        self,
        samples: Iterable[Sample | Row] = (),
        *,
        alerts_firing: Mapping[str, int] | None = None,
    ) -> Path:
        """Add one tick's samples (histogram metrics: each sample is one observation); rewrite the file if due.

        ``alerts_firing`` is the number of alerts firing per severity now; once given, the family is
        written on every later rewrite (missing severities as 0).
        """
        self.snapshot.add(samples, default_time=self._clock())
        if alerts_firing is not None:
            self.snapshot.alerts_firing = dict(alerts_firing)
        return self._flush() if self.due() else self.path

    def finish(self, alerts_firing: Mapping[str, int] | None = None, *, grace: float | None = None) -> Path:
        """The run ended: remove the file, or with a grace (seconds; ``self.grace`` unless given) rewrite it
        with ``llamamon_run_active 0`` and its last values, for ``prune`` to remove once the grace is over;
        then prune what others left in the folder."""
        self.snapshot.active = False
        if alerts_firing is not None:
            self.snapshot.alerts_firing = dict(alerts_firing)
        grace = self.grace if grace is None else grace
        if grace <= 0:
            self.path.unlink(missing_ok=True)
        else:
            self._flush()
        self.prune(grace)
        return self.path

    def prune(self, grace: float | None = None) -> list[Path]:
        """Remove the files in this writer's folder that ended runs (past the grace) or killed writers left."""
        return prune(self.path.parent, self.grace if grace is None else grace)

    def _flush(self) -> Path:
        # Why not durable: rewritten every tick and only a view of the latest values; an fsync per tick
        # doubled the recorder's CPU per sample (bench/RESULTS.md), and the rename alone keeps it whole.
        text = self._writer + self.snapshot.render()
        path = atomic_write(self.path, text.encode("utf-8"), durable=False)
        self._written_at = self._monotonic()
        return path


def _started(pid: int) -> float:
    """The process' start time (seconds), which tells it from a later process given the same pid."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return 0.0


def _writer_alive(text: bytes) -> bool:
    found = _WRITER.search(text)
    if found is None:
        return False
    pid, started = int(found.group(1)), float(found.group(2))
    return pid > 0 and abs(_started(pid) - started) < 0.05


def stale_textfiles(folder: str | Path, grace: float, now: float | None = None) -> list[Path]:
    """llamamon's .prom files in ``folder`` that no live writer owns: a finished run's once its ``grace``
    (seconds) is over, a killed writer's at once.

    Only this host's files are judged by their writer (a pid means nothing elsewhere); another host's
    file is stale once it says ``llamamon_run_active 0`` and its grace is over.
    """
    now = time.time() if now is None else now
    here = f"llamamon-{_UNSAFE.sub('_', this_host())}-"
    try:
        paths = sorted(Path(folder).glob("llamamon-*.prom"))
    except OSError:
        return []
    stale = []
    for path in paths:
        try:
            text = path.read_bytes()
            age = now - path.stat().st_mtime
        except OSError:
            continue  # replaced or removed meanwhile: its writer is at work
        ended = _INACTIVE.search(text) is not None
        if ended:
            if age >= grace:
                stale.append(path)
        elif path.name.startswith(here) and not _writer_alive(text):
            stale.append(path)
    return stale


def prune(folder: str | Path, grace: float, now: float | None = None) -> list[Path]:
    """Remove what ``stale_textfiles`` finds; returns what was removed."""
    removed = []
    for path in stale_textfiles(folder, grace, now):
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another llamamon removed it meanwhile
        except OSError as exc:  # a folder we may write into but not delete from: the next one may
            log.debug("cannot remove %s: %s", path, exc)
            continue
        removed.append(path)
        log.info("removed %s (its run ended or its writer is gone)", path)
    return removed
