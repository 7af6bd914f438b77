"""Compaction (idempotent, kill -9 safe, leaves live partitions alone), gc and store_stats."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from llamamon.errors import StoreError
from llamamon.samples import Row, RunInfo, make_labels
from llamamon.store import layout, open_store
from llamamon.store.compaction import compact, compaction_lock
from llamamon.store.reader import scan
from llamamon.store.retention import gc, store_stats
from llamamon.store.runs import list_runs, write_run
from llamamon.store.writer import StoreWriter
from tests.conftest import llamamon_env

T0 = 1_764_244_800.0  # 2025-11-27T12:00:00Z
RUN_A = "20251127T120000Z-h-aaaa"
RUN_B = "20251127T120000Z-h-bbbb"


def _fill(root: Path, run: str, flushes: int = 12, per: int = 5, ended: bool = True) -> None:
    with StoreWriter(root, run, "h", flush_interval=1e9) as writer:
        for k in range(flushes):
            writer.append(
                Row(T0 + k * per + i, group, metric, float(k * per + i), make_labels(gpu=str(i % 2)))
                for i in range(per)
                for group, metric in (("system", "cpu_usage"), ("gpu", "gpu_utilization"))
            )
            writer.flush()
    write_run(root, RunInfo(id=run, host="h", start=T0, end=T0 + 3600 if ended else None))


def _multiset(df: pl.DataFrame) -> Counter:
    return Counter(zip(df["run"], df["group"], df["metric"], df["labels"], df["time"], df["value"], strict=True))


def _direct(root: Path) -> Counter:
    return _multiset(pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True).collect())


def test_compact_rewrites_finished_partitions_sorted_and_is_idempotent(metrics_dir):
    _fill(metrics_dir, RUN_A)
    before = _multiset(scan(metrics_dir).collect())
    assert store_stats(metrics_dir).uncompacted_files == 24

    result = compact(metrics_dir)
    assert (result.partitions, result.files_before, result.files_after) == (2, 24, 2)
    assert _multiset(scan(metrics_dir).collect()) == before
    assert _direct(metrics_dir) == before
    stats = store_stats(metrics_dir)
    assert (stats.files, stats.uncompacted_files) == (2, 0)
    assert not list((metrics_dir / layout.COMPACT_DIR).glob("*.json"))

    for path in metrics_dir.rglob("compact-*.parquet"):
        df = pl.read_parquet(path)
        assert df.equals(df.sort("metric", "labels", "time"))
        assert pq.read_metadata(path).num_row_groups == 1

    files = sorted(metrics_dir.rglob("*.parquet"))
    again = compact(metrics_dir)
    assert again.partitions == 0
    assert sorted(metrics_dir.rglob("*.parquet")) == files


def test_new_files_after_compaction_are_folded_into_a_new_compacted_file(metrics_dir):
    _fill(metrics_dir, RUN_A, flushes=3)
    compact(metrics_dir)
    with StoreWriter(metrics_dir, RUN_A, "h") as writer:
        writer.append([Row(T0 + 1000, "system", "cpu_usage", 99.0)])
    before = _multiset(scan(metrics_dir).collect())
    assert compact(metrics_dir).partitions == 1
    assert _multiset(scan(metrics_dir).collect()) == before
    assert len(list(metrics_dir.glob("group=system/*/*/*.parquet"))) == 1


def test_live_and_recent_partitions_are_left_alone(metrics_dir):
    _fill(metrics_dir, RUN_A, flushes=3, ended=False)  # no end time, files just written
    writer = StoreWriter(metrics_dir, RUN_B, "h", flush_interval=1e9)
    writer.append([Row(T0, "system", "cpu_usage", 1.0)])
    writer.flush()
    writer.append([Row(T0 + 1, "system", "cpu_usage", 2.0)])  # journal segment held: live
    result = compact(metrics_dir, older_than=3600)
    assert (result.partitions, result.skipped_live, result.skipped_recent) == (0, 1, 2)
    # With no live writer and old enough, the unfinished run is compacted after all.
    result = compact(metrics_dir, older_than=0, now=time.time() + 1)
    assert (result.partitions, result.skipped_live) == (2, 1)
    writer.close()
    assert compact(metrics_dir, older_than=0, now=time.time() + 1).partitions == 1


def test_reader_exact_at_every_step_of_an_interrupted_compaction(metrics_dir):
    """Simulate a kill after each step; llamamon's reader stays exact, and recovery makes plain globs exact."""
    from llamamon.store import parquet
    from llamamon.store.reader import partition_files

    _fill(metrics_dir, RUN_A, flushes=4)
    before = _multiset(scan(metrics_dir).collect())
    folder = next(metrics_dir.glob("group=system/*/*"))
    files = partition_files(folder)
    names = [f.name for f in files]
    intent = metrics_dir / layout.COMPACT_DIR / "dead.json"
    intent.parent.mkdir(exist_ok=True)
    intent.write_text(
        json.dumps(
            {"partition": str(folder.relative_to(metrics_dir)), "file": "compact-dead.parquet", "replaces": names}
        )
    )

    # Killed mid-write of the new file: only a hidden temporary exists.
    (folder / ".compact-dead.parquet.abc.tmp").write_bytes(b"PAR1")
    assert _multiset(scan(metrics_dir).collect()) == before
    assert _direct(metrics_dir) == before

    # Killed after the new file appeared, before the sources were removed (and one already removed).
    import pyarrow as pa

    table = pa.concat_tables([parquet.read_table(f) for f in files]).replace_schema_metadata(None)
    parquet.write_table(folder / "compact-dead.parquet", table, replaces=names)
    files[0].unlink()
    assert _multiset(scan(metrics_dir).collect()) == before

    open_store(metrics_dir)  # the next command finishes the job
    assert not intent.exists()
    assert not list(folder.glob(".*.tmp"))
    assert [p.name for p in folder.iterdir()] == ["compact-dead.parquet"]
    assert _direct(metrics_dir) == before


