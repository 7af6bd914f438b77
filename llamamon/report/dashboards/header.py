"""Each run's header: outcome, duration, host, command, commit, tags and hyperparameters."""

from __future__ import annotations

import json
import shlex
import signal as _signal
from collections.abc import Sequence
from datetime import tzinfo

from llamamon.report.dashboards.values import format_time
from llamamon.report.data import ReportData
from llamamon.samples import RunInfo
from llamamon.units import format_duration


def run_status(run: RunInfo) -> tuple[str, str]:
    """(text, css class) for a run's outcome: exit code, signal, or still running / unknown."""
    if run.signal:
        try:
            name = _signal.Signals(run.signal).name
        except ValueError:
            name = f"signal {run.signal}"
        return f"killed by {name} (signal {run.signal})", "bad"
    if run.exit_code is not None:
        return (
            (f"succeeded (exit {run.exit_code})", "good")
            if run.exit_code == 0
            else (
                f"failed (exit {run.exit_code})",
                "bad",
            )
        )
    if run.end is None:
        return "running, or stopped without recording its end", "unknown"
    return "ended (no exit code recorded)", "unknown"


def run_header(run: RunInfo, data: ReportData, zone: tzinfo) -> dict[str, object]:
    status, cls = run_status(run)
    start = run.start or None
    end = run.end
    bounds = data.run_bounds.get(run.id)
    if end is None and bounds:
        end = bounds[1]
    duration = format_duration(end - run.start) if end is not None and run.start else "–"
    commit = run.git_commit or "–"
    if run.git_commit and run.git_dirty:
        commit += " (uncommitted changes)"
    return {
        "id": run.id,
        "name": run.name or run.id,
        "named": bool(run.name) and run.name != run.id,  # the id is then printed beside the name, else once
        "status": status,
        "status_class": cls,
        "start": format_time(start, zone),
        "duration": duration + ("" if run.end is not None else " so far"),
        "host": (run.host or "–") + _job_text(run),
        "cpu": run.cpu_model or "–",
        "gpus": ", ".join(run.gpu_names) if run.gpu_names else gpu_reason([run]),
        "command": shlex.join(run.command) if run.command else "–",
        "commit": commit,
        "tags": sorted(run.tags.items()),
        "config": config_items(run.config),
        "cwd": run.cwd,
    }


def _job_text(run: RunInfo) -> str:
    """Where the run sits in a multi-node job, beside its host: `` (run group job1, node 2, rank 17)``."""
    bits = [f"run group {run.run_group}"] if run.run_group else []
    bits += [f"{what} {n}" for what, n in (("node", run.node_rank), ("rank", run.rank)) if n is not None]
    return f" ({', '.join(bits)})" if bits else ""


def config_items(config: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """The job's hyperparameters (``llamamon.init(config=...)``) as (dotted key, text) rows, nesting flattened."""
    rows: list[tuple[str, str]] = []
    for key, value in sorted(config.items()):
        if isinstance(value, dict) and value:
            rows.extend(config_items(value, f"{prefix}{key}."))
        else:
            rows.append((prefix + key, value if isinstance(value, str) else json.dumps(value)))
    return rows


def gpu_reason(runs: Sequence[RunInfo]) -> str:
    for r in runs:
        reason = r.gpu.get("reason") if isinstance(r.gpu, dict) else None
        if reason:
            return f"No GPU data: {reason}"
    return "No GPU data recorded (no NVIDIA GPU/driver seen, or recorded with --no-gpu)."
