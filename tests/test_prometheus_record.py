"""`llamamon record` keeps a .prom file for node_exporter: live values every tick, inactive at the end."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamamon.prometheus.text import parse
from llamamon.prometheus.textfile import textfile_name
from tests.conftest import llamamon_env, require_binary, run_llamamon

GRACE = "monitoring:\n  textfile_grace: 1h\n"  # a finished run's .prom file stays (run_active 0) for an hour
HOLD = "import pathlib, time\nwhile not pathlib.Path('release').exists(): time.sleep(0.02)\n"


def values(path: Path) -> dict[str, float]:
    """Family -> value of its first series (enough for the run-level and system gauges checked here)."""
    return {f.name: f.points[0].value for f in parse(path.read_text(encoding="utf-8")) if f.points}


@contextlib.contextmanager
def recording(tmp_path: Path, metrics: Path, job: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real `llamamon record` of a Python job at 0.2 s, killed and reaped however the test ends."""
    args = ["record", "--no-gpu", *options, "--interval", "0.2", "--metrics-dir", str(metrics), "--"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamamon", *args, sys.executable, "-c", job],
        cwd=tmp_path,
        env=llamamon_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def record_python(tmp_path: Path, code: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    """`llamamon record --no-gpu OPTIONS -- python -c CODE` in ``tmp_path``, run to its end."""
    return run_llamamon("record", "--no-gpu", *options, "--", sys.executable, "-c", code, cwd=tmp_path)


def finished_textfile(tmp_path: Path, seconds: float) -> Path:
    """The .prom file of a job that ran ``seconds`` under record at 0.2 s, kept after its end (GRACE), into m/."""
    (tmp_path / "grace.yaml").write_text(GRACE)
    code = f"import time; time.sleep({seconds})"
    done = record_python(tmp_path, code, "--config", "grace.yaml", "--interval", "0.2", "--metrics-dir", "m")
    assert done.returncode == 0, done.stderr.decode()
    (prom,) = (tmp_path / "m" / "prometheus").glob("*.prom")
    return prom


def wait_for_run(metrics: Path, deadline: float) -> str:
    """The id of the one run being recorded into ``metrics``, once its metadata is written."""
    while not (metrics / "runs").is_dir() or not list((metrics / "runs").glob("*.json")):
        assert time.monotonic() < deadline, "no run metadata"
        time.sleep(0.02)
    return the_run(metrics)


def the_run(metrics: Path) -> str:
    (run,) = [json.loads(p.read_text())["id"] for p in (metrics / "runs").glob("*.json")]
    return run


def test_record_writes_live_values_then_marks_the_run_inactive(tmp_path):
    metrics = tmp_path / "m"
    (tmp_path / "grace.yaml").write_text(GRACE)
    with recording(tmp_path, metrics, HOLD, "--config", "grace.yaml") as proc:
        deadline = time.monotonic() + 20
        prom = metrics / "prometheus" / textfile_name(socket.gethostname(), wait_for_run(metrics, deadline))
        seen_times = set()
        while len(seen_times) < 3:  # rewritten on every tick, not only at the end
            assert time.monotonic() < deadline, f"{prom} not rewritten every tick ({seen_times})"
            if prom.exists():
                live = values(prom)
                assert live["llamamon_run_active"] == 1.0
                assert live["llamamon_memory_used_bytes"] > 0
                seen_times.add(live["llamamon_last_sample_timestamp_seconds"])
            time.sleep(0.02)
        (tmp_path / "release").touch()
        assert proc.wait(timeout=20) == 0
    final = values(prom)
    assert final["llamamon_run_active"] == 0.0
    assert final["llamamon_last_sample_timestamp_seconds"] >= max(seen_times)
    assert [p.name for p in prom.parent.iterdir()] == [prom.name]


def test_a_finished_runs_file_leaves_and_a_killed_recorders_is_cleaned_by_the_next_record(tmp_path):
    metrics = tmp_path / "m"
    with recording(tmp_path, metrics, HOLD) as proc:
        deadline = time.monotonic() + 20
        killed = metrics / "prometheus" / textfile_name(socket.gethostname(), wait_for_run(metrics, deadline))
        while not killed.exists():
            assert time.monotonic() < deadline, "no .prom file"
            time.sleep(0.02)
        proc.kill()  # kill -9: the recorder cannot say its run ended
        proc.wait()
    assert values(killed)["llamamon_run_active"] == 1.0  # frozen values that look live
    (tmp_path / "release").touch()
    done = record_python(tmp_path, "pass", "--metrics-dir", str(metrics))
    assert done.returncode == 0, done.stderr.decode()
    assert list((metrics / "prometheus").glob("*.prom")) == []  # the killed one pruned, the finished one gone


def test_textfile_dir_and_export_format_none(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text(
        "monitoring:\n  textfile_dir: node-exporter-textfiles\n  textfile_grace: 1h\n"
    )
    (tmp_path / "off.yaml").write_text("monitoring:\n  export_format: none\n")
    done = record_python(tmp_path, "pass", "--config", "elsewhere.yaml", "--metrics-dir", "a")
    assert done.returncode == 0, done.stderr.decode()
    (prom,) = (tmp_path / "node-exporter-textfiles").glob("*.prom")
    assert prom.name == textfile_name(socket.gethostname(), the_run(tmp_path / "a"))
    assert values(prom)["llamamon_run_active"] == 0.0
    assert not (tmp_path / "a" / "prometheus").exists()
    done = record_python(tmp_path, "pass", "--config", "off.yaml", "--metrics-dir", "b")
    assert done.returncode == 0, done.stderr.decode()
    assert not (tmp_path / "b" / "prometheus").exists()


def test_unwritable_textfile_folder_warns_once_and_records_anyway(tmp_path):
    (tmp_path / "blocked").write_text("a file where the folder should be\n")
    (tmp_path / "m.yaml").write_text("monitoring:\n  textfile_dir: blocked/sub\n")
    done = record_python(
        tmp_path, "import time; time.sleep(0.5)", "--interval", "0.1", "--config", "m.yaml", "--metrics-dir", "m"
    )
    assert done.returncode == 0
    warnings = [line for line in done.stderr.decode().splitlines() if "Prometheus textfile" in line]
    assert len(warnings) == 1, done.stderr.decode()
    assert "logged once; recording goes on" in warnings[0]
    assert list((tmp_path / "m" / "runs").glob("*.json"))


@pytest.mark.integration
def test_a_recorded_run_passes_promtool(tmp_path):
    promtool = require_binary("promtool")
    prom = finished_textfile(tmp_path, 0.5)
    with prom.open("rb") as fh:
        check = subprocess.run([promtool, "check", "metrics"], stdin=fh, capture_output=True, text=True, check=False)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


def test_export_of_a_recorded_run_matches_its_textfile(tmp_path):
    prom = finished_textfile(tmp_path, 0.6)
    exported = run_llamamon("export", "prometheus", "--metrics-dir", "m", "--latest", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()

    def series(text: str) -> dict:
        return {(p.name, p.labels): p.value for f in parse(text) for p in f.points}

    live, again = series(prom.read_text(encoding="utf-8")), series(exported.stdout.decode())
    assert set(live) == set(again)
    assert again == pytest.approx(live, rel=1e-12, abs=1e-5)  # times pass through the store in microseconds


JOB_LOGS = (
    "import pathlib, time, llamamon\n"
    "llamamon.log({'loss': 0.25, 'validation_loss': 0.5}, step=7)\n"
    "while not pathlib.Path('release').exists(): time.sleep(0.02)\n"
)


def test_what_the_job_logs_reaches_the_live_textfile(tmp_path):
    """step, loss and validation loss from llamamon.log() appear in the .prom file while the job runs."""
    metrics = tmp_path / "m"
    (tmp_path / "grace.yaml").write_text(GRACE)
    with recording(tmp_path, metrics, JOB_LOGS, "--no-alerts", "--config", "grace.yaml") as proc:
        deadline = time.monotonic() + 20
        live: dict[str, float] = {}
        while live.get("llamamon_loss") != 0.25:
            assert time.monotonic() < deadline, f"the job's loss never reached the textfile: {live}"
            runs = list((metrics / "runs").glob("*.json")) if (metrics / "runs").is_dir() else []
            if runs:
                prom = metrics / "prometheus" / textfile_name(socket.gethostname(), the_run(metrics))
                if prom.exists():
                    live = values(prom)
            time.sleep(0.05)
        assert live["llamamon_run_active"] == 1.0
        assert live["llamamon_step"] == 7.0
        assert live["llamamon_validation_loss"] == 0.5
        (tmp_path / "release").touch()
        assert proc.wait(timeout=20) == 0
    final = values(prom)
    assert final["llamamon_run_active"] == 0.0
    assert final["llamamon_loss"] == 0.25