KILL_SCRIPT = "import sys; from llamamon.store.compaction import compact; compact(sys.argv[1], older_than=0)"


def _add_flushes(root: Path, run: str, base: float, flushes: int = 6) -> None:
    with StoreWriter(root, run, "h", flush_interval=1e9) as writer:
        for k in range(flushes):
            writer.append([Row(T0 + base + k, "system", "cpu_usage", base + k), Row(T0 + base + k, "gpu", "g", -k)])
            writer.flush()


def test_kill_9_at_random_points_never_loses_or_duplicates(metrics_dir):
    runs = [f"20251127T1200{k:02d}Z-h-cccc" for k in range(3)]
    for run in runs:
        _fill(metrics_dir, run, flushes=2, per=3)
    rng = random.Random(20251127)
    intents = metrics_dir / layout.COMPACT_DIR
    for attempt in range(4):
        for run in runs:  # fresh flush files, so every attempt has work to interrupt
            _add_flushes(metrics_dir, run, base=1000.0 * (attempt + 1), flushes=4)
        before = _multiset(scan(metrics_dir).collect())
        with subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(metrics_dir)], env=llamamon_env()) as proc:
            # Wait until the rewrite has begun (an intent exists), then kill at a random point after that.
            deadline = time.monotonic() + 60
            while proc.poll() is None and not list(intents.glob("*.json")):
                assert time.monotonic() < deadline, "compaction never started"
                time.sleep(0.002)
            kill_at = time.monotonic() + rng.uniform(0.0, 0.3)
            while proc.poll() is None and time.monotonic() < kill_at:
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _multiset(scan(metrics_dir).collect()) == before
        open_store(metrics_dir)
        assert not list(intents.glob("*.json"))
        assert _direct(metrics_dir) == before
    compact(metrics_dir, older_than=0)
    assert _multiset(scan(metrics_dir).collect()) == before
    assert _direct(metrics_dir) == before
    assert store_stats(metrics_dir).uncompacted_files == 0


def test_only_one_compaction_or_gc_at_a_time(metrics_dir):
    _fill(metrics_dir, RUN_A, flushes=2)
    with compaction_lock(metrics_dir) as held:
        assert held
        with pytest.raises(StoreError, match="another compaction or gc is running"):
            compact(metrics_dir)
        with pytest.raises(StoreError, match="another compaction or gc is running"):
            gc(metrics_dir, 0)


