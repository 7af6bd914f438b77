"""Live alerts end to end: `record` and `watch` as real subprocesses, a real webhook sink on loopback.

The rule is ``process_tree_size > 0``: certainly true while a recorded job runs, certainly over once it
ends (the run's series are marked stale at its end). Each job waits for a flag file the test creates,
so "firing" and "resolved" happen when the test says, not after a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import HttpSink, wait_until

from tests.conftest import llamamon_env, run_llamamon

PY = sys.executable
INTERVAL = "0.3"
WAIT_FOR_FLAG = (
    "import os, time\n"
    "deadline = time.monotonic() + 30\n"
    "while not os.path.exists('go') and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
)
BUILTINS_OFF = "\n".join(
    f"    {name}: false" for name in ("memory_warning", "memory_critical", "gpu_underutilized", "gpu_memory_high")
)


@pytest.fixture
def sink():
    server = HttpSink()
    yield server
    server.close()


def write_config(folder: Path, sink: HttpSink, condition: str = "process_tree_size > 0", severity: str = "critical"):
    (folder / "monitoring.yaml").write_text(
        f"""monitoring:
  update_frequency: {INTERVAL}
  metrics_path: {folder / "m"}
alerts:
  channels:
    hook:
      type: webhook
      url: {sink.url()}
      timeout: 2s
  builtin:
{BUILTINS_OFF}
  rules:
    job_running:
      condition: {condition}
      severity: {severity}
