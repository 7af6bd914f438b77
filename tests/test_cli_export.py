"""``llamamon export prometheus`` on a store written by the store's own writer."""

from __future__ import annotations

import math
import subprocess

import pytest

from llamamon.cli import cli
from llamamon.prometheus.text import parse
from llamamon.samples import Row, RunInfo, make_labels
from tests.conftest import require_binary, run_llamamon

HOST = "gpu-box"
OLD = "20260901T080000Z-gpu-box-0001"
NEW = "20260901T100000Z-gpu-box-0002"


def _record(metrics_dir, run_id: str, start: float, rows: list[Row], end: float | None) -> None:
    from llamamon.store.runs import write_run
    from llamamon.store.writer import StoreWriter

    with StoreWriter(metrics_dir, run_id, HOST) as writer:
        writer.append(rows)
    write_run(metrics_dir, RunInfo(id=run_id, host=HOST, start=start, end=end, name=run_id[-4:]))


@pytest.fixture
def store(metrics_dir):
    t0 = 1_788_249_600.0  # 2026-09-01T08:00:00Z
    _record(metrics_dir, OLD, t0, [Row(t0 + 1, "training", "loss", 9.0, step=1)], end=t0 + 60)
    t1 = t0 + 7200
    rows = [
        Row(t1 + 1, "training", "loss", 2.0, step=10),
        Row(t1 + 2, "gpu", "gpu_sm_clock", 1500.0, make_labels(gpu=0)),
        Row(t1 + 3, "training", "loss", 1.5, step=20),
        Row(t1 + 4, "custom", "val/acc", 0.5, make_labels(split='quo"te\n')),
        *(
            Row(t1 + 5 + i, "inference", "inference_latency", v, make_labels(model="m"))
            for i, v in enumerate([20, 70, 4000])
        ),
        Row(t1 + 9, "system", "cpu_usage", 0.25),
    ]
    _record(metrics_dir, NEW, t1, rows, end=t1 + 30)
    return metrics_dir


def _families(text: str) -> dict:
    return {f.name: f for f in parse(text)}


def test_latest_run_to_stdout(store, runner):
    result = runner.invoke(cli, ["export", "prometheus", "--metrics-dir", str(store)])
    assert result.exit_code == 0, result.output
    fams = _families(result.stdout)
    assert fams["llamamon_run_active"].points[0].labels == (("host", HOST), ("run", NEW))
    assert fams["llamamon_run_active"].points[0].value == 0.0
    assert fams["llamamon_loss"].points[0].value == 1.5
    assert fams["llamamon_step"].points[0].value == 20.0
    assert fams["llamamon_last_sample_timestamp_seconds"].points[0].value == 1_788_249_600.0 + 7200 + 9
    assert fams["llamamon_gpu_sm_clock_hertz"].points[0].value == 1.5e9
    assert fams["llamamon_val_acc"].points[0].labels[-1] == ("split", 'quo"te\n')
    latency = {p.name: p for p in fams["llamamon_inference_latency_seconds"].points if "le" not in dict(p.labels)}
    assert latency["llamamon_inference_latency_seconds_count"].value == 3.0
    assert math.isclose(latency["llamamon_inference_latency_seconds_sum"].value, 4.09)


def test_run_by_name_to_a_file_checked_by_promtool(store, runner, tmp_path):
    out = tmp_path / "textfile" / "old.prom"
    result = runner.invoke(cli, ["export", "prometheus", "--metrics-dir", str(store), "--run", "0001", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    fams = _families(out.read_text(encoding="utf-8"))
    assert fams["llamamon_loss"].points[0].labels == (("host", HOST), ("run", OLD))
    assert fams["llamamon_loss"].points[0].value == 9.0
    promtool = require_binary("promtool")
    with out.open("rb") as fh:
        check = subprocess.run([promtool, "check", "metrics"], stdin=fh, capture_output=True, text=True, check=False)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


def test_errors_are_one_line_with_exit_2(store, tmp_path):
    both = run_llamamon("export", "prometheus", "--metrics-dir", str(store), "--run", OLD, "--latest", cwd=tmp_path)
    assert both.returncode == 2
    assert both.stderr.decode() == "Error: --latest: give --run or --latest, not both\n"
    missing = run_llamamon("export", "prometheus", "--metrics-dir", str(store), "--run", "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.decode().startswith('Error: no run matches "nope"')
    empty = run_llamamon("export", "prometheus", "--metrics-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert empty.returncode == 2
    assert "no runs recorded" in empty.stderr.decode()
    assert b"Traceback" not in both.stderr + missing.stderr + empty.stderr


def test_a_run_being_recorded_is_active_and_a_killed_one_is_not(metrics_dir, runner):
    from llamamon.store.runs import write_run
    from llamamon.store.writer import StoreWriter

    t0 = 1_788_249_600.0
    live = "20260901T080000Z-gpu-box-0003"
    write_run(metrics_dir, RunInfo(id=live, host=HOST, start=t0))
    with StoreWriter(metrics_dir, live, HOST) as writer:
        writer.append([Row(t0 + 1, "training", "loss", 3.0, step=1)])
        writer.flush()
        writer.append([Row(t0 + 2, "training", "loss", 2.0, step=2)])  # still in the journal: not read
        result = runner.invoke(cli, ["export", "prometheus", "--metrics-dir", str(metrics_dir), "--run", live])
        assert result.exit_code == 0, result.output
        fams = _families(result.stdout)
        assert fams["llamamon_run_active"].points[0].value == 1.0
        assert fams["llamamon_loss"].points[0].value == 3.0
    # The writer is gone but the run has no end time (its recorder was killed): not active.
    result = runner.invoke(cli, ["export", "prometheus", "--metrics-dir", str(metrics_dir), "--run", live])
    assert _families(result.stdout)["llamamon_run_active"].points[0].value == 0.0
