"""record's Parquet: flushes and folds while the job runs never load pyarrow (store.flush_file writes them),
a short run never loads it at all, and a run whose partitions hold several files is compacted as it ends,
the only place record imports pyarrow."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from llamamon.store import journal
from llamamon.store.reader import scan
from tests.conftest import run_python

# Runs `llamamon record` as the console script does (main() is the process). An import hook notes when
# pyarrow is first imported: before the run's end (ParquetRoute.finish), during it, or never; printed as
# one JSON line at exit.
RECORD = """
import atexit, json, os, sys
from llamamon.runtime import parquet_route
seen = {{"pyarrow": None}}
phase = ["running"]
class Note:
    def find_spec(self, name, path=None, target=None):
        if name == "pyarrow" and seen["pyarrow"] is None:
            seen["pyarrow"] = phase[0]
        return None
sys.meta_path.insert(0, Note())
real_finish = parquet_route.ParquetRoute.finish
def finish(self, *args):
    phase[0] = "finish"
    return real_finish(self, *args)
parquet_route.ParquetRoute.finish = finish
parquet_route.FLUSH_INTERVAL_S = float(os.environ.get("FLUSH_S", "30"))
parquet_route.COMPACT_AT_EXIT_FILES = int(os.environ.get("COMPACT_FILES", str(parquet_route.COMPACT_AT_EXIT_FILES)))
atexit.register(lambda: print(json.dumps(seen), flush=True))
sys.argv = ["llamamon", "record", "-q", "--interval", "0.2", "--metrics-dir", "m", "--", *{command!r}]
import llamamon.cli
llamamon.cli.main()
"""


def record(tmp_path: Path, command: list[str], **env: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    done = run_python(RECORD.format(command=command), tmp_path, timeout=120, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done


JOB = [sys.executable, "-c", "import llamamon, time\nfor i in range(5): llamamon.log(loss=1.0 / (i + 1), step=i)"]


def test_a_short_run_is_written_as_parquet_without_pyarrow(tmp_path: Path):
    seen, _ = record(tmp_path, JOB)
    assert seen == {"pyarrow": None}
    assert journal.segment_paths(tmp_path / "m") == []  # everything is in Parquet
    frame = scan(tmp_path / "m").collect()
    assert sorted(frame.filter(frame["metric"] == "loss")["value"].to_list()) == [0.2, 0.25, 1 / 3, 0.5, 1.0]
    assert frame.filter(frame["group"] == "system").height > 0  # the recorder's own rows


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
    assert seen == {"pyarrow": "finish"}  # the flushes did without it; compaction at the end loaded it
    files = data_files(tmp_path / "m")
    assert files["system"]
    assert all(len(names) == 1 and names[0].startswith("compact-") for names in files.values())
    frame = scan(tmp_path / "m").collect()
    assert frame.filter(frame["metric"] == "loss").height == 20
    assert frame.filter(frame["metric"] == "cpu_usage").height >= 5  # every tick's sample, once


def test_a_short_run_whose_partition_holds_several_files_is_compacted_as_it_ends(tmp_path: Path):
    # The job and a child it forks log into journal segments of their own: two files in the training partition.
    job = [
        sys.executable,
        "-c",
        "import llamamon, os\nllamamon.log(loss=1.0, step=0)\npid = os.fork()\n"
        "llamamon.log(loss=2.0 if pid == 0 else 3.0, step=1)\nif pid == 0:\n    llamamon.flush()\n    os._exit(0)\n"
        "os.waitpid(pid, 0)",
    ]
    seen, _ = record(tmp_path, job)
    assert seen == {"pyarrow": "finish"}
    files = data_files(tmp_path / "m")
    assert len(files["training"]) == 1
    assert files["training"][0].startswith("compact-")
    frame = scan(tmp_path / "m", groups=["training"]).collect()
    assert sorted(frame.filter(frame["metric"] == "loss")["value"].to_list()) == [1.0, 2.0, 3.0]


def test_a_run_too_big_to_compact_cheaply_is_left_for_llamamon_compact(tmp_path: Path, caplog):
    from llamamon.store.compaction import compact_ended_run

    job = [sys.executable, "-c", "import time; time.sleep(1.5)"]
    seen, _ = record(tmp_path, job, FLUSH_S="0.3", COMPACT_FILES="2")
    assert seen == {"pyarrow": None}  # nothing merged at the end: pyarrow never needed
    files = data_files(tmp_path / "m")
    assert len(files["system"]) > 2  # several flush files, not compacted: over the bound
    run = (tmp_path / "m" / "runs").glob("*.json").__next__().stem
    with caplog.at_level(logging.INFO, logger="llamamon.store"):
        assert compact_ended_run(tmp_path / "m", run, 1000, 1) is None  # over the bytes bound
        assert compact_ended_run(tmp_path / "m", run, 2, 1 << 30) is None  # over the files bound
    assert sum("left for `llamamon compact`" in r.getMessage() for r in caplog.records) == 2
    assert compact_ended_run(tmp_path / "m", run, 1000, 1 << 30) is not None
    assert all(len(names) == 1 for names in data_files(tmp_path / "m").values())
