"""Flush files (one journal segment's rows of one partition) encoded as Parquet with the standard library.

Why not pyarrow here: a flush runs inside ``llamamon record``, and importing pyarrow with numpy costs that
process about 60 MiB and a quarter of a CPU second, several times what recording itself needs (issue 20's
figures: ``python -m bench.recorder_weight``). A flush file is a few thousand rows in the store's six
columns, which is a small subset of Parquet to write: one row group per million rows, one data page per
column (format v1), dictionary-encoded strings (rows sorted by metric and labels make them long RLE runs),
PLAIN numbers, GZIP pages (zlib; the codec every Parquet reader has). pyarrow still writes every compacted
file (``store.compaction``), with zstd and the encodings in ``store.parquet``, and reads every file; the
schema written here reads back as ``store.parquet.SCHEMA`` exactly (tests/test_store_flush_file.py checks
that with pyarrow, polars and DuckDB).

The structures and field ids are those of parquet-format's ``parquet.thrift`` (FileMetaData, SchemaElement,
RowGroup, ColumnChunk, ColumnMetaData, PageHeader), in Thrift's compact protocol.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from llamamon.fsutil import atomic_write

MAGIC = b"PAR1"
ROW_GROUP_ROWS = 1 << 20  # bounds a page (Parquet sizes are i32) whatever an orphaned journal holds
GZIP_LEVEL = 6
CREATED_BY = "llamamon flush_file"

# parquet.thrift enums
_INT64, _DOUBLE, _BYTE_ARRAY = 2, 5, 6
_REQUIRED, _OPTIONAL = 0, 1
_UTF8, _TIMESTAMP_MICROS = 0, 10
_PLAIN, _RLE, _RLE_DICTIONARY = 0, 3, 8
_GZIP = 2
_DATA_PAGE, _DICTIONARY_PAGE = 0, 2
# Thrift compact protocol types
_T_BOOL, _T_I16, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 1, 4, 5, 6, 8, 9, 12  # BOOL: true's id


class Entry(NamedTuple):
    """One row of a flush file, in sort order (metric, labels, time): what the store keeps of a Row."""

    metric: str
    labels: str
    micros: int
    value: float
    step: int | None


def write(path: Path, entries: Sequence[Entry], host: str) -> Path:
    """Write ``entries`` (sorted by the caller) as one Parquet file, atomically."""
    return atomic_write(path, encode(entries, host))


def encode(entries: Sequence[Entry], host: str) -> bytes:
    out = bytearray(MAGIC)
    groups = []
    for start in range(0, max(len(entries), 1), ROW_GROUP_ROWS):
        groups.append(_row_group(out, entries[start : start + ROW_GROUP_ROWS], host, len(groups)))
    footer = _struct(
        (1, _T_I32, 1),
        (2, _T_LIST, (_T_STRUCT, _SCHEMA)),
        (3, _T_I64, len(entries)),
        (4, _T_LIST, (_T_STRUCT, groups)),
        (6, _T_BINARY, CREATED_BY),
        (7, _T_LIST, (_T_STRUCT, [_struct((1, _T_STRUCT, _struct()))] * 6)),  # TypeDefinedOrder per column
    )
    out += footer
    out += struct.pack("<I", len(footer))
    out += MAGIC
    return bytes(out)


def _row_group(out: bytearray, entries: Sequence[Entry], host: str, ordinal: int) -> bytes:
    start = len(out)
    n = len(entries)
    micros = array("q", [e.micros for e in entries])
    values = array("d", [e.value for e in entries])
    steps = [e.step for e in entries]
    present = array("q", [s for s in steps if s is not None])
    metrics = [e.metric for e in entries]
    columns = [
        _plain_column(out, "time", _INT64, _le(micros), n, _stats(micros)),
        _dictionary_column(out, "host", [host] * n, None),
        _dictionary_column(out, "metric", metrics, (min(metrics), max(metrics)) if metrics else None),
        _plain_column(out, "value", _DOUBLE, _le(values), n, None),
        _dictionary_column(out, "labels", [e.labels for e in entries], None),
        _plain_column(
            out,
            "step",
            _INT64,
            _def_levels(steps) + _le(present),
            n,
            _struct((3, _T_I64, n - len(present))),
            levels=True,
        ),
    ]
    sizes = [size for _chunk, size, _compressed in columns]
    return _struct(
        (1, _T_LIST, (_T_STRUCT, [chunk for chunk, _size, _compressed in columns])),
        (2, _T_I64, sum(sizes)),
        (3, _T_I64, n),
        (5, _T_I64, start),
        (6, _T_I64, sum(compressed for _chunk, _size, compressed in columns)),
        (7, _T_I16, ordinal),
    )


def _plain_column(
    out: bytearray, name: str, ptype: int, data: bytes, n: int, stats: bytes | None, levels: bool = False
) -> tuple[bytes, int, int]:
    offset = len(out)
    size, compressed = _page(out, _DATA_PAGE, data, (5, _T_STRUCT, _data_page_header(n, _PLAIN)))
    encodings = [_PLAIN, _RLE] if levels else [_PLAIN]  # RLE: the definition levels of a nullable column
    return _chunk(name, ptype, encodings, n, size, compressed, offset, None, stats), size, compressed


def _dictionary_column(
    out: bytearray, name: str, texts: list[str], bounds: tuple[str, str] | None
) -> tuple[bytes, int, int]:
    codes: dict[str, int] = {}
    indices = [codes.setdefault(text, len(codes)) for text in texts]
    dictionary = bytearray()
    for text in codes:
        raw = text.encode()
        dictionary += struct.pack("<I", len(raw))
        dictionary += raw
    dict_offset = len(out)
    dict_header = _struct((1, _T_I32, len(codes)), (2, _T_I32, _PLAIN))
    size, compressed = _page(out, _DICTIONARY_PAGE, bytes(dictionary), (7, _T_STRUCT, dict_header))
    data_offset = len(out)
    width = max(1, (len(codes) - 1).bit_length())
    data = bytes([width]) + _rle_runs(indices, width)
    data_size, data_compressed = _page(
        out, _DATA_PAGE, data, (5, _T_STRUCT, _data_page_header(len(texts), _RLE_DICTIONARY))
    )
    stats = None
    if bounds is not None:
        stats = _struct((3, _T_I64, 0), (5, _T_BINARY, bounds[1].encode()), (6, _T_BINARY, bounds[0].encode()))
    size += data_size
    compressed += data_compressed
    chunk = _chunk(
        name, _BYTE_ARRAY, [_PLAIN, _RLE_DICTIONARY], len(texts), size, compressed, data_offset, dict_offset, stats
    )
    return chunk, size, compressed


def _chunk(
    name: str,
    ptype: int,
    encodings: list[int],
    n: int,
    size: int,
    compressed: int,
    data_offset: int,
    dict_offset: int | None,
    stats: bytes | None,
) -> bytes:
    meta = _struct(
        (1, _T_I32, ptype),
        (2, _T_LIST, (_T_I32, encodings)),
        (3, _T_LIST, (_T_BINARY, [name])),
        (4, _T_I32, _GZIP),
        (5, _T_I64, n),
        (6, _T_I64, size),
        (7, _T_I64, compressed),
        (9, _T_I64, data_offset),
        (11, _T_I64, dict_offset),
        (12, _T_STRUCT, stats),
    )
    first = data_offset if dict_offset is None else dict_offset
    return _struct((2, _T_I64, first), (3, _T_STRUCT, meta))


def _data_page_header(n: int, encoding: int) -> bytes:
    return _struct((1, _T_I32, n), (2, _T_I32, encoding), (3, _T_I32, _RLE), (4, _T_I32, _RLE))


def _page(out: bytearray, page_type: int, data: bytes, header_field: tuple[int, int, bytes]) -> tuple[int, int]:
    """Append one GZIP page; returns its (uncompressed, compressed) size with its header, as ColumnMetaData counts."""
    body = zlib.compress(data, GZIP_LEVEL, wbits=31)
    header = _struct((1, _T_I32, page_type), (2, _T_I32, len(data)), (3, _T_I32, len(body)), header_field)
    out += header
    out += body
    return len(header) + len(data), len(header) + len(body)


def _def_levels(steps: list[int | None]) -> bytes:
    """The step column's definition levels (1 present, 0 null), RLE runs behind their 4-byte length."""
    runs = _rle_runs([0 if s is None else 1 for s in steps], 1)
    return struct.pack("<I", len(runs)) + runs


