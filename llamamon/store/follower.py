"""Following runs as they are recorded: one tail of their live journal segments for every live reader.

Why one: inside ``record`` both the live alerts and the .prom file read what the job logs itself
(``llamamon.log``), and ``watch`` reads every run; each segment is tailed from its last byte offset once,
whoever asks first. A segment folded into Parquet between two polls is caught up from the Parquet file it
became; a run that ended is marked so its alerts end with it. The store only stores: rows are handed to the
reader's ``RunRows`` (rows of a run, rows caught up from Parquet, a run that ended), never interpreted here.

Column blocks (a flush of ``llamamon.log()`` calls, maybe a million points) are never decoded whole unless
a reader needs every row: the live window takes every row of the metrics its rules read plus the block's
latest row (how far the run has got); the .prom file each series' latest row and every row of a histogram
metric (each value is an observation).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterable
from operator import attrgetter
from pathlib import Path
from typing import Protocol

from llamamon import catalog
from llamamon.errors import RunNotFound
from llamamon.samples import Row, labels_from_str
from llamamon.store.journal import segment_paths
from llamamon.store.layout import run_file, runs_dir
from llamamon.store.segment_reader import ColumnBlock, tail_segment

# A row in the live window's shape: (time in microseconds as the store rounds it, run, host, metric, value,
# labels, stale)
Entry = tuple[int, str, str, str, float, str, bool]
# Rows of one run handed to the reader by one poll: (rows, run, host)
Batch = tuple[list[Row], str, str]


class RunRows(Protocol):
    """The live window a follower feeds (``runtime.live_alerts.LiveAlerts``)."""

    window: float  # seconds of a run's rows it keeps: how far back the store is caught up
    raw_metrics: set[str]  # the metrics of which it needs every row

    def add(self, rows: Iterable[Row], run: str, host: str) -> None: ...

    def add_entries(self, entries: Iterable[Entry]) -> None: ...

    def end_run(self, run: str, at: float) -> float: ...

    def last_time(self, run: str) -> float | None: ...


class RunFollower:
    """Follows the runs recorded into a metrics folder (``only`` some), feeding their new rows into ``live``.

    ``metrics``: more metrics of which ``live.add`` gets every row (``watch``'s view). ``latest``: also keep
    each series' latest rows for ``take_latest`` (the .prom file). ``live`` None: only that.
    Why a lock: ``record`` polls from its evaluation thread and takes the latest rows on its sampler's tick.
    """

    def __init__(
        self,
        metrics_dir: Path,
        live: RunRows | None,
        only: set[str] | None = None,
        *,
        skip_pid: int | None = None,
        metrics: Collection[str] = (),
        latest: bool = False,
    ) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.live = live
        self.only = only
        self.skip_pid = skip_pid  # segments this process writes itself (record's own samples)
        self.skipped: set[Path] = set()
        self.offsets: dict[Path, int] = {}
        self.segment_run: dict[Path, tuple[str, str]] = {}
        self.hosts: dict[str, str] = {}  # followed run -> host
        self.ended: dict[str, float] = {}
        self.known_files: set[str] = set()
        # Metrics whose every row live.add needs; of the others a column block gives only its latest row.
        self.metrics: set[str] = set(live.raw_metrics if live is not None else ()) | set(metrics)
        self._latest: list[Row] | None = [] if latest else None
        self._lock = threading.Lock()

    @classmethod
    def own_run(cls, metrics_dir: Path, run_id: str, live: RunRows | None, *, latest: bool) -> RunFollower:
        """``record``'s follower of its own run: only what the job writes itself (the recorder's segments,
        this pid's, are skipped: its rows come from its ticks)."""
        follower = cls(metrics_dir, live, {run_id}, skip_pid=os.getpid(), latest=latest)
        # Why: the run's file appearing is no news to its own recorder; catching the run up from the store
        # would re-read our own rows through polars.
        follower.known_files.add(run_file(metrics_dir, run_id).name)
        return follower

    def _wanted(self, run: str) -> bool:
        return self.only is None or run in self.only

    def start(self, now: float) -> None:
        """Load the trailing window from the store, once."""
        assert self.live is not None
        self.known_files = set(_names(runs_dir(self.metrics_dir)))
        self._catch_up(None, now - self.live.window)

    def _catch_up(self, run: str | None, since: float) -> None:
        """Rows already folded into Parquet (of one run, or of all followed runs) from ``since`` on."""
        import polars as pl

        from llamamon.store.reader import scan

        assert self.live is not None
        runs = [run] if run is not None else (sorted(self.only) if self.only is not None else None)
        frame = (
            scan(self.metrics_dir, runs=runs, since=since)
            .filter(pl.col("metric").is_in(sorted(self.live.raw_metrics)))
            .select(
                pl.col("time").dt.epoch("us"),
                pl.col("run").cast(pl.String),
                pl.col("host").fill_null(""),
                "metric",
                "value",
                pl.col("labels").fill_null(""),
                pl.lit(False).alias("stale"),
            )
            .collect()
        )
        entries: list[Entry] = list(frame.iter_rows())
        self.live.add_entries(entries)
        for _t, run_id, host, *_ in entries:
            self.hosts.setdefault(run_id, host)

    def poll(self, now: float) -> list[Batch]:
        """Read what the runs appended, catch up what was folded away, note runs that started or ended;
        returns the batches handed to ``live``."""
        with self._lock:
            batches, present = self._tail()
            if self.live is not None:
                self._follow_up(present, now)
            return batches

    def take_latest(self) -> list[Row]:
        """The latest rows of each series since the last call, in time order (``latest=True``).

        Never waits: while a poll is under way in another thread (maybe a Parquet catch-up), what it reads
        is kept for the next call.
        """
        assert self._latest is not None
        if not self._lock.acquire(blocking=False):
            return []
        try:
            self._tail()
            rows, self._latest = self._latest, []
        finally:
            self._lock.release()
        rows.sort(key=attrgetter("time"))
        return rows

    def _segments(self) -> list[Path]:
        if self.only is None:
            return segment_paths(self.metrics_dir)
        return [path for run in sorted(self.only) for path in segment_paths(self.metrics_dir, run)]

    def _tail(self) -> tuple[list[Batch], set[Path]]:
        """New bytes of every followed segment, handed out; returns them and the segments on disk."""
        batches: list[Batch] = []
        present = set()
        for path in self._segments():
            run = path.parent.name
            if not self._wanted(run) or run in self.ended or path in self.skipped:
                continue
            present.add(path)
            header, rows, blocks, offset = tail_segment(path, self.offsets.get(path, 0))
            if header is not None and self.skip_pid is not None and header.get("pid") == self.skip_pid:
                # Why before the offset is kept: a tracked segment that vanishes is caught up from the
                # store, and record's own segments vanish into Parquet every flush.
                self.skipped.add(path)
                continue
            self.offsets[path] = offset
            if header is not None:
                host = str(header.get("host") or "")
                self.segment_run[path] = (str(header.get("run") or run), host)
            run, host = self.segment_run.get(path, (run, ""))
            if self._latest is not None:
                self._latest.extend(rows)
                for block in blocks:
                    self._latest.extend(latest_rows(block))
            if self.live is None:
                continue
            self.hosts.setdefault(run, host)
            for block in blocks:
                rows.extend(self._rows_of(block))
            if rows:
                self.live.add(rows, run, host)
                batches.append((rows, run, host))
        return batches, present

    def _follow_up(self, present: set[Path], now: float) -> None:
        assert self.live is not None
        for path in [p for p in self.offsets if p not in present]:
            # Folded into Parquet since the last poll: its last rows may never have been tailed.
            del self.offsets[path]
            run, _host = self.segment_run.pop(path, (path.parent.name, ""))
            if run not in self.ended:
                self._catch_up(run, self.live.last_time(run) or now - self.live.window)
        for name in _names(runs_dir(self.metrics_dir)):
            if name in self.known_files:
                continue
            self.known_files.add(name)
            run = name.removesuffix(".json")
            if self._wanted(run) and run not in self.hosts:
                # Started (and maybe already ended) between two polls, before we saw a journal of it.
                self._catch_up(run, now - self.live.window)
        self._check_ends(now)

    def _rows_of(self, block: ColumnBlock) -> list[Row]:
        """The rows of the metrics wanted, and the block's latest row: a job logging many metrics at a high
        rate is never decoded whole, and the window still learns how far the run has got."""
        rows = block.rows_of(self.metrics)
        if block.times:
            latest = block.times.index(max(block.times))
            if block.series[block.codes[latest]][1] not in self.metrics:
                rows.append(block.row(latest))
        return rows

    def _check_ends(self, now: float) -> None:
        from llamamon.store.runs import read_run

        assert self.live is not None
        for run in [r for r in self.hosts if r not in self.ended]:
            try:
                info = read_run(self.metrics_dir, run)
            except (RunNotFound, OSError, ValueError):
                continue  # rows logged without `record` (llamamon.log): the lookback ends them
            if info.end is None:
                continue
            # Everything the run wrote is on disk by the time its end is: take what we have not seen.
            self._catch_up(run, self.live.last_time(run) or now - self.live.window)
            self.ended[run] = self.live.end_run(run, info.end)
        cutoff = now - self.live.window
        for run in [r for r, t in self.ended.items() if t < cutoff]:
            del self.ended[run]
            self.hosts.pop(run, None)

    def running(self) -> list[str]:
        return sorted(r for r in self.hosts if r not in self.ended)


def latest_rows(block: ColumnBlock) -> list[Row]:
    """Each series' last row by time (the later one on a tie), and every row of a histogram metric."""
    if any(_is_histogram(metric) for _, metric in block.series):
        return block.rows()
    times = block.times
    last: dict[int, int] = {}
    for index, code in enumerate(block.codes):
        seen = last.get(code)
        if seen is None or times[index] >= times[seen]:
            last[code] = index
    labels = labels_from_str(block.labels)
    return [block.row(index, labels) for index in last.values()]


def _is_histogram(name: str) -> bool:
    metric = catalog.get(name)
    return metric is not None and metric.kind == "histogram"


def _names(folder: Path) -> list[str]:
    try:
        return [n for n in os.listdir(folder) if n.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return []
