"""Parquet files of the store as pyarrow reads them and compaction writes them: the only module that imports
pyarrow at top level.

Only ever imported from inside functions (reader, compaction), never on the ``llamamon --help`` or ``import
llamamon`` path, nor by ``llamamon record`` until its run ends: the flush files a run writes as it goes are
``store.flush_file``'s (standard library only, same schema), which compaction rewrites with the encodings here.

Encodings of compacted files (each compared with its alternatives by ``python bench/store_io.py``; what the store ends up
with, bytes per sample by column, is in bench/RESULTS.md, row "Storage after compaction, one day at 1 Hz
x 16 series"): rows sorted by (metric, labels, time) make every column run-friendly;
``host``/``metric``/``labels`` are dictionary-encoded; ``time`` and ``step`` use DELTA_BINARY_PACKED (a
1 Hz series is a near-constant delta); ``value`` uses BYTE_STREAM_SPLIT, because the built-in collectors
store values on power-of-two grids (catalog resolutions), so a value's low mantissa bytes are zero and
its byte streams compress (with decimal-rounded values PLAIN was the smaller; dictionary-encoded values
are larger than either). BYTE_STREAM_SPLIT on the int64 ``time`` column would be smaller still, but
readers only learned it in 2024 (DuckDB only in 2026), so the store keeps DELTA there: any DuckDB,
polars or pandas reads it. zstd level 19 (more CPU than level 9, spent once per file, for a smaller one)
and a single page per column (see COMPACT_OPTIONS).

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
COMPACT_ZSTD_LEVEL = 19

# Compacted files, which pyarrow writes (flush files are store.flush_file's): one row group and one page per
# column. pyarrow's default pages (20,000 rows) split a day's time column so zstd never sees that every series
# repeats the same (jittered) timestamps; one page lets it (``python bench/store_io.py``). Reads here are
# whole-partition scans, so page-level skipping is not lost.
COMPACT_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": COMPACT_ZSTD_LEVEL,
    "use_dictionary": ["host", "metric", "labels"],
    "column_encoding": {"time": "DELTA_BINARY_PACKED", "value": "BYTE_STREAM_SPLIT", "step": "DELTA_BINARY_PACKED"},
    "write_statistics": ["time", "metric"],
    "data_page_size": 256 << 20,
    "row_group_size": 1 << 26,
}
if "max_rows_per_page" in inspect.signature(pq.ParquetWriter.__init__).parameters:
    COMPACT_OPTIONS["max_rows_per_page"] = 1 << 26


class CorruptFile(Exception):
    """A file the readers must skip: not Parquet, truncated, or not in the store's schema."""


def sort_table(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc  # compaction only; see rows_to_table

    return table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))


def write_table(path: Path, table: pa.Table, replaces: Sequence[str] = ()) -> Path:
    """Write a whole file atomically with COMPACT_OPTIONS; ``replaces`` lists the sibling files this one
    supersedes."""
    if not table.schema.equals(SCHEMA):  # Table.cast imports pyarrow.compute even when there is nothing to do
        table = table.cast(SCHEMA)
    table = table.replace_schema_metadata(None)
    settings = dict(COMPACT_OPTIONS)
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