"""
    )


def alerts_sent(sink: HttpSink) -> list[tuple[str, str]]:
    """(status, run) of every alert in every webhook request, in order."""
    out = []
    for request in list(sink.requests):
        for alert in request.json()["alerts"]:
            out.append((alert["status"], alert["labels"].get("run", "")))
    return out


def start_watch(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(folder / f"watch-{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen(
            [PY, "-m", "llamamon", "watch", "--no-gpu", "--interval", INTERVAL, *args],
            cwd=folder,
            env=llamamon_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def engine_state(folder: Path) -> dict:
    return json.loads((folder / "m" / "alerts" / "engine-watch.json").read_text())


def watch_ticked(folder: Path, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "watch exited early"
    return (folder / "m" / "alerts" / "engine-watch.json").exists()


def start_record(folder: Path, *opts: str) -> subprocess.Popen[bytes]:
    with open(folder / f"record-{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen(
            [PY, "-m", "llamamon", "record", "--no-gpu", "--interval", INTERVAL, *opts, "--", PY, "-c", WAIT_FOR_FLAG],
            cwd=folder,
            env=llamamon_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(folder.glob("*.log")))


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def test_record_with_watch_notifies_once_each_way_across_a_watch_kill(tmp_path, sink):
    write_config(tmp_path, sink)
    watch = start_watch(tmp_path)
    try:
        wait_until(lambda: watch_ticked(tmp_path, watch), timeout=15)
        job = start_record(tmp_path)
        wait_until(lambda: alerts_sent(sink), timeout=15)
        # Both evaluate the run; the ledger lets one notification through. Give watch time to see it too.
        wait_until(lambda: engine_state(tmp_path)["rules"].get("job_running"), timeout=10)
        watch.send_signal(signal.SIGKILL)
        watch.wait(timeout=10)
        watch = start_watch(tmp_path)
        assert watch.poll() is None
        Path(tmp_path / "go").touch()
        assert job.wait(timeout=20) == 0, logs(tmp_path)
        wait_until(lambda: len(alerts_sent(sink)) >= 2, timeout=10)
        # The restarted watch steps its persisted state past the end of the run: nothing more is sent.
        end = time.monotonic() + 3 * float(INTERVAL)
        wait_until(lambda: not engine_state(tmp_path)["rules"].get("job_running") and time.monotonic() > end)
    finally:
        code = stop(watch)
    run = next((tmp_path / "m" / "runs").glob("*.json")).stem
    assert alerts_sent(sink) == [("firing", run), ("resolved", run)], logs(tmp_path)
    assert code == 0


def test_watch_alone_follows_a_recorded_run_and_restarts_without_resending(tmp_path, sink):
    write_config(tmp_path, sink)
    watch = start_watch(tmp_path)
    try:
        wait_until(lambda: watch_ticked(tmp_path, watch), timeout=15)
        job = start_record(tmp_path, "--no-alerts")
        # Within two intervals (for is 0) of the job's first sample: the journal is followed live.
        wait_until(lambda: alerts_sent(sink), timeout=15)
        assert [s for s, _ in alerts_sent(sink)] == ["firing"]
        Path(tmp_path / "go").touch()
        assert job.wait(timeout=20) == 0
        wait_until(lambda: len(alerts_sent(sink)) >= 2, timeout=10)
        started = time.monotonic()
        code = stop(watch)
        assert time.monotonic() - started < 5
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert code == 0
    assert engine_state(tmp_path)["rules"]["job_running"] == []  # saved at SIGTERM: nothing firing
    run = next((tmp_path / "m" / "runs").glob("*.json")).stem
    assert alerts_sent(sink) == [("firing", run), ("resolved", run)]
    again = run_llamamon("watch", "--once", "--no-gpu", cwd=tmp_path, timeout=30)
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert len(alerts_sent(sink)) == 2


def test_record_notifies_by_itself_and_not_with_no_alerts(tmp_path, sink):
    write_config(tmp_path, sink)
    (tmp_path / "go").touch()  # the job ends at once
    quiet = start_record(tmp_path, "--no-alerts")
    assert quiet.wait(timeout=20) == 0
    assert alerts_sent(sink) == []
    (tmp_path / "go").unlink()
    job = start_record(tmp_path)
    wait_until(lambda: alerts_sent(sink), timeout=15)
    (tmp_path / "go").touch()
    assert job.wait(timeout=20) == 0
    runs = sorted(p.stem for p in (tmp_path / "m" / "runs").glob("*.json"))
    assert len(runs) == 2
    second = max(runs, key=lambda r: os.stat(tmp_path / "m" / "runs" / f"{r}.json").st_ctime)
    assert alerts_sent(sink) == [("firing", second), ("resolved", second)]


@pytest.mark.parametrize(("severity", "code"), [("critical", 1), ("warning", 0)])
def test_watch_once_exit_status_follows_the_worst_firing_severity(tmp_path, sink, severity, code):
    write_config(tmp_path, sink, condition="memory_usage > 0", severity=severity)
    done = run_llamamon("watch", "--once", "--no-gpu", cwd=tmp_path, timeout=30)
    assert done.returncode == code, done.stderr.decode()
    assert [s for s, _ in alerts_sent(sink)] == ["firing"]
    assert alerts_sent(sink)[0][1] == ""  # this host's own sample, not a recorded run


def test_watch_once_config_error_exits_2(tmp_path, sink):
    write_config(tmp_path, sink, condition="memory_usage >")
    done = run_llamamon("watch", "--once", cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert "monitoring.yaml" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


def test_watch_once_follows_only_the_runs_named(tmp_path, sink):
    write_config(tmp_path, sink)
    (tmp_path / "go").touch()
    first = start_record(tmp_path, "--no-alerts", "--name", "first")
    assert first.wait(timeout=20) == 0, logs(tmp_path)
    (tmp_path / "go").unlink()
    second = start_record(tmp_path, "--no-alerts", "--name", "second")
    try:
        wait_until(lambda: list((tmp_path / "m" / "_journal").glob("*/*.jsonl")), timeout=15)
        missing = run_llamamon("watch", "--once", "--no-gpu", "--run", "nope", cwd=tmp_path, timeout=30)
        assert missing.returncode == 2
        assert missing.stderr.decode().startswith("Error: ")
        # The second run is live and its rule true, but watch follows the first (ended) one only.
        done = run_llamamon("watch", "--once", "--no-gpu", "--run", "first", cwd=tmp_path, timeout=30)
        assert done.returncode == 0, done.stderr.decode()
        assert alerts_sent(sink) == []
        every = run_llamamon("watch", "--once", "--no-gpu", cwd=tmp_path, timeout=30)
        assert every.returncode == 1, every.stderr.decode()  # critical, firing in the second run
        assert [s for s, _ in alerts_sent(sink)] == ["firing"]
    finally:
        (tmp_path / "go").touch()
        assert second.wait(timeout=20) == 0


def test_record_alerts_on_what_the_job_logs_with_the_python_api(tmp_path, sink):
    write_config(tmp_path, sink, condition="process_tree_size > 1000")  # never true: only the builtin fires
    job_code = "import llamamon\nllamamon.log(loss=float('nan'), step=1)\n" + WAIT_FOR_FLAG
    with open(tmp_path / "record.log", "wb") as log:
        job = subprocess.Popen(
            [PY, "-m", "llamamon", "record", "--no-gpu", "--interval", INTERVAL, "--", PY, "-c", job_code],
            cwd=tmp_path,
            env=llamamon_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: alerts_sent(sink), timeout=15)
    finally:
        (tmp_path / "go").touch()
        assert job.wait(timeout=20) == 0, logs(tmp_path)
    wait_until(lambda: len(alerts_sent(sink)) >= 2, timeout=10)
    names = [a["labels"]["alertname"] for r in sink.requests for a in r.json()["alerts"]]
    assert names == ["loss_not_finite", "loss_not_finite"]
    assert [s for s, _ in alerts_sent(sink)] == ["firing", "resolved"]


@pytest.mark.parametrize("grace", ["0s", "1h"])
def test_watch_prom_file_stops_looking_live_when_watch_exits(tmp_path, sink, grace):
    from llamamon.prometheus.text import parse
    from llamamon.prometheus.textfile import textfile_name

    write_config(tmp_path, sink)
    config = tmp_path / "monitoring.yaml"
    config.write_text(config.read_text().replace("monitoring:\n", f"monitoring:\n  textfile_grace: {grace}\n", 1))
    prom = tmp_path / "m" / "prometheus" / textfile_name(socket.gethostname(), "watch")

    def active() -> float:
        families = parse(prom.read_text(encoding="utf-8"))
        return next(f.points[0].value for f in families if f.name == "llamamon_run_active")

    watch = start_watch(tmp_path)
    try:
        wait_until(lambda: watch_ticked(tmp_path, watch) and prom.exists(), timeout=15)
        assert active() == 1.0
    finally:
        assert stop(watch) == 0, logs(tmp_path)
    if grace == "0s":
        assert not prom.exists()  # nothing watch showed is left to look live
    else:
        assert active() == 0.0
