"""Shared fixtures: a CLI runner, a metrics folder, and access to outside binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
REQUIRE_INTEGRATION = os.environ.get("LLAMAMON_REQUIRE_INTEGRATION") == "1"


def require_binary(name: str, *alternatives: str) -> str:
    """Path of an outside binary; skip with a reason when absent, or fail where CI requires it."""
    for candidate in (name, *alternatives):
        found = shutil.which(candidate)
        if found:
            return found
    message = f"{name} is not installed (Debian package provides it; .ci/run installs it)"
    if REQUIRE_INTEGRATION:
        pytest.fail(f"LLAMAMON_REQUIRE_INTEGRATION=1 but {message}")
    pytest.skip(message)


def llamamon_env(**extra: str) -> dict[str, str]:
    """Environment for a child `python -m llamamon` that imports this checkout, whatever its cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("LLAMAMON_CONFIG", None)
    env.pop("LLAMAMON_RUN_ID", None)
    env.pop("LLAMAMON_METRICS_DIR", None)
    env.update(extra)
    return env


def run_llamamon(
    *args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None, **kw
) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI in a subprocess (what `record` needs: real fds, ptys and signals)."""
    return subprocess.run(
        [sys.executable, "-m", "llamamon", *args],
        cwd=cwd,
        env=env or llamamon_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
        **kw,
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / ".metrics"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Why: commands read ./monitoring.yaml and write ./.metrics; tests must never touch the checkout's.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLAMAMON_CONFIG", raising=False)
    monkeypatch.delenv("LLAMAMON_RUN_ID", raising=False)
    monkeypatch.delenv("LLAMAMON_METRICS_DIR", raising=False)


@pytest.fixture(autouse=True)
def _reset_llamamon_logging():
    # Why: the CLI configures the "llamamon" logger (own handler, no propagation) for the process;
    # after a CliRunner test that would hide later tests' records from caplog.
    yield
    import logging

    logger = logging.getLogger("llamamon")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def write_samples(metrics_dir: Path, rows, *, run: str, host: str = "testhost", name: str = "part-0") -> list[Path]:
    """Write `samples.Row`s as the store lays them out (group=/date=/run=/<name>.parquet), without a recorder."""
    import dataclasses
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llamamon.samples import labels_to_str

    parts: dict[tuple[str, str], list] = {}
    for row in rows:
        when = dt.datetime.fromtimestamp(row.time, tz=dt.timezone.utc)
        parts.setdefault((row.group, when.strftime("%Y-%m-%d")), []).append(dataclasses.replace(row))
    written = []
    for (group, date), chunk in sorted(parts.items()):
        folder = Path(metrics_dir) / f"group={group}" / f"date={date}" / f"run={run}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "time": pa.array([int(r.time * 1_000_000) for r in chunk], pa.timestamp("us", tz="UTC")),
                "host": pa.array([host] * len(chunk), pa.string()),
                "metric": pa.array([r.metric for r in chunk], pa.string()),
                "value": pa.array([float(r.value) for r in chunk], pa.float64()),
                "labels": pa.array([labels_to_str(r.labels) for r in chunk], pa.string()),
                "step": pa.array([r.step for r in chunk], pa.int64()),
            }
        )
        path = folder / f"{name}.parquet"
        pq.write_table(table, path)
        written.append(path)
    return written


def write_run(metrics_dir: Path, info) -> Path:
    """runs/<id>.json for a `samples.RunInfo`, as the store keeps run metadata."""
    import dataclasses
    import json

    path = Path(metrics_dir) / "runs" / f"{info.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(info), indent=2), encoding="utf-8")
    return path
