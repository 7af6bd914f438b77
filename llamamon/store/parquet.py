"""Parquet files of the store: the only module that imports pyarrow at top level.

Only ever imported from inside functions (writer flush, journal fold, reader, compaction), never on
the ``llamamon --help`` or ``import llamamon`` path.

Encodings (each compared with its alternatives by ``python bench/store_io.py``; what the store ends up
with, bytes per sample by column, is in bench/RESULTS.md, row "Storage after compaction, one day at 1 Hz
x 16 series"): rows sorted by (metric, labels, time) make every column run-friendly;
``host``/``metric``/``labels`` are dictionary-encoded; ``time`` and ``step`` use DELTA_BINARY_PACKED (a
1 Hz series is a near-constant delta); ``value`` uses BYTE_STREAM_SPLIT, because the built-in collectors
store values on power-of-two grids (catalog resolutions), so a value's low mantissa bytes are zero and
its byte streams compress (with decimal-rounded values PLAIN was the smaller; dictionary-encoded values
are larger than either). BYTE_STREAM_SPLIT on the int64 ``time`` column would be smaller still, but
readers only learned it in 2024 (DuckDB only in 2026), so the store keeps DELTA there: any DuckDB,
polars or pandas reads it. Compacted files use zstd level 19 (more CPU than level 9, spent once per
file, for a smaller one) and a single page per column (see COMPACT_OPTIONS).

No ``ARROW:schema`` footer entry is written: it repeats the schema (and every metadata key, base64'd)
in every file, and the Parquet types alone read back as the same Arrow schema.
"""

from __future__ import annotations

import base64
import inspect
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llamamon.fsutil import atomic_write
from llamamon.samples import Row, labels_to_str
from llamamon.store.layout import utc_date
from llamamon.store.segment_reader import ColumnBlock

SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("host", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("labels", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=True),
    ]
)
SORT_KEYS = [("metric", "ascending"), ("labels", "ascending"), ("time", "ascending")]
REPLACES_KEY = b"llamamon.replaces"  # plain JSON list: files written before the compressed form
# The files a compacted file supersedes, as base64(zlib(JSON list)): a day of 30 s flushes is 2,880
# names per partition, and names that share their writer's prefix compress to a few bytes each (the
# footer's bytes per replaced file: bench/RESULTS.md, notes of "Storage after compaction ...").
REPLACES_Z_KEY = b"llamamon.replaces.z"
ZSTD_LEVEL = 9
COMPACT_ZSTD_LEVEL = 19

WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": ZSTD_LEVEL,
    "use_dictionary": ["host", "metric", "labels"],
    "column_encoding": {"time": "DELTA_BINARY_PACKED", "value": "BYTE_STREAM_SPLIT", "step": "DELTA_BINARY_PACKED"},
    "write_statistics": ["time", "metric"],
}

# Compacted files: one row group and one page per column. pyarrow's default pages (20,000 rows) split a
# day's time column so zstd never sees that every series repeats the same (jittered) timestamps; one
# page lets it (``python bench/store_io.py``: "llamamon flush-file options" against "llamamon
# compacted"). Reads here are whole-partition scans, so page-level skipping is not lost.
COMPACT_OPTIONS: dict[str, Any] = {
    **WRITE_OPTIONS,
    "compression_level": COMPACT_ZSTD_LEVEL,
    "data_page_size": 256 << 20,
    "row_group_size": 1 << 26,
}
if "max_rows_per_page" in inspect.signature(pq.ParquetWriter.__init__).parameters:
    COMPACT_OPTIONS["max_rows_per_page"] = 1 << 26


class CorruptFile(Exception):
    """A file the readers must skip: not Parquet, truncated, or not in the store's schema."""


def rows_to_table(rows: Sequence[Row], host: str) -> pa.Table:
    """Rows (one partition's) as a table in the store schema, sorted for compression and range reads.

    Sorted in Python, in the order of SORT_KEYS (str order is UTF-8 byte order, as pyarrow's): a flush
    is a few thousand rows at most, and leaving pyarrow.compute unimported (it is also what
    ``Array.cast`` pulls in) keeps its import off the end of every short ``llamamon record`` (whose
    phases are in bench/RESULTS.md, notes of "Start-up: `llamamon record -- true` wall time").
    """
    keyed = sorted(((r.metric, labels_to_str(r.labels), round(r.time * 1_000_000), r) for r in rows), key=_key)
    return pa.table(
        {
            "time": pa.array([k[2] for k in keyed], SCHEMA.field("time").type),
            "host": pa.array([host] * len(keyed), pa.string()),
            "metric": pa.array([k[0] for k in keyed], pa.string()),
            "value": pa.array([k[3].value for k in keyed], pa.float64()),
            "labels": pa.array([k[1] for k in keyed], pa.string()),
            "step": pa.array([k[3].step for k in keyed], pa.int64()),
        },
        schema=SCHEMA,
    )