def _rle_runs(values: list[int], width: int) -> bytes:
    """RLE/bit-packed hybrid with RLE runs only: sorted rows make a handful of runs per column."""
    nbytes = (width + 7) // 8
    out = bytearray()
    i, n = 0, len(values)
    while i < n:
        value, j = values[i], i + 1
        while j < n and values[j] == value:
            j += 1
        out += _varint((j - i) << 1)
        out += value.to_bytes(nbytes, "little")
        i = j
    return bytes(out)


def _stats(numbers: array) -> bytes | None:  # type: ignore[type-arg]
    if not numbers:
        return None
    low, high = struct.pack("<q", min(numbers)), struct.pack("<q", max(numbers))
    return _struct((3, _T_I64, 0), (5, _T_BINARY, high), (6, _T_BINARY, low))


def _le(numbers: array) -> bytes:  # type: ignore[type-arg]
    if sys.byteorder == "big":  # Parquet's PLAIN numbers are little-endian
        numbers = array(numbers.typecode, numbers)
        numbers.byteswap()
    return numbers.tobytes()


# Thrift compact protocol: just what the structures above use.


def _struct(*fields: tuple[int, int, object]) -> bytes:
    out = bytearray()
    last = 0
    for field_id, ttype, value in fields:
        if value is None:
            continue  # an optional field left out
        delta = field_id - last
        wire = (1 if value else 2) if ttype == _T_BOOL else ttype  # a bool's value is its field type
        out.append(delta << 4 | wire if 0 < delta <= 15 else wire)
        if not 0 < delta <= 15:
            out += _varint(_zigzag(field_id))
        last = field_id
        if ttype != _T_BOOL:
            out += _value(ttype, value)
    out.append(0)
    return bytes(out)


