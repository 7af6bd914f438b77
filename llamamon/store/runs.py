"""Run metadata (``runs/<id>.json``): write, read, list, and resolve what a user typed to runs.

A user names runs by full id, a unique id prefix, a run name (the latest run of that name wins), a unique
run name prefix, ``--latest`` or ``--since 24h``; anything that matches nothing, or more than one run, is a
RunNotFound with one line.

What a job sets with ``llamamon.init`` under ``llamamon record`` (name, tags, config) lives in a side file
(``runs/<id>.job``) that the job writes and the recorder never does; reading and writing ``<id>.json``
merge it in, so the recorder's writes at start and exit cannot lose it.
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
from llamamon.store.layout import job_fields_file, new_run_id, run_file, runs_dir
from llamamon.units import parse_duration

log = logging.getLogger("llamamon.store")

__all__ = [
    "annotate_run",
    "group_runs",
    "list_runs",
    "new_run_id",
    "read_run",
    "resolve_run",
    "resolve_runs",
    "write_run",
]

_FIELDS = {f.name for f in dataclasses.fields(RunInfo)}


def write_run(metrics_dir: str | os.PathLike[str], info: RunInfo) -> Path:
    info = _with_job_fields(Path(metrics_dir), info)
    data = json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(run_file(Path(metrics_dir), info.id), data.encode())


def annotate_run(
    metrics_dir: str | os.PathLike[str],
    run_id: str,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Add a job's name, tags and config to a run another process writes (the recorder's): a later call adds
    to an earlier one (tags and config keys merged, the name replaced). The values must be JSON already."""
    path = job_fields_file(Path(metrics_dir), run_id)
    fields = _job_fields(path)
    if name is not None:
        fields["name"] = name
    fields["tags"] = {**fields.get("tags", {}), **(tags or {})}
    fields["config"] = {**fields.get("config", {}), **(config or {})}
    data = json.dumps(fields, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(path, data.encode())


def _job_fields(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable job fields (%s); skipped", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k in ("name", "tags", "config") if isinstance(v := data.get(k), dict if k != "name" else str)}


def _with_job_fields(metrics_dir: Path, info: RunInfo) -> RunInfo:
    fields = _job_fields(job_fields_file(metrics_dir, info.id))
    if not fields:
        return info
    return dataclasses.replace(
        info,
        name=fields.get("name", info.name),
        tags={**info.tags, **fields.get("tags", {})},
        config={**info.config, **fields.get("config", {})},
    )


def _from_json(data: Any, metrics_dir: Path) -> RunInfo:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    # Why: a newer llamamon may add fields; an older one must still list the run.
    known = {k: v for k, v in data.items() if k in _FIELDS}
    return _with_job_fields(metrics_dir, RunInfo(**known))


def read_run(metrics_dir: str | os.PathLike[str], run_id: str) -> RunInfo:
    path = run_file(Path(metrics_dir), run_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunNotFound(f'no run "{run_id}" in {metrics_dir}') from None
    try:
        return _from_json(json.loads(text), Path(metrics_dir))
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
            runs.append(_from_json(json.loads(path.read_text(encoding="utf-8")), Path(metrics_dir)))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: unreadable run metadata (%s); skipped", path, exc)
    runs.sort(key=lambda r: (r.start, r.id))
    return runs


def resolve_run(metrics_dir: str | os.PathLike[str], ref: str, runs: list[RunInfo] | None = None) -> RunInfo:
    """Exact id, else unique id prefix, else name (latest run with that name), else unique name prefix."""
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
    names = sorted({r.name for r in runs if r.name and r.name.startswith(ref)}) if ref else []
    if len(names) == 1:
        return [r for r in runs if r.name == names[0]][-1]
    if len(names) > 1:
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        raise RunNotFound(f'run name prefix "{ref}" is ambiguous in {metrics_dir}: {len(names)} names ({shown})')
    raise RunNotFound(f'no run matches "{ref}" in {metrics_dir} (see `llamamon runs`)')


def resolve_runs(
    metrics_dir: str | os.PathLike[str],
    ids: Iterable[str] = (),
    latest: bool = False,
    since: float | str | None = None,
    now: float | None = None,
    group: str | None = None,
) -> list[RunInfo]:
    """Runs named by ``ids``, plus the latest, plus those active in the last ``since`` (seconds or "24h"),
    plus every run of the run ``group`` (a multi-node job: see :func:`group_runs`).

    With no selector at all, every run. "Active" means started or ended inside the window, or still
    being recorded (a live journal writer; a run that crashed without an end time is not "running").
    The result is deduplicated and sorted by start.
    """
    runs = list_runs(metrics_dir)
    ids = list(ids)
    if not ids and not latest and since is None and group is None:
        return runs
    chosen: dict[str, RunInfo] = {r.id: r for r in group_runs(runs, group, metrics_dir)} if group else {}
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


def group_runs(runs: Iterable[RunInfo], group: str, where: str | os.PathLike[str]) -> list[RunInfo]:
    """The runs of run group ``group``, in ``runs``' order; none is a RunNotFound listing the known groups.

    Why one function: ``runs --group``, ``report --group`` and ``alerts test --group`` must mean the same job."""
    runs = list(runs)
    found = [r for r in runs if r.run_group == group]
    if found:
        return found
    known = sorted({r.run_group for r in runs if r.run_group})
    shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
    raise RunNotFound(f'no run group "{group}" in {where} (' + (f"known: {shown})" if known else "no run has a group)"))


def group_status(runs: Iterable[RunInfo], live: set[str]) -> str:
    """A job's status from its runs': running while any runs, else failed if any failed, else unfinished if
    any was killed, else finished."""
    states = {run_status(r, live) for r in runs}
    return next((s for s in ("running", "failed", "unfinished") if s in states), "finished")


def run_status(run: RunInfo, live: set[str]) -> str:
    """running (a live recorder or job), unfinished (no end and nobody writing: killed), failed (a non-zero
    exit or a signal) or finished."""
    if run.end is None:
        return "running" if run.id in live else "unfinished"
    return "failed" if run.signal is not None or (run.exit_code or 0) != 0 else "finished"


def select_runs(
    runs: Iterable[RunInfo],
    tags: dict[str, str] | None = None,
    name: str | None = None,
    status: str | None = None,
    live: set[str] | None = None,
) -> list[RunInfo]:
    """The runs with every one of ``tags``, a name matching the glob ``name`` and the given ``status``."""
    import fnmatch

    out = []
    for run in runs:
        if tags and any(run.tags.get(k) != v for k, v in tags.items()):
            continue
        if name is not None and not fnmatch.fnmatchcase(run.name or "", name):
            continue
        if status is not None and run_status(run, live or set()) != status:
            continue
        out.append(run)
    return out


def run_ends(runs: Iterable[RunInfo]) -> dict[str, float]:
    """Run id -> end time (Unix seconds) of the runs that ended: where the rules stop hearing from a run."""
    return {r.id: r.end for r in runs if r.end is not None}