def block_tables(block: ColumnBlock, host: str) -> dict[tuple[str, str], pa.Table]:
    """A column block (all rows storable) as unsorted tables in the store schema, per (group, date).

    Column operations from the block's packed arrays: no Row object per value, however many points a
    job logged.
    """
    import numpy as np  # pyarrow's own dependency

    codes = np.frombuffer(block.codes, dtype=np.dtype(block.codes.typecode)).astype(np.intp)
    micros = np.round(np.frombuffer(block.times, dtype=np.float64) * 1_000_000).astype(np.int64)
    values = np.frombuffer(block.values, dtype=np.float64)
    steps = np.frombuffer(block.steps, dtype=np.int64) if block.steps is not None else None
    groups = sorted({group for group, _ in block.series})
    group_of_code = np.array([groups.index(group) for group, _ in block.series], dtype=np.intp)[codes]
    metric_of_code = np.array([metric for _, metric in block.series], dtype=object)
    days = micros // 86_400_000_000
    out = {}
    for g, group in enumerate(groups):
        in_group = group_of_code == g
        for day in np.unique(days[in_group]):
            take = np.flatnonzero(in_group & (days == day))
            n = len(take)
            step = None if steps is None else steps[take]
            out[(group, utc_date(int(day) * 86_400.0))] = pa.table(
                {
                    "time": pa.array(micros[take], SCHEMA.field("time").type),
                    "host": pa.repeat(pa.scalar(host, pa.string()), n),
                    "metric": pa.array(metric_of_code[codes[take]], pa.string()),
                    "value": pa.array(values[take], pa.float64()),
                    "labels": pa.repeat(pa.scalar(block.labels, pa.string()), n),
                    "step": pa.array(step, pa.int64(), mask=step < 0) if step is not None else pa.nulls(n, pa.int64()),
                },
                schema=SCHEMA,
            )
    return out


def _key(item: tuple[str, str, int, Row]) -> tuple[str, str, int]:
    return item[0], item[1], item[2]


def sort_table(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc  # compaction only; see rows_to_table

    return table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))


def merge_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """Tables of one partition as one, sorted as the store sorts (compaction, a fold with column blocks)."""
    return sort_table(pa.concat_tables(tables))


def write_table(path: Path, table: pa.Table, replaces: Sequence[str] = (), **options: Any) -> Path:
    """Write a whole file atomically; ``replaces`` lists the sibling files this one supersedes (compaction)."""
    if not table.schema.equals(SCHEMA):  # Table.cast imports pyarrow.compute even when there is nothing to do
        table = table.cast(SCHEMA)
    table = table.replace_schema_metadata(None)
    settings = {**WRITE_OPTIONS, **options}
    row_group_size = settings.pop("row_group_size", None)

    def write(fh: Any) -> None:
        with pq.ParquetWriter(fh, SCHEMA, store_schema=False, **settings) as writer:
            writer.write_table(table, row_group_size=row_group_size)
            if replaces:
                writer.add_key_value_metadata({REPLACES_Z_KEY: encode_names(replaces)})

    return atomic_write(path, write)


def encode_names(names: Sequence[str]) -> bytes:
    return base64.b64encode(zlib.compress(json.dumps(sorted(names)).encode(), 9))


def decode_names(raw: bytes, compressed: bool) -> list[str]:
    """The replaced-file list of a footer; ValueError when it is not one."""
    try:
        data = json.loads(zlib.decompress(base64.b64decode(raw, validate=True)) if compressed else raw)
    except (zlib.error, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, list):
        raise ValueError("not a list")
    return [str(name) for name in data]


def inspect(path: Path) -> tuple[int, list[str]]:
    """(row count, files it replaces) from the footer alone; CorruptFile when readers must skip it.

    Reads only the footer (a few KiB), so validating thousands of files stays fast.
    """
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise CorruptFile(f"{path}: unreadable Parquet ({_reason(exc)}); skipped") from None
    for field in SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0 or not schema.field(idx).type.equals(field.type):
            raise CorruptFile(f"{path}: column {field.name!r} missing or not {field.type}; skipped")
    replaces: list[str] = []
    footer = meta.metadata or {}
    for key, compressed in ((REPLACES_Z_KEY, True), (REPLACES_KEY, False)):
        raw = footer.get(key)
        if raw:
            try:
                replaces += decode_names(raw, compressed)
            except ValueError:
                raise CorruptFile(f"{path}: bad {key.decode()} metadata; skipped") from None
    return meta.num_rows, replaces


def read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path, schema=SCHEMA)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise CorruptFile(f"{path}: unreadable Parquet ({_reason(exc)}); skipped") from None


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
