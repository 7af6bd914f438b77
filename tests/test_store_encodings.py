"""What a compacted file looks like on disk: the encodings chosen in store/parquet.py, read off its footer,
and that other readers (polars, pyarrow, DuckDB) see the same rows through them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llamamon.samples import Row, RunInfo, make_labels
from llamamon.store import parquet
from llamamon.store.compaction import compact
from llamamon.store.reader import partition_files, scan
from llamamon.store.runs import write_run
from llamamon.store.writer import StoreWriter

T0 = 1_764_244_800.0  # 2025-11-27T12:00:00Z
RUN = "20251127T120000Z-h-cccc"


def _record(root: Path, flushes: int = 6) -> None:
    with StoreWriter(root, RUN, "h", flush_interval=1e9) as writer:
        for k in range(flushes):
            writer.append(
                Row(T0 + k * 10 + i + 0.000731 * i, "gpu", metric, value, make_labels(gpu="0"))
                for i in range(10)
                for metric, value in (("gpu_utilization", (k + i) / 1024), ("gpu_power", 300 + i / 1024))
            )
            writer.flush()
    write_run(root, RunInfo(id=RUN, host="h", start=T0, end=T0 + 3600))


def _compacted(root: Path) -> Path:
    (path,) = root.glob("group=gpu/date=*/run=*/compact-*.parquet")
    return path


def test_compacted_file_uses_the_chosen_encodings(metrics_dir: Path):
    _record(metrics_dir)
    compact(metrics_dir)
    meta = pq.read_metadata(_compacted(metrics_dir))
    assert meta.num_row_groups == 1
    group = meta.row_group(0)
    columns = {group.column(c).path_in_schema: group.column(c) for c in range(group.num_columns)}
    assert "BYTE_STREAM_SPLIT" in columns["value"].encodings
    assert "DELTA_BINARY_PACKED" in columns["time"].encodings
    assert "DELTA_BINARY_PACKED" in columns["step"].encodings
    for name in ("host", "metric", "labels"):
        assert "RLE_DICTIONARY" in columns[name].encodings, name
    assert {c.compression for c in columns.values()} == {"ZSTD"}
    assert b"ARROW:schema" not in (meta.metadata or {})  # the Parquet types alone give the store schema
    assert meta.schema.to_arrow_schema().remove_metadata().equals(parquet.SCHEMA)


def test_replaced_files_are_listed_compressed_and_old_plain_lists_still_count(metrics_dir: Path):
    _record(metrics_dir)
    flushed = sorted(p.name for p in metrics_dir.glob("group=gpu/date=*/run=*/*.parquet"))
    compact(metrics_dir)
    path = _compacted(metrics_dir)
    footer = pq.read_metadata(path).metadata
    assert parquet.REPLACES_KEY not in footer
    assert parquet.decode_names(footer[parquet.REPLACES_Z_KEY], compressed=True) == flushed
    assert parquet.inspect(path) == (120, flushed)

    # A compacted file written before the compressed form: its plain JSON list is still honoured.
    old = path.with_name("compact-0ld0.parquet")
    table = parquet.read_table(path).replace_schema_metadata({parquet.REPLACES_KEY: json.dumps([path.name]).encode()})
    pq.write_table(table, old)
    assert parquet.inspect(old) == (120, [path.name])
    assert partition_files(path.parent) == [old]


def test_other_readers_see_the_same_rows(metrics_dir: Path):
    _record(metrics_dir)
    ours = scan(metrics_dir).collect()
    compact(metrics_dir)
    path = _compacted(metrics_dir)
    assert scan(metrics_dir).collect().sort("metric", "time").equals(ours.sort("metric", "time"))

    def rows(frame: pl.DataFrame) -> Counter:
        return Counter(zip(frame["metric"], frame["time"].dt.epoch("us"), frame["value"], strict=True))

    expected = rows(ours)
    assert rows(pl.read_parquet(path)) == expected
    assert rows(pl.from_arrow(pq.read_table(path))) == expected
    assert pq.read_table(path).schema.field("time").type == pa.timestamp("us", tz="UTC")
    duckdb = pytest.importorskip("duckdb")
    with duckdb.connect() as con:
        got = con.execute(f"SELECT metric, epoch_us(time), value FROM read_parquet('{path}')").fetchall()
    assert Counter(got) == expected
