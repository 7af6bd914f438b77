"""``.prom`` files for node_exporter's textfile collector: one file per writer, replaced atomically.

The recorder (``record``) and the watcher (``watch``) own one ``TextfileWriter`` each and call
``write(samples)`` on every tick with the samples of that tick; ``finish()`` at the end rewrites the
file with ``llamamon_run_active 0`` so a finished run's last numbers never look live. Files carry no
timestamps (node_exporter rejects them); freshness is ``llamamon_last_sample_timestamp_seconds``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from llamamon.fsutil import atomic_write
from llamamon.prometheus.snapshot import DEFAULT_BUCKETS, RunSnapshot
from llamamon.samples import Row, Sample

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def textfile_folder(metrics_path: str | Path, textfile_dir: str | Path | None = None) -> Path:
    """Where .prom files go: ``monitoring.textfile_dir`` if set, else ``<metrics_path>/prometheus``."""
    return Path(textfile_dir) if textfile_dir is not None else Path(metrics_path) / "prometheus"


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(folder) / textfile_name(host, name)
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

    def finish(self, alerts_firing: Mapping[str, int] | None = None) -> Path:
        """Mark the run ended (``llamamon_run_active 0``), keeping its last values, and rewrite the file."""
        self.snapshot.active = False
        if alerts_firing is not None:
            self.snapshot.alerts_firing = dict(alerts_firing)
        return self._flush()

    def _flush(self) -> Path:
        # Why not durable: rewritten every tick and only a view of the latest values; an fsync per tick
        # doubled the recorder's CPU per sample (bench/RESULTS.md), and the rename alone keeps it whole.
        path = atomic_write(self.path, self.snapshot.render().encode("utf-8"), durable=False)
        self._written_at = self._monotonic()
        return path
