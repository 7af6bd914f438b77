"""`llamamon compact` and `llamamon gc` (thin commands over store.compaction / store.retention)."""

from __future__ import annotations

import time

from llamamon.cli import cli
from llamamon.samples import Row, RunInfo
from llamamon.store.reader import scan
from llamamon.store.runs import write_run
from llamamon.store.writer import StoreWriter
from tests.conftest import run_llamamon

RUN = "20251127T120000Z-h-aaaa"
T0 = 1_764_244_800.0


def _record(root, flushes=3):
    with StoreWriter(root, RUN, "h", flush_interval=1e9) as writer:
        for k in range(flushes):
            writer.append([Row(T0 + k, "system", "cpu_usage", float(k))])
            writer.flush()
    write_run(root, RunInfo(id=RUN, host="h", start=T0, end=T0 + 10))


def test_compact_command(runner, tmp_path):
    root = tmp_path / ".metrics"  # the default folder, in the (isolated) working directory
    _record(root)
    result = runner.invoke(cli, ["compact"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("compacted 1 partition(s): 3 file(s) -> 1, ")
    assert sorted(scan(root).collect()["value"]) == [0.0, 1.0, 2.0]
    again = runner.invoke(cli, ["compact", "--metrics-dir", str(root)])
    assert again.output.startswith("compacted 0 partition(s)")


def test_compact_bad_duration_is_a_one_line_usage_error(tmp_path):
    out = run_llamamon("compact", "--older-than", "soon", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: --older-than:")


def test_gc_command_dry_run_then_real(tmp_path):
    root = tmp_path / "m"
    _record(root)
    dry = run_llamamon("gc", "--metrics-dir", str(root), "--keep", "1d", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.decode().startswith("would free ")
    assert "would delete group=system/date=2025-11-27/run=" in dry.stderr.decode()
    assert scan(root).collect().height == 3
    real = run_llamamon("gc", "--metrics-dir", str(root), "--keep", "1d", cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    assert real.stdout.decode().startswith("freed ")
    assert scan(root).collect().height == 0
    assert not (root / "runs" / f"{RUN}.json").exists()


def test_gc_keeps_recent_data(runner, tmp_path):
    root = tmp_path / "m"
    with StoreWriter(root, RUN, "h") as writer:
        writer.append([Row(time.time(), "system", "cpu_usage", 1.0)])
    result = runner.invoke(cli, ["gc", "--metrics-dir", str(root), "--keep", "30d"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("freed 0 B")
    assert scan(root).collect().height == 1


def test_gc_without_any_retention_deletes_nothing_and_says_why(tmp_path):
    root = tmp_path / ".metrics"
    _record(root)
    out = run_llamamon("gc", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.decode().strip() == (
        "Error: --keep: no retention set: pass --keep (e.g. --keep 30d) or set monitoring.retention"
    )
    assert scan(root).collect().height == 3


def test_gc_and_compact_follow_the_config(runner, tmp_path):
    (tmp_path / "monitoring.yaml").write_text('monitoring:\n  metrics_path: "data"\n  retention: 1d\n')
    root = tmp_path / "data"
    _record(root)
    result = runner.invoke(cli, ["compact"])
    assert result.output.startswith("compacted 1 partition(s): 3 file(s) -> 1, "), result.output
    result = runner.invoke(cli, ["gc", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("would free ")
    assert result.stdout.endswith("(keeping the last 1d00h)\n")
    assert scan(root).collect().height == 3
