"""Shared fixtures: a CLI runner, a metrics folder, and access to outside binaries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest
from click.testing import CliRunner
from loopback import HttpSink, SmtpServer

from llamamon.samples import Row, labels_to_str

REPO = Path(__file__).resolve().parents[1]
REQUIRE_INTEGRATION = os.environ.get("LLAMAMON_REQUIRE_INTEGRATION") == "1"


def require_binary(name: str, *alternatives: str) -> str:
    """Path of an outside binary; skip with a reason when absent, or fail where CI requires it."""
    for candidate in (name, *alternatives):
        found = shutil.which(candidate)
        if found:
            return found
    missing_integration(f"{name} is not installed (Debian package provides it; .ci/run installs it)")


def missing_integration(message: str) -> NoReturn:
    """Skip with the reason, or fail where CI requires every integration test to run."""
    if REQUIRE_INTEGRATION:
        pytest.fail(f"LLAMAMON_REQUIRE_INTEGRATION=1 but {message}")
    pytest.skip(message)


def promtool_labels(text: str) -> dict[str, str]:
    """``{a="1", b="x\\"y"}`` as promtool prints label sets in its reports -> a dict."""
    return {k: v for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text)}


LAUNCHER_ENV = ("LLAMAMON_GROUP", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_NODEID", "SLURM_PROCID", "NODE_RANK")
LAUNCHER_ENV += ("GROUP_RANK", "RANK", "LOCAL_RANK")


def llamamon_env(**extra: str) -> dict[str, str]:
    """Environment for a child `python -m llamamon` that imports this checkout, whatever its cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("LLAMAMON_CONFIG", None)
    env.pop("LLAMAMON_RUN_ID", None)
    env.pop("LLAMAMON_METRICS_DIR", None)
    env.pop("LLAMAMON_HOST", None)
    for name in LAUNCHER_ENV:  # a test run inside a SLURM job or under torchrun must not group its runs
        env.pop(name, None)
    # The built-in channels' variables: a developer's real Slack or mail server never hears from a test.
    env.pop("SLACK_WEBHOOK_URL", None)
    env.pop("SMTP_SERVER", None)
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


def run_python(code: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet (dedented) in a fresh interpreter that imports this checkout."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=llamamon_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_row_lines(rows: Iterable[Row]) -> bytes:
    """Journal row lines the plain way, json.dumps per row: the reference encode_fields must match."""
    return b"".join(
        (json.dumps([r.time, r.group, r.metric, r.value, labels_to_str(r.labels), r.step]) + "\n").encode()
        for r in rows
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
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sink():
    """A loopback HTTP server that records every request (Slack, webhooks, Alertmanager)."""
    server = HttpSink()
    yield server
    server.close()


@pytest.fixture
def smtp():
    """A loopback SMTP server that keeps every mail."""
    server = SmtpServer()
    yield server
    server.close()


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


def write_samples(
    metrics_dir: Path,
    rows: list[tuple],
    *,
    run: str = "20260101T000000Z-testhost-0001",
    host: str = "testhost",
    write_run: bool = True,
) -> Path:
    """Write rows ``(unix_time, metric, value[, labels_dict[, step]])`` straight into the store layout.

    One Parquet file per (group, date) partition of ``run``, plus runs/<run>.json, so rules and report
    tests need no recorder. Groups come from the catalog (unknown names go to "custom").
    """
    import json as _json
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from llamamon.catalog import group_of
    from llamamon.samples import labels_to_str, make_labels

    schema = pa.schema(
        [
            ("time", pa.timestamp("us", tz="UTC")),
            ("host", pa.string()),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("labels", pa.string()),
            ("step", pa.int64()),
        ]
    )
    parts: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        t, metric, value = row[0], row[1], row[2]
        labels = row[3] if len(row) > 3 else None
        step = row[4] if len(row) > 4 else None
        when = datetime.fromtimestamp(t, tz=timezone.utc)
        key = (group_of(metric), when.strftime("%Y-%m-%d"))
        parts.setdefault(key, []).append(
            {
                "time": when,
                "host": host,
                "metric": metric,
                "value": float(value),
                "labels": labels_to_str(make_labels(labels)),
                "step": step,
            }
        )
    for (group, date), items in parts.items():
        folder = metrics_dir / f"group={group}" / f"date={date}" / f"run={run}"
        folder.mkdir(parents=True, exist_ok=True)
        n = len(list(folder.glob("*.parquet")))
        pq.write_table(pa.Table.from_pylist(items, schema=schema), folder / f"part-{n:04d}.parquet")
    if write_run and rows:
        (metrics_dir / "runs").mkdir(parents=True, exist_ok=True)
        start = min(r[0] for r in rows)
        end = max(r[0] for r in rows)
        info = {"id": run, "host": host, "start": start, "end": end, "exit_code": 0, "source": "record"}
        (metrics_dir / "runs" / f"{run}.json").write_text(_json.dumps(info), encoding="utf-8")
    return metrics_dir
