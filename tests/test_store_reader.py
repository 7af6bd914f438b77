"""Corrupt, truncated and foreign files are named in a warning and skipped, never fatal."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llamamon.samples import Row
from llamamon.store import reader
from llamamon.store.reader import scan
from llamamon.store.writer import StoreWriter

RUN = "20261127T120000Z-testhost-abcd"
T0 = 1_764_244_800.0


@pytest.fixture
def partition(metrics_dir):
    with StoreWriter(metrics_dir, RUN, "h") as writer:
        writer.append([Row(T0 + i, "system", "cpu_usage", float(i)) for i in range(5)])
    return next(metrics_dir.glob("group=system/date=*/run=*"))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "llamamon.store" and r.levelno == logging.WARNING]


def test_truncated_file_is_warned_by_name_and_skipped(metrics_dir, partition, caplog):
    good = next(partition.glob("*.parquet"))
    data = good.read_bytes()
    bad = partition / "truncated.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        df = scan(metrics_dir).collect()
    assert sorted(df["value"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
    messages = _warnings(caplog)
    assert len(messages) == 1
    assert str(bad) in messages[0]
    assert "skipped" in messages[0]


def test_garbage_empty_and_foreign_schema_files_are_skipped(metrics_dir, partition, caplog):
    (partition / "garbage.parquet").write_bytes(b"not parquet at all" * 10)
    (partition / "empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"time": [1, 2], "value": ["a", "b"]}), partition / "foreign.parquet")
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        df = scan(metrics_dir).collect()
    assert df.height == 5
    messages = _warnings(caplog)
    for name in ("garbage", "empty", "foreign"):
        assert sum(f"{name}.parquet" in m for m in messages) == 1, messages


def test_corrupt_file_is_warned_once_and_rechecked_when_replaced(metrics_dir, partition, caplog):
    bad = partition / "later.parquet"
    bad.write_bytes(b"PAR1 broken")
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        scan(metrics_dir).collect()
        scan(metrics_dir).collect()
    assert len(_warnings(caplog)) == 1
    # Replaced by a valid file (new size/mtime): read again, not the cached verdict.
    pq.write_table(
        pa.table(
            {
                "time": pa.array([int(T0 * 1e6)], pa.timestamp("us", tz="UTC")),
                "host": ["h"],
                "metric": ["cpu_usage"],
                "value": [9.0],
                "labels": [""],
                "step": pa.array([None], pa.int64()),
            }
        ),
        bad,
    )
    assert 9.0 in scan(metrics_dir).collect()["value"].to_list()


def test_many_files_scan_uses_cached_footers(metrics_dir):
    with StoreWriter(metrics_dir, RUN, "h", flush_interval=0.0) as writer:
        for i in range(30):
            writer.append([Row(T0 + i, "system", "cpu_usage", float(i))])
    files = reader.data_files(metrics_dir)
    assert len(files) == 30
    assert all(str(f) in reader._verdicts for f in files)
    assert scan(metrics_dir).select("value").collect()["value"].sum() == sum(range(30))


def test_stored_ticks_counts_a_recorders_ticks_in_parquet_and_in_its_live_journal(metrics_dir):
    def tick(t: float) -> list[Row]:
        return [Row(t, "system", "cpu_usage", 0.5), Row(t, "system", "memory_used", 1e9), Row(t, "process", "x", 1)]

    writer = StoreWriter(metrics_dir, RUN, "h", flush_interval=3600)
    try:
        for i in range(3):
            writer.append(tick(T0 + i))
        writer.flush()  # three ticks in Parquet
        writer.append([Row(T0 + 2.5, "training", "loss", 0.1, step=7)])  # a job line: not a tick
        for i in range(3, 5):
            writer.append(tick(T0 + i))  # two in the writer's live journal
        assert reader.stored_ticks(metrics_dir, RUN) == 5
        assert reader.stored_ticks(metrics_dir, "20261127T120000Z-testhost-ffff") == 0
    finally:
        writer.close()
    assert reader.stored_ticks(metrics_dir, RUN) == 5
