"""`llamamon record` and `llamamon runs` end to end: real subprocesses, real store, read back."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import llamamon_env, require_binary, run_llamamon
from tests.fakes import nvml as fake_nvml
from tests.terminal_io import read_all, read_until

PY = sys.executable


def record(tmp_path: Path, *child: str, opts: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess[bytes]:
    return run_llamamon(
        "record", "--no-gpu", "--metrics-dir", str(tmp_path / "m"), *opts, "--", *child, cwd=tmp_path, **kw
    )


def start_record(tmp_path: Path, code: str, *options: str, stderr: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """`llamamon record --no-gpu OPTIONS -- python -c CODE` started in ``tmp_path``, its stdout piped."""
    argv = [PY, "-m", "llamamon", "record", "--no-gpu", *options, "--", PY, "-c", code]
    return subprocess.Popen(argv, cwd=tmp_path, env=llamamon_env(), stdout=subprocess.PIPE, stderr=stderr)


def runs_of(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]


def frame(folder: Path, run: str | None = None):
    from llamamon.store.reader import scan

    return scan(folder, runs=[run] if run else None).collect()


def wait_for(predicate, deadline_s: float = 20) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)  # polling with a deadline, not synchronising by sleep
    return predicate()


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_and_lines_on_stderr(tmp_path, code):
    done = record(tmp_path, PY, "-c", f"print('hi'); raise SystemExit({code})")
    assert done.returncode == code
    assert done.stdout == b"hi\n"
    lines = done.stderr.decode().splitlines()
    (run,) = runs_of(tmp_path / "m")
    # The built-in config's Slack and email channels have unset variables: each is said to be off, once, first.
    off = [line for line in lines if line.endswith("; nothing is sent to it")]
    assert len(off) == 2
    assert lines[:2] == off
    lines = lines[2:]
    assert lines[0] == f"llamamon: run {run['id']} recording to m/ (interval 10s)"
    assert lines[-1].startswith(f"llamamon: run {run['id']} done in ")
    assert lines[-1].endswith(f" samples, exit {code} -> m/")
    assert run["exit_code"] == code
    assert run["signal"] is None
    assert run["samples"] >= 2  # first at start, last at exit, even for a job shorter than one interval
    assert frame(tmp_path / "m").filter(metric="memory_used").height == run["samples"]


def test_run_metadata_is_complete(tmp_path):
    git = require_binary("git")
    work = tmp_path / "repo"
    work.mkdir()
    for args in (
        ["init", "-q"],
        ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run([git, *args], cwd=work, check=True)
    (work / "tracked").write_text("1")
    subprocess.run([git, "add", "tracked"], cwd=work, check=True)  # staged, uncommitted: dirty
    config = work / "monitoring.yaml"
    config.write_text("monitoring:\n  update_frequency: 5s\n")
    head = subprocess.run([git, "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True).stdout
    done = run_llamamon(
        "record",
        "--no-gpu",
        "--name",
        "my/../run\x07",
        "--tag",
        "lr=3e-4",
        "--tag",
        "team=nlp",
        "--config",
        str(config),
        "--",
        PY,
        "-c",
        "import os; print(os.environ['LLAMAMON_RUN_ID'], os.environ['LLAMAMON_METRICS_DIR'])",
        cwd=work,
    )
    assert done.returncode == 0, done.stderr
    (run,) = runs_of(work / ".metrics")
    assert done.stdout.decode().split() == [run["id"], str(work / ".metrics")]
    assert run["name"]
    assert not {"/", "\x07"} & set(run["name"])
    assert ".." not in run["name"]
    assert run["tags"] == {"lr": "3e-4", "team": "nlp"}
    assert run["command"][:2] == [PY, "-c"]
    assert run["cwd"] == str(work)
    assert run["host"]
    assert run["user"]
    assert run["start"] <= run["end"]
    assert run["python_version"].count(".") == 2
    assert run["llamamon_version"]
    assert run["git_commit"] == head.strip()
    assert run["git_dirty"] is True
    assert run["config_file"] == str(config)
    assert run["interval"] == 5.0
    assert run["gpu"] == {"available": False, "reason": "disabled with --no-gpu"}
    assert run["pid"] > 0
    assert run["cpu_model"] is None or isinstance(run["cpu_model"], str)


def test_sigterm_to_llamamon_reaches_the_child(tmp_path):
    code = "import signal, sys, time\nprint('ready', flush=True)\ntime.sleep(30)\n"
    with start_record(tmp_path, code, "--metrics-dir", "m") as proc:
        assert read_until(proc.stdout.fileno(), b"ready\n") == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert b"exit 143 (killed by SIGTERM)" in proc.stderr.read()
    (run,) = runs_of(tmp_path / "m")
    assert run["exit_code"] == 143
    assert run["signal"] == signal.SIGTERM


def test_child_killed_by_sigkill_gives_137(tmp_path):
    done = record(tmp_path, PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == 137
    assert runs_of(tmp_path / "m")[0]["signal"] == 9


def test_output_is_byte_identical(tmp_path):
    code = (
        "import os, random, sys\n"
        "random.seed(1)\n"
        "os.write(1, bytes(range(256)) + b'no newline')\n"
        "os.write(2, bytes(range(255, -1, -1)))\n"
        "sys.stdout.buffer.write(random.randbytes(1_000_000))\n"
    )
    done = record(tmp_path, PY, "-c", code, opts=("-q",))
    direct = subprocess.run([PY, "-c", code], capture_output=True, check=True)
    assert done.returncode == 0
    assert done.stdout == direct.stdout
    assert done.stderr == direct.stderr  # -q: llamamon itself says nothing


def test_stdin_passes_through(tmp_path):
    data = bytes(range(256)) * 100
    done = record(tmp_path, PY, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())", input=data)
    assert done.returncode == 0
    assert done.stdout == data


def test_command_not_found(tmp_path):
    done = record(tmp_path, "llamamon-no-such-command")
    assert done.returncode == 127
    assert "command not found: llamamon-no-such-command" in done.stderr.decode()


def test_bad_tag_is_a_usage_error(tmp_path):
    done = record(tmp_path, PY, "-c", "pass", opts=("--tag", "novalue"))
    assert done.returncode == 2
    assert "--tag: expected KEY=VALUE" in done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_interval_gives_samples_of_each_system_metric(tmp_path):
    done = record(tmp_path, PY, "-c", "import time; time.sleep(2)", opts=("--interval", "0.2"))
    assert done.returncode == 0, done.stderr
    data = frame(tmp_path / "m")
    system = data.filter(group="system")
    counts = dict(system.group_by("metric").len().iter_rows())
    assert {"cpu_usage", "memory_used", "memory_usage", "load1"} <= set(counts)
    assert min(counts.values()) >= 8, counts


def test_process_tree_with_grandchildren_is_recorded(tmp_path):
    code = (
        "import subprocess, sys\n"
        "grandchild = [sys.executable, '-c', 'import time; time.sleep(1.5)']\n"
        "inner = f'import subprocess; subprocess.run({grandchild!r})'\n"
        "procs = [subprocess.Popen([sys.executable, '-c', inner]) for _ in range(2)]\n"
        "for p in procs: p.wait()\n"
    )
    done = record(tmp_path, PY, "-c", code, opts=("--interval", "0.2"))
    assert done.returncode == 0, done.stderr
    data = frame(tmp_path / "m")
    sizes = data.filter(metric="process_tree_size")["value"]
    assert sizes.max() >= 5  # the job, two children, two grandchildren
    assert data.filter(metric="process_memory_rss")["value"].max() > 0


def test_kill_9_of_llamamon_the_child_finishes_and_the_journal_is_folded(tmp_path):
    go = tmp_path / "go"
    done_marker = tmp_path / "done"
    code = (
        "import os, time\n"
        "print('started', flush=True)\n"
        "deadline = time.monotonic() + 30\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline: time.sleep(0.02)\n"
        "print('after the kill', flush=True)\n"
        f"open({str(done_marker)!r}, 'w').close()\n"
    )
    folder = tmp_path / "m"
    with start_record(
        tmp_path, code, "--interval", "0.1", "--metrics-dir", str(folder), stderr=subprocess.DEVNULL
    ) as proc:
        assert read_until(proc.stdout.fileno(), b"started\n") == b"started\n"
        # Some samples journaled before the kill.
        assert wait_for(lambda: any(p.stat().st_size > 0 for p in (folder / "_journal").rglob("*") if p.is_file()))
        proc.kill()
        killed_at = time.time()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        go.touch()
        assert proc.stdout.read() == b"after the kill\n"  # the child's output still flows
    assert done_marker.exists()
    listed = run_llamamon("runs", "--json", "--metrics-dir", str(folder), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["status"] == "unfinished"
    data = frame(folder)
    assert data.filter(metric="memory_used").height >= 1
    assert data["time"].max().timestamp() <= killed_at + 1
    assert not [p for p in (folder / "_journal").rglob("*") if p.is_file()]


def test_two_recorders_into_one_folder(tmp_path):
    folder = tmp_path / "m"
    options = ("--interval", "0.2", "--metrics-dir", str(folder))
    procs = [start_record(tmp_path, f"import time; time.sleep(1); print({i})", *options) for i in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o[0] for o in outs] == [b"0\n", b"1\n"]
    runs = runs_of(folder)
    assert len({r["id"] for r in runs}) == 2
    data = frame(folder)
    for r in runs:
        assert data.filter(run=r["id"], metric="cpu_usage").height >= 3


def test_no_gpu_does_not_import_pynvml(tmp_path):
    spy = tmp_path / "spy"
    spy.mkdir()
    marker = tmp_path / "pynvml-imported"
    (spy / "pynvml.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('spy')\n")
    env = llamamon_env(LD_LIBRARY_PATH=fake_nvml.library_stand_in(tmp_path / "lib"))
    env["PYTHONPATH"] = os.pathsep.join([str(spy), env["PYTHONPATH"]])
    without = run_llamamon("record", "--no-gpu", "--metrics-dir", "m", "--", PY, "-c", "pass", cwd=tmp_path, env=env)
    assert without.returncode == 0
    assert not marker.exists()
    with_gpu = run_llamamon("record", "--metrics-dir", "m", "--", PY, "-c", "pass", cwd=tmp_path, env=env)
    assert with_gpu.returncode == 0
    assert marker.exists()  # the spy works: without --no-gpu the GPU collector does import it
    assert with_gpu.stderr.decode().count("GPU metrics off: ") == 1


def test_pty_mode_through_the_cli(tmp_path):
    code = (
        "import os, sys\n"
        "print(os.isatty(0), os.isatty(1), os.isatty(2), os.get_terminal_size())\n"
        "sys.stdout.write('\\x1b[32mok\\x1b[0m\\rdone\\n')\n"
    )

    def on_pty(argv):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        try:
            with subprocess.Popen(
                argv,
                cwd=tmp_path,
                env=llamamon_env(),
                stdin=slave,
                stdout=slave,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ) as proc:
                out = read_all(master, proc)
                return proc.wait(timeout=30), out
        finally:
            os.close(slave)
            os.close(master)

    direct = on_pty([PY, "-c", code])
    through = on_pty([PY, "-m", "llamamon", "record", "--no-gpu", "--metrics-dir", "m", "--", PY, "-c", code])
    assert through[0] == direct[0] == 0
    assert through[1].startswith(b"True True False os.terminal_size(columns=120, lines=40)")
    assert through[1] == direct[1]


def test_runs_lists_table_and_json(tmp_path):
    folder = tmp_path / "m"
    for name in ("first", "second"):
        assert record(tmp_path, PY, "-c", "pass", opts=("--name", name)).returncode == 0
    table = run_llamamon("runs", "--metrics-dir", str(folder), cwd=tmp_path)
    assert table.returncode == 0
    lines = table.stdout.decode().splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "START",
        "DURATION",
        "STATUS",
        "HOST",
        "SAMPLES",
        "SIZE",
        "TAGS",
        "COMMAND",
    ]
    assert [line.split()[1] for line in lines[1:]] == ["first", "second"]
    assert all(re.search(r" \d+(\.\d)? (B|KiB|MiB) ", line) for line in lines[1:])
    assert all("exit 0" in line for line in lines[1:])
    limited = run_llamamon("runs", "--json", "--limit", "1", "--metrics-dir", str(folder), cwd=tmp_path)
    (only,) = json.loads(limited.stdout)
    assert only["name"] == "second"
    assert only["status"] == "exit 0"
    assert only["samples"] >= 2
    assert only["command"] == [PY, "-c", "pass"]
    assert set(only) >= {"id", "name", "start", "duration", "exit_code", "host", "command", "samples"}
    # Its size on disk: every file the store keeps of the run (partitions, metadata), none of the other run's
    # (the Prometheus textfile is an export, not the store).
    mine = [p for p in folder.rglob("*") if p.is_file() and only["id"] in str(p) and "prometheus" not in p.parts]
    assert only["size_bytes"] == sum(p.stat().st_size for p in mine) > 0


def test_help_lists_record_and_runs(tmp_path):
    done = run_llamamon("--help", cwd=tmp_path)
    assert b"record" in done.stdout
    assert b"runs" in done.stdout


def test_a_failing_collector_is_reported_once_and_recording_goes_on(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_gauges.py").write_text(
        "from llamamon.collectors.base import MetricsCollector\n"
        "class Broken(MetricsCollector):\n"
        "    async def collect(self):\n"
        "        raise RuntimeError('sensor unplugged')\n"
        "class QueueDepth(MetricsCollector):\n"
        "    async def collect(self):\n"
        "        return {'queue_depth': 7}\n"
    )
    config = tmp_path / "monitoring.yaml"
    config.write_text('collectors:\n  - "my_gauges:Broken"\n  - "my_gauges:QueueDepth"\n')
    env = llamamon_env()
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), env["PYTHONPATH"]])
    done = run_llamamon(
        "record",
        "--no-gpu",
        "--config",
        str(config),
        "--interval",
        "0.1",
        "--metrics-dir",
        "m",
        "--",
        PY,
        "-c",
        "import time; time.sleep(0.6)",
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().count("collector Broken failed: sensor unplugged") == 1
    data = frame(tmp_path / "m")
    queue = data.filter(metric="queue_depth")
    assert queue.height >= 3
    assert set(queue["group"]) == {"custom"}
    assert data.filter(metric="memory_used").height == queue.height  # same ticks, none lost


def test_monitoring_disabled_runs_the_command_without_recording(tmp_path):
    (tmp_path / "monitoring.yaml").write_text("monitoring:\n  enabled: false\n")
    done = run_llamamon("record", "--", PY, "-c", "print('job'); raise SystemExit(5)", cwd=tmp_path)
    assert done.returncode == 5
    assert done.stdout == b"job\n"
    assert "without recording" in done.stderr.decode()
    assert not (tmp_path / ".metrics" / "runs").exists()


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_interval_is_a_usage_error(tmp_path, value):
    done = record(tmp_path, PY, "-c", "raise SystemExit(9)", opts=("--interval", value))
    assert done.returncode == 2
    assert "--interval" in done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_our_own_lines_do_not_staircase_while_the_terminal_is_raw(tmp_path):
    # A warning printed mid-run, while the real terminal is in raw mode, must still end in "\r\n".
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken_gauge.py").write_text(
        "from llamamon.collectors.base import MetricsCollector\n"
        "class Broken(MetricsCollector):\n"
        "    async def collect(self):\n"
        "        raise RuntimeError('sensor unplugged')\n"
    )
    (tmp_path / "monitoring.yaml").write_text('collectors: ["broken_gauge:Broken"]\n')
    env = llamamon_env()
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), env["PYTHONPATH"]])
    master, slave = os.openpty()
    argv = [PY, "-m", "llamamon", "record", "--no-gpu", "--interval", "0.1", "--metrics-dir", "m", "--"]
    code = "import sys, time; print('job line'); time.sleep(0.5); sys.stdout.write('ready')"
    try:
        with subprocess.Popen(
            [*argv, PY, "-c", code],
            cwd=tmp_path,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        ) as proc:
            out = read_until(master, b"done in")
            out += read_until(master, b"-> m/\r\n", deadline_s=10)
            assert proc.wait(timeout=30) == 0
    finally:
        os.close(slave)
        os.close(master)
    assert b"collector Broken failed: sensor unplugged (logged once; recording goes on)\r\n" in out
    assert b"job line\r\n" in out
    assert out.count(b"\n") == out.count(b"\r\n")


def test_llamamon_host_names_the_run_its_rows_and_the_api_run(tmp_path: Path) -> None:
    """Two "hosts" on one machine (how the multi-node tests simulate a cluster): LLAMAMON_HOST is the host
    the run id, the run's metadata and every row carry, the recorder's and the job's own rows alike."""
    code = "import llamamon; [llamamon.log({'loss': 1.0 / (s + 1)}, step=s) for s in range(3)]"
    done = run_llamamon(
        "record", "--no-gpu", "--metrics-dir", str(tmp_path / "m"), "--", PY, "-c", code,
        cwd=tmp_path, env=llamamon_env(LLAMAMON_HOST="node-7"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = runs_of(tmp_path / "m")
    assert run["host"] == "node-7"
    assert "-node-7-" in run["id"]
    hosts = frame(tmp_path / "m")["host"].unique().to_list()
    assert hosts == ["node-7"]
