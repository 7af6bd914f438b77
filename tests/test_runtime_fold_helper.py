"""record's fold helper: a short run's Parquet is written by the forked helper (record never loads pyarrow),
a helper that dies is replaced by an in-process fold, a long run stops it, and it never outlives record."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from llamamon.store import journal
from llamamon.store.reader import scan
from tests.conftest import llamamon_env, run_python

# Runs `llamamon record` as the console script does (main() is the process), with FoldHelper's calls
# noted; prints them, and whether this process imported pyarrow, as one JSON line at exit.
RECORD = """
import atexit, json, os, sys
from llamamon.runtime import fold_helper, recorder
calls = []
real_fold, real_stop = fold_helper.FoldHelper.fold, fold_helper.FoldHelper.stop
def fold(self, folder):
    calls.append("fold")
    if os.environ.get("KILL_HELPER"):
        os.kill(self.pid, 9)
    return real_fold(self, folder)
def stop(self):
    if not self._done:
        calls.append("stop")
    return real_stop(self)
fold_helper.FoldHelper.fold, fold_helper.FoldHelper.stop = fold, stop
recorder.FLUSH_INTERVAL_S = float(os.environ.get("FLUSH_S", "30"))
atexit.register(lambda: print(json.dumps({{"calls": calls, "pyarrow": "pyarrow" in sys.modules}}), flush=True))
sys.argv = ["llamamon", "record", "-q", "--interval", "0.2", "--metrics-dir", "m", "--", *{command!r}]
import llamamon.cli
llamamon.cli.main()
"""


def record(tmp_path: Path, command: list[str], **env: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    done = run_python(RECORD.format(command=command), tmp_path, timeout=120, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done


JOB = [sys.executable, "-c", "import llamamon, time\nfor i in range(5): llamamon.log(loss=1.0 / (i + 1), step=i)"]


def test_a_short_run_is_folded_by_the_helper_and_record_never_loads_pyarrow(tmp_path: Path):
    seen, _ = record(tmp_path, JOB)
    assert seen == {"calls": ["fold"], "pyarrow": False}
    assert journal.segment_paths(tmp_path / "m") == []  # everything is in Parquet
    frame = scan(tmp_path / "m").collect()
    assert sorted(frame.filter(frame["metric"] == "loss")["value"].to_list()) == [0.2, 0.25, 1 / 3, 0.5, 1.0]
    assert frame.filter(frame["group"] == "system").height > 0  # the recorder's own rows, folded by the helper


def test_a_helper_that_died_is_replaced_by_an_in_process_fold(tmp_path: Path):
    seen, _ = record(tmp_path, JOB, KILL_HELPER="1")
    assert seen == {"calls": ["fold"], "pyarrow": True}
    assert journal.segment_paths(tmp_path / "m") == []
    frame = scan(tmp_path / "m").collect()
    assert frame.filter(frame["metric"] == "loss").height == 5
    assert frame.filter(frame["group"] == "system").height > 0


def test_a_run_that_flushed_parquet_itself_stops_the_helper(tmp_path: Path):
    seen, _ = record(tmp_path, [sys.executable, "-c", "import time; time.sleep(2)"], FLUSH_S="0.5")
    assert seen == {"calls": ["stop"], "pyarrow": True}  # stopped mid-run, at the first check after a flush
    assert journal.segment_paths(tmp_path / "m") == []
    assert scan(tmp_path / "m", groups=["system"]).collect().height > 0


def test_the_helper_ends_with_record_when_record_is_killed(tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamamon", "record", "-q", "--metrics-dir", "m", "--", "sleep", "30"],
        cwd=tmp_path,
        env=llamamon_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    me = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        helper = None
        while helper is None and time.monotonic() < deadline:
            family = me.children(recursive=True)
            # The helper is record forked: the same command line, in a session of its own.
            helper = next((c for c in family if c.cmdline() == me.cmdline() and os.getsid(c.pid) == c.pid), None)
            time.sleep(0.05)
        assert helper is not None, "no fold helper under record"
        while not journal.segment_paths(tmp_path / "m") and time.monotonic() < deadline:
            time.sleep(0.05)  # record has sampled: there is a journal for someone to fold
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        helper.wait(timeout=30)  # its end of the pipe closed: it exits, folding nothing
    finally:
        for member in [me, *family]:
            with contextlib.suppress(psutil.Error):
                member.kill()
        proc.wait(timeout=10)
    assert journal.segment_paths(tmp_path / "m")  # the journal waits for the next llamamon command
