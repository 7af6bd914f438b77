"""Run metadata (``runs/<id>.json``): write, read, list, and resolve what a user typed to runs.

A user names runs by full id, a unique id prefix, a run name (the latest run of that name wins),
``--latest`` or ``--since 24h``; anything that matches nothing is a RunNotFound with one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamamon.errors import RunNotFound, StoreError
from llamamon.fsutil import atomic_write
from llamamon.samples import RunInfo
from llamamon.store.journal import live_runs
from llamamon.store.layout import new_run_id, run_file, runs_dir
from llamamon.units import parse_duration

log = logging.getLogger("llamamon.store")

__all__ = ["list_runs", "new_run_id", "read_run", "resolve_run", "resolve_runs", "write_run"]

_FIELDS = {f.name for f in dataclasses.fields(RunInfo)}


def write_run(metrics_dir: str | os.PathLike[str], info: RunInfo) -> Path:
    data = json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(run_file(Path(metrics_dir), info.id), data.encode())


def _from_json(data: Any) -> RunInfo:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    # Why: a newer llamamon may add fields; an older one must still list the run.
    known = {k: v for k, v in data.items() if k in _FIELDS}
    return RunInfo(**known)


def read_run(metrics_dir: str | os.PathLike[str], run_id: str) -> RunInfo:
    path = run_file(Path(metrics_dir), run_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunNotFound(f'no run "{run_id}" in {metrics_dir}') from None
    try:
        return _from_json(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{path}: unreadable run metadata ({exc})") from None


def list_runs(metrics_dir: str | os.PathLike[str]) -> list[RunInfo]:
    """Every run with metadata, oldest start first; an unreadable file is warned about and skipped."""
    folder = runs_dir(Path(metrics_dir))
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    runs = []
    for path in paths:
        try:
            runs.append(_from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: unreadable run metadata (%s); skipped", path, exc)
    runs.sort(key=lambda r: (r.start, r.id))
    return runs


def resolve_run(metrics_dir: str | os.PathLike[str], ref: str, runs: list[RunInfo] | None = None) -> RunInfo:
    """Exact id, else unique id prefix, else name (latest run with that name)."""
    runs = list_runs(metrics_dir) if runs is None else runs
    for run in runs:
        if run.id == ref:
            return run
    by_prefix = [r for r in runs if r.id.startswith(ref)] if ref else []
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        shown = ", ".join(r.id for r in by_prefix[:3]) + (", …" if len(by_prefix) > 3 else "")
        raise RunNotFound(f'run prefix "{ref}" is ambiguous in {metrics_dir}: {len(by_prefix)} runs ({shown})')
    by_name = [r for r in runs if r.name == ref]
    if by_name:
        return by_name[-1]
    raise RunNotFound(f'no run matches "{ref}" in {metrics_dir} (see `llamamon runs`)')


def resolve_runs(
    metrics_dir: str | os.PathLike[str],
    ids: Iterable[str] = (),
    latest: bool = False,
    since: float | str | None = None,
    now: float | None = None,
) -> list[RunInfo]:
    """Runs named by ``ids``, plus the latest, plus those active in the last ``since`` (seconds or "24h").

    With no selector at all, every run. "Active" means started or ended inside the window, or still
    being recorded (a live journal writer; a run that crashed without an end time is not "running").
    The result is deduplicated and sorted by start.
    """
    runs = list_runs(metrics_dir)
    ids = list(ids)
    if not ids and not latest and since is None:
        return runs
    chosen: dict[str, RunInfo] = {}
    for ref in ids:
        run = resolve_run(metrics_dir, ref, runs)
        chosen[run.id] = run
    if latest:
        if not runs:
            raise RunNotFound(f"no runs recorded in {metrics_dir} yet")
        chosen[runs[-1].id] = runs[-1]
    if since is not None:
        window = parse_duration(since, path="--since") if isinstance(since, str) else float(since)
        cutoff = (time.time() if now is None else now) - window
        live = live_runs(Path(metrics_dir))
        for run in runs:
            if run.start >= cutoff or (run.end or 0) >= cutoff or run.id in live:
                chosen[run.id] = run
    return sorted(chosen.values(), key=lambda r: (r.start, r.id))


def run_ends(runs: Iterable[RunInfo]) -> dict[str, float]:
    """Run id -> end time (Unix seconds) of the runs that ended: where the rules stop hearing from a run."""
    return {r.id: r.end for r in runs if r.end is not None}