def test_gc_dry_run_then_real(metrics_dir):
    _fill(metrics_dir, RUN_A, flushes=2)  # day 2025-11-27
    with StoreWriter(metrics_dir, RUN_B, "h") as writer:
        writer.append([Row(T0 + 3 * 86_400, "system", "cpu_usage", 1.0)])  # day 2025-11-30
    write_run(metrics_dir, RunInfo(id=RUN_B, host="h", start=T0, end=T0 + 3 * 86_400))
    now = T0 + 4 * 86_400  # 2025-12-01T12:00Z
    keep = 2 * 86_400  # keep from 2025-11-29T12:00Z on
    size_a = sum(p.stat().st_size for p in metrics_dir.rglob("*.parquet") if RUN_A in str(p))
    size_a += (metrics_dir / "runs" / f"{RUN_A}.json").stat().st_size
    old_partitions_b = sum(p.stat().st_size for p in metrics_dir.glob(f"group=*/date=2025-11-27/run={RUN_B}/*"))

    def listing():
        return sorted(p for p in metrics_dir.rglob("*") if layout.COMPACT_DIR not in p.parts)

    before = listing()
    assert gc(metrics_dir, keep, dry_run=True, now=now) == size_a + old_partitions_b
    assert listing() == before

    assert gc(metrics_dir, keep, now=now) == size_a + old_partitions_b
    assert [r.id for r in list_runs(metrics_dir)] == [RUN_B]
    assert not list(metrics_dir.glob("group=*/date=2025-11-27"))
    assert scan(metrics_dir).collect()["value"].to_list() == [1.0]
    assert gc(metrics_dir, keep, now=now) == 0


def test_gc_never_deletes_a_run_being_recorded(metrics_dir):
    with StoreWriter(metrics_dir, RUN_A, "h", flush_interval=1e9) as writer:
        writer.append([Row(T0, "system", "cpu_usage", 1.0)])
        writer.flush()
        writer.append([Row(T0 + 1, "system", "cpu_usage", 2.0)])
        write_run(metrics_dir, RunInfo(id=RUN_A, host="h", start=T0))
        assert gc(metrics_dir, 60, now=T0 + 365 * 86_400) == 0
    assert gc(metrics_dir, 60, now=T0 + 365 * 86_400) > 0
    assert scan(metrics_dir).collect().height == 0
    assert list_runs(metrics_dir) == []


def test_store_stats_counts_per_run(metrics_dir):
    _fill(metrics_dir, RUN_A, flushes=2)
    _fill(metrics_dir, RUN_B, flushes=3)
    stats = store_stats(metrics_dir)
    assert (stats.files, stats.uncompacted_files) == (10, 10)
    assert set(stats.run_bytes) == {RUN_A, RUN_B}
    assert stats.total_bytes >= sum(stats.run_bytes.values())
    # A run's journal not folded yet and its metadata file count towards it (and the total), not the other run.
    (metrics_dir / "_journal" / RUN_A).mkdir(parents=True, exist_ok=True)
    (metrics_dir / "_journal" / RUN_A / "w-000001.jsonl").write_bytes(b"x" * 100)
    (metrics_dir / "runs").mkdir(exist_ok=True)
    (metrics_dir / "runs" / f"{RUN_A}.json").write_bytes(b"y" * 50)
    after = store_stats(metrics_dir)
    files = [p for p in metrics_dir.rglob("*") if p.is_file() and RUN_A in str(p)]
    assert after.run_bytes[RUN_A] == sum(p.stat().st_size for p in files)
    assert after.run_bytes[RUN_B] == stats.run_bytes[RUN_B]
    assert after.total_bytes - after.run_bytes[RUN_A] == stats.total_bytes - stats.run_bytes[RUN_A]
    assert store_stats(metrics_dir / "missing").files == 0


def test_gc_deletes_a_runs_job_fields_with_its_metadata(metrics_dir):
    from llamamon.store.runs import annotate_run

    _fill(metrics_dir, RUN_A, flushes=1)
    write_run(metrics_dir, RunInfo(id=RUN_B, host="h", start=T0, end=T0 + 3 * 86_400))
    for run in (RUN_A, RUN_B):
        annotate_run(metrics_dir, run, config={"lr": 0.1})
    gc(metrics_dir, 2 * 86_400, now=T0 + 4 * 86_400)
    assert sorted(p.name for p in (metrics_dir / "runs").iterdir()) == [f"{RUN_B}.job", f"{RUN_B}.json"]
