"""Read the store as one polars LazyFrame; a corrupt file is named in a warning and skipped, never fatal.

Partition folders are pruned by name (group, date, run) before any file is opened; every remaining
file's footer is checked once (the verdict is cached by path, size and mtime, since finished files are
immutable), so a store of thousands of files scans quickly and ``watch`` can rescan every tick.
Files superseded by a compacted file (named in its footer) are left out, so a reader never sees a
row twice even while, or after being killed while, compaction removes them.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from llamamon.store import parquet
from llamamon.store.journal import segment_paths
from llamamon.store.layout import is_data_file, iter_partitions, utc_date
from llamamon.store.segment_reader import tail_segment

log = logging.getLogger("llamamon.store")

FILE_SCHEMA: dict[str, pl.DataType] = {
    "time": pl.Datetime("us", "UTC"),
    "host": pl.String(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "labels": pl.String(),
    "step": pl.Int64(),
}
HIVE_SCHEMA: dict[str, pl.DataType] = {"group": pl.String(), "date": pl.Date(), "run": pl.String()}
SCHEMA: dict[str, pl.DataType] = {**FILE_SCHEMA, **HIVE_SCHEMA}

_Verdict = tuple[int, list[str]] | str
_verdicts: dict[str, tuple[int, int, _Verdict]] = {}


def _to_unix(since: float | datetime | None) -> float | None:
    if since is None or isinstance(since, (int, float)):
        return since
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware (UTC)")
    return since.timestamp()


def check_file(path: Path) -> tuple[int, list[str]] | None:
    """(rows, replaced sibling names) of a valid data file, None (after one warning) for a corrupt one."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    key = str(path)
    cached = _verdicts.get(key)
    if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
        verdict = cached[2]
    else:
        try:
            verdict = parquet.inspect(path)
        except parquet.CorruptFile as exc:
            verdict = str(exc)
            log.warning("%s", verdict)
        if len(_verdicts) > 200_000:  # a long-lived `watch` over a store that gc and compaction keep changing
            _verdicts.clear()
        _verdicts[key] = (st.st_size, st.st_mtime_ns, verdict)
    return None if isinstance(verdict, str) else verdict


def partition_files(folder: Path) -> list[Path]:
    """The valid, current data files of one partition folder (superseded and corrupt ones left out)."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and is_data_file(e.name))
    except FileNotFoundError:
        return []
    valid: dict[str, Path] = {}
    replaced: set[str] = set()
    for name in names:
        verdict = check_file(folder / name)
        if verdict is not None:
            valid[name] = folder / name
            replaced.update(verdict[1])
    return [path for name, path in valid.items() if name not in replaced]


def data_files(
    metrics_dir: str | os.PathLike[str],
    groups: list[str] | set[str] | None = None,
    runs: list[str] | set[str] | None = None,
    since: float | datetime | None = None,
) -> list[Path]:
    since_ts = _to_unix(since)
    min_date = utc_date(since_ts) if since_ts is not None else None
    files: list[Path] = []
    partitions = iter_partitions(
        Path(metrics_dir),
        groups=set(groups) if groups is not None else None,
        runs=set(runs) if runs is not None else None,
        min_date=min_date,
    )
    for _group, _date, _run, folder in partitions:
        files.extend(partition_files(folder))
    return files


def empty_frame() -> pl.LazyFrame:
    return pl.LazyFrame(schema=SCHEMA)


def scan(
    metrics_dir: str | os.PathLike[str],
    groups: list[str] | set[str] | None = None,
    runs: list[str] | set[str] | None = None,
    since: float | datetime | None = None,
) -> pl.LazyFrame:
    """All stored rows (optionally of some groups / runs / from ``since`` on) with the store's dtypes.

    Columns: time (UTC), host, metric, value, labels, step, group, date, run. An empty or missing store
    gives an empty frame with that schema. Rows still in a live writer's journal (at most one flush
    interval) are not included.
    """
    files = data_files(metrics_dir, groups, runs, since)
    if not files:
        return empty_frame()
    frame = pl.scan_parquet(
        [str(f) for f in files],
        hive_partitioning=True,
        hive_schema=HIVE_SCHEMA,
        glob=False,
    ).select([pl.col(name).cast(dtype) for name, dtype in SCHEMA.items()])
    since_ts = _to_unix(since)
    if since_ts is not None:
        frame = frame.filter(pl.col("time") >= datetime.fromtimestamp(since_ts, tz=timezone.utc))
    return frame


def stored_ticks(metrics_dir: str | os.PathLike[str], run_id: str) -> int:
    """How many of a recorder's ticks are on disk, in Parquet and in the journal: its system rows' distinct times.

    Why: a run whose ``record`` was killed (or still runs) has no sample count in its metadata yet, and every
    tick stores its system rows at the tick's one time. Distinct times, because a segment being flushed is
    for a moment in Parquet and in the journal at once.
    """
    stored = scan(metrics_dir, groups=["system"], runs=[run_id]).select(pl.col("time").dt.epoch("us").unique())
    ticks = set(stored.collect().to_series().to_list())
    for path in segment_paths(Path(metrics_dir), run_id):
        _header, rows, _blocks, _offset = tail_segment(path)  # the recorder writes row lines, never blocks
        ticks.update(round(row.time * 1_000_000) for row in rows if row.group == "system")
    return len(ticks)


def metric_names(
    metrics_dir: str | os.PathLike[str], names: set[str] | None = None, runs: list[str] | set[str] | None = None
) -> set[str]:
    """Which of ``names`` (None: every name) the store holds, in any run or only ``runs``.

    Why a question about given names: checking a rule's metrics against a large store then reads one
    filtered column (Parquet's statistics skip row groups that cannot hold the names), not every name.
    """
    frame = scan(metrics_dir, runs=runs).select("metric")
    if names is not None:
        frame = frame.filter(pl.col("metric").is_in(sorted(names)))
    return set(frame.unique().collect()["metric"].to_list())