def _value(ttype: int, value: object) -> bytes:
    if ttype in (_T_I16, _T_I32, _T_I64):
        return _varint(_zigzag(int(value)))  # type: ignore[call-overload]
    if ttype == _T_BINARY:
        raw = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        return _varint(len(raw)) + raw
    if ttype == _T_STRUCT:
        return bytes(value)  # type: ignore[arg-type]
    if ttype == _T_LIST:
        etype, items = value  # type: ignore[misc]
        head = bytes([len(items) << 4 | etype]) if len(items) < 15 else bytes([0xF0 | etype]) + _varint(len(items))
        return head + b"".join(_value(etype, item) for item in items)
    raise ValueError(f"thrift type {ttype} not written here")


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _leaf(name: str, ptype: int, repetition: int, converted: int | None = None, logical: bytes | None = None) -> bytes:
    return _struct(
        (1, _T_I32, ptype),
        (3, _T_I32, repetition),
        (4, _T_BINARY, name),
        (6, _T_I32, converted),
        (10, _T_STRUCT, logical),
    )


_STRING = _struct((1, _T_STRUCT, _struct()))  # LogicalType.STRING
_TIMESTAMP_UTC_US = _struct(
    (8, _T_STRUCT, _struct((1, _T_BOOL, True), (2, _T_STRUCT, _struct((2, _T_STRUCT, _struct())))))
)
_SCHEMA = [
    _struct((4, _T_BINARY, "schema"), (5, _T_I32, 6)),
    _leaf("time", _INT64, _REQUIRED, _TIMESTAMP_MICROS, _TIMESTAMP_UTC_US),
    _leaf("host", _BYTE_ARRAY, _REQUIRED, _UTF8, _STRING),
    _leaf("metric", _BYTE_ARRAY, _REQUIRED, _UTF8, _STRING),
    _leaf("value", _DOUBLE, _REQUIRED),
    _leaf("labels", _BYTE_ARRAY, _REQUIRED, _UTF8, _STRING),
    _leaf("step", _INT64, _OPTIONAL),
]
