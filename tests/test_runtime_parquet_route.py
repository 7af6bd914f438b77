"""record's exit: a short run's Parquet is written by the forked fold helper (record never loads pyarrow),
a helper that dies is replaced by an in-process fold, a long run stops it, it never outlives record, and
a run whose partitions hold several files is compacted as it ends (by the helper or in-process)."""

from __future__ import annotations

import contextlib
import json
import logging
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
from llamamon.runtime import parquet_route
calls = []
real_fold, real_stop = parquet_route.FoldHelper.fold, parquet_route.FoldHelper.stop
def fold(self, *args):
    calls.append("fold")
    if os.environ.get("KILL_HELPER"):
        os.kill(self.pid, 9)
    return real_fold(self, *args)
def stop(self):
    if not self._done:
        calls.append("stop")
    return real_stop(self)
parquet_route.FoldHelper.fold, parquet_route.FoldHelper.stop = fold, stop
parquet_route.FLUSH_INTERVAL_S = float(os.environ.get("FLUSH_S", "30"))
parquet_route.COMPACT_AT_EXIT_FILES = int(os.environ.get("COMPACT_FILES", str(parquet_route.COMPACT_AT_EXIT_FILES)))
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


def data_files(root: Path) -> dict[str, list[str]]:
    """File names per group partition."""
    out: dict[str, list[str]] = {}
    for path in sorted(root.glob("group=*/date=*/run=*/*.parquet")):
        out.setdefault(path.parts[-4].removeprefix("group="), []).append(path.name)
    return out


def test_a_run_of_several_flushes_is_compacted_as_it_ends(tmp_path: Path):
    job = [
        sys.executable,
        "-c",
        "import llamamon, time\nfor i in range(20): llamamon.log(loss=1.0, step=i); time.sleep(0.1)",
    ]
    seen, _ = record(tmp_path, job, FLUSH_S="0.3")
    assert seen["calls"] == ["stop"]  # flushes loaded pyarrow here: record compacted in-process
    files = data_files(tmp_path / "m")
    assert files["system"]
    assert all(len(names) == 1 and names[0].startswith("compact-") for names in files.values())
    frame = scan(tmp_path / "m").collect()
    assert frame.filter(frame["metric"] == "loss").height == 20
    assert frame.filter(frame["metric"] == "cpu_usage").height >= 5  # every tick's sample, once


def test_the_helper_compacts_a_short_run_whose_partition_holds_several_files(tmp_path: Path):
    # The job and a child it forks log into journal segments of their own: two files in the training partition.
    job = [
        sys.executable,
        "-c",
        "import llamamon, os\nllamamon.log(loss=1.0, step=0)\npid = os.fork()\n"
        "llamamon.log(loss=2.0 if pid == 0 else 3.0, step=1)\nif pid == 0:\n    llamamon.flush()\n    os._exit(0)\n"
        "os.waitpid(pid, 0)",
    ]
    seen, _ = record(tmp_path, job)
    assert seen == {"calls": ["fold"], "pyarrow": False}
    files = data_files(tmp_path / "m")
    assert len(files["training"]) == 1
    assert files["training"][0].startswith("compact-")
    frame = scan(tmp_path / "m", groups=["training"]).collect()
    assert sorted(frame.filter(frame["metric"] == "loss")["value"].to_list()) == [1.0, 2.0, 3.0]


def test_a_run_too_big_to_compact_cheaply_is_left_for_llamamon_compact(tmp_path: Path, caplog):
    from llamamon.store.compaction import compact_ended_run

    job = [sys.executable, "-c", "import time; time.sleep(1.5)"]
    record(tmp_path, job, FLUSH_S="0.3", COMPACT_FILES="2")
    files = data_files(tmp_path / "m")
    assert len(files["system"]) > 2  # several flush files, not compacted: over the bound
    run = (tmp_path / "m" / "runs").glob("*.json").__next__().stem
    with caplog.at_level(logging.INFO, logger="llamamon.store"):
        assert compact_ended_run(tmp_path / "m", run, 1000, 1) is None  # over the bytes bound
        assert compact_ended_run(tmp_path / "m", run, 2, 1 << 30) is None  # over the files bound
    assert sum("left for `llamamon compact`" in r.getMessage() for r in caplog.records) == 2
    assert compact_ended_run(tmp_path / "m", run, 1000, 1 << 30) is not None
    assert all(len(names) == 1 for names in data_files(tmp_path / "m").values())
