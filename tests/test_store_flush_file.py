"""store.flush_file against the real readers: pyarrow (the store's own reader and compaction), polars and DuckDB
read what it writes as the store's schema, with every value bit for bit, and the footer statistics are right."""

from __future__ import annotations

import io
import math
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from llamamon.store import flush_file, parquet
from llamamon.store.flush_file import Entry

try:
    import duckdb  # an optional reader, not a llamamon dependency
except ImportError:
    duckdb = None

T0 = 1_764_244_800_000_000  # 2025-11-27T12:00:00Z in µs
ODD_FLOATS = [0.0, -0.0, 5e-324, -1.7976931348623157e308, math.inf, -math.inf, 0.1 + 0.2, 1 / 3]
NAN_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]


def _entries() -> list[Entry]:
    out = [Entry("cpu_usage", "", T0 + i * 100_000, v, None) for i, v in enumerate(ODD_FLOATS)]
    out += [Entry("loss", '{"phase":"训练"}', T0 + i, 2.5 - i, step) for i, step in enumerate([0, None, 2**62, -5])]
    out += [Entry("nan", "", -1_000_000, NAN_PAYLOAD, None)]  # before 1970, a NaN with a payload
    # 300 label sets: dictionary indices wider than one byte
    out += [Entry("zz_many", f'{{"k":"{i:03d}"}}', T0, float(i), i) for i in range(300)]
    return sorted(out, key=lambda e: (e.metric, e.labels, e.micros))


def _utc(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _expected(entries: list[Entry]) -> list[tuple]:
    return [(e.micros, "host-α", e.metric, _bits(e.value), e.labels, e.step) for e in entries]


def _got(micros, hosts, metrics, values, labels, steps) -> list[tuple]:
    return [
        (t, h, m, _bits(v), lab, s)
        for t, h, m, v, lab, s in zip(micros, hosts, metrics, values, labels, steps, strict=True)
    ]


@pytest.fixture(params=[flush_file.ROW_GROUP_ROWS, 7], ids=["one row group", "many row groups"])
def written(request, tmp_path: Path, monkeypatch) -> tuple[Path, list[Entry]]:
    monkeypatch.setattr(flush_file, "ROW_GROUP_ROWS", request.param)
    entries = _entries()
    return flush_file.write(tmp_path / "f.parquet", entries, "host-α"), entries


def test_pyarrow_reads_the_store_schema_and_every_bit(written):
    path, entries = written
    table = parquet.read_table(path)
    assert table.schema.equals(parquet.SCHEMA)
    d = table.to_pydict()
    micros = table.column("time").cast("int64").to_pylist()
    assert _got(micros, d["host"], d["metric"], d["value"], d["labels"], d["step"]) == _expected(entries)
    assert parquet.inspect(path) == (len(entries), [])


def test_polars_and_duckdb_read_it_as_pyarrow_does(written):
    path, entries = written
    frame = pl.read_parquet(path)
    assert frame.schema["time"] == pl.Datetime("us", "UTC")
    micros = frame["time"].dt.epoch("us").to_list()
    got = _got(micros, frame["host"], frame["metric"], frame["value"], frame["labels"], frame["step"])
    assert got == _expected(entries)
    if duckdb is None:
        pytest.skip("duckdb is not installed (an optional reader, not a llamamon dependency)")
    rows = (
        duckdb.connect().execute(f"select epoch_us(time), host, metric, value, labels, step from '{path}'").fetchall()
    )
    assert _got(*zip(*rows, strict=True)) == _expected(entries)


def test_the_footer_statistics_bound_time_and_metric_and_count_nulls(written):
    path, entries = written
    meta = pq.read_metadata(path)
    assert meta.num_rows == len(entries)
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        names = [group.column(c).path_in_schema for c in range(group.num_columns)]
        assert names == ["time", "host", "metric", "value", "labels", "step"]
        time_stats, metric_stats, step_stats = (
            group.column(0).statistics,
            group.column(2).statistics,
            group.column(5).statistics,
        )
        start, rows = total, group.num_rows
        chunk = entries[start : start + rows]
        total += rows
        assert (time_stats.min, time_stats.max) == (
            _utc(min(e.micros for e in chunk)),
            _utc(max(e.micros for e in chunk)),
        )
        assert (metric_stats.min, metric_stats.max) == (chunk[0].metric, chunk[-1].metric)
        assert step_stats.null_count == sum(e.step is None for e in chunk)
    assert total == len(entries)


def test_an_empty_file_is_still_parquet(tmp_path: Path):
    table = pq.read_table(io.BytesIO(flush_file.encode([], "h")))
    assert table.num_rows == 0
    assert table.schema.equals(parquet.SCHEMA)
