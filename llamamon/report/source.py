"""The report's door into the store: which runs, and a lazy frame of their samples.

Kept to two functions so that switching to ``llamamon.store.reader.scan`` and ``llamamon.store.runs``
touches nothing else in the report.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.errors import RunNotFound, StoreError
from llamamon.samples import RunInfo

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("llamamon.report")

_RUN_ID = re.compile(r"^(?P<ts>\d{8}T\d{6}Z)-(?P<host>.+)-[0-9a-f]{4}$")


def _run_from_json(path: Path) -> RunInfo | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(RunInfo)}
        return RunInfo(**{k: v for k, v in raw.items() if k in known})
    except (OSError, ValueError, TypeError) as exc:
        log.warning("skipping unreadable run metadata %s: %s", path, exc)
        return None


def _run_from_id(run_id: str) -> RunInfo:
    """Metadata for a run that left samples but no runs/<id>.json (killed before it wrote one)."""
    m = _RUN_ID.match(run_id)
    if m:
        start = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        return RunInfo(id=run_id, host=m["host"], start=start)
    return RunInfo(id=run_id, host="", start=0.0)


def list_runs(metrics_dir: Path) -> list[RunInfo]:
    """Every run with metadata or samples, oldest first."""
    runs: dict[str, RunInfo] = {}
    for path in sorted((metrics_dir / "runs").glob("*.json")):
        info = _run_from_json(path)
        if info is not None:
            runs[info.id] = info
    for run_dir in metrics_dir.glob("group=*/date=*/run=*"):
        run_id = run_dir.name.removeprefix("run=")
        if run_id not in runs:
            runs[run_id] = _run_from_id(run_id)
    return sorted(runs.values(), key=lambda r: (r.start, r.id))


def resolve_runs(
    metrics_dir: Path, ids: tuple[str, ...] = (), latest: bool = False, since: float | None = None
) -> list[RunInfo]:
    """Runs chosen on the command line: ids (or names, or unique id prefixes), the latest, or those since."""
    if not metrics_dir.is_dir():
        raise StoreError(f"no metrics folder at {metrics_dir} (record a run with `llamamon record -- CMD`)")
    runs = list_runs(metrics_dir)
    if not runs:
        raise StoreError(f"no runs recorded in {metrics_dir} (record one with `llamamon record -- CMD`)")
    chosen: list[RunInfo] = []
    for wanted in ids:
        matches = [r for r in runs if r.id == wanted or r.name == wanted]
        if not matches:
            matches = [r for r in runs if r.id.startswith(wanted)]
        if len(matches) != 1:
            known = ", ".join(r.id for r in runs[-5:])
            what = "matches no run" if not matches else f"matches {len(matches)} runs"
            raise RunNotFound(f"run {wanted!r} {what} in {metrics_dir} (latest: {known})")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    if since is not None:
        cutoff = time.time() - since
        chosen.extend(r for r in runs if (r.end is None or r.end >= cutoff) and r not in chosen)
        if not chosen:
            raise RunNotFound(f"no run in {metrics_dir} was active in the last {since:.0f}s")
    if (latest or not chosen) and runs[-1] not in chosen:
        chosen.append(runs[-1])
    return chosen


def _looks_whole(path: Path) -> bool:
    """Cheap check for the usual damage (a torn or truncated write): Parquet starts and ends with PAR1."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            fh.seek(-4, 2)
            return head == b"PAR1" and fh.read(4) == b"PAR1"
    except OSError:
        return False


def _readable(path: Path) -> str | None:
    """Why a file cannot be read (its footer does not parse), or None."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, by name, never fatal
        return str(exc) or type(exc).__name__
    return None


def sample_files(
    metrics_dir: Path, runs: list[str] | None = None, thorough: bool = False
) -> tuple[list[str], list[str]]:
    """Parquet files of these runs, and those skipped as unreadable (relative paths, for the report)."""
    good: list[str] = []
    skipped: list[str] = []
    for path in sorted(metrics_dir.glob("group=*/date=*/run=*/*.parquet")):
        if runs is not None and path.parent.name.removeprefix("run=") not in runs:
            continue
        reason = _readable(path) if thorough else (None if _looks_whole(path) else "not a whole Parquet file")
        if reason is not None:
            log.warning("skipping unreadable file %s: %s", path, reason)
            skipped.append(str(path.relative_to(metrics_dir)))
            continue
        good.append(str(path))
    return good, skipped


def scan_samples(
    metrics_dir: Path, runs: list[str] | None = None, since: float | None = None, thorough: bool = False
) -> tuple[pl.LazyFrame | None, list[str]]:
    """Lazy frame of the chosen runs' samples, and the files skipped as unreadable (named in the report).

    The default check only looks at each file's magic bytes; ``thorough`` parses every footer, for the
    retry after a query hit a file damaged in the middle.
    """
    import polars as pl

    good, skipped = sample_files(metrics_dir, runs, thorough)
    if not good:
        return None, skipped
    lf = pl.scan_parquet(
        good,
        hive_partitioning=True,
        hive_schema={"group": pl.String, "date": pl.Date, "run": pl.String},
    )
    if since is not None:
        cutoff = datetime.fromtimestamp(time.time() - since, tz=timezone.utc)
        lf = lf.filter(pl.col("time") >= cutoff)
    return lf, skipped
