"""Reading journal segments back: whole (the fold), or from a byte offset as they grow (the followers).

Why apart from the writer: ``llamamon.log()`` and ``record`` only write (``store.journal``); what reads
segments (the fold, ``store.follower``, the reader's unfolded rows) needs the decoding. Standard library
only, as the journal. A torn last line (killed mid-write) is skipped; a column block whose every row is
storable is handed over undecoded (``ColumnBlock``), so a reader that needs a few of its metrics never
makes a Row of the others.
"""

from __future__ import annotations

import binascii
import json
import logging
import math
from array import array
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path

from llamamon.catalog import GROUPS
from llamamon.errors import StoreError
from llamamon.samples import Labels, Row, labels_from_str
from llamamon.store.journal import MAX_TIME, SWAP_BYTES, check_row, row_problem

log = logging.getLogger("llamamon.store")


def _unpacked(typecode: str, text: str) -> array:  # type: ignore[type-arg]
    column = array(typecode, binascii.a2b_base64(text))
    if SWAP_BYTES:
        column.byteswap()
    return column


@dataclass(frozen=True, slots=True)
class ColumnBlock:
    """A decoded column block: row i is ``series[codes[i]]`` with ``labels``, ``times[i]``, ``values[i]``
    and ``steps[i]`` (negative for none; ``steps`` is None when no row has one)."""

    series: list[tuple[str, str]]  # (group, metric)
    labels: str  # as labels_to_str writes them
    codes: array  # type: ignore[type-arg]
    times: array  # type: ignore[type-arg]
    values: array  # type: ignore[type-arg]
    steps: array | None  # type: ignore[type-arg]

    def rows(self) -> list[Row]:
        series, labels = self.series, labels_from_str(self.labels)
        if self.steps is None:
            return [
                Row(t, *series[c], v, labels, None) for c, t, v in zip(self.codes, self.times, self.values, strict=True)
            ]
        return [
            Row(t, *series[c], v, labels, None if s < 0 else s)
            for c, t, v, s in zip(self.codes, self.times, self.values, self.steps, strict=True)
        ]

    def rows_of(self, metrics: Container[str]) -> list[Row]:
        """The rows of these metrics only, in block order; the others are never made into Rows (a follower
        needs the few metrics its rules use out of all a job logs)."""
        wanted = {code for code, (_group, metric) in enumerate(self.series) if metric in metrics}
        if len(wanted) == len(self.series):
            return self.rows()
        if not wanted:
            return []
        labels = labels_from_str(self.labels)
        return [self.row(index, labels) for index, code in enumerate(self.codes) if code in wanted]

    def row(self, index: int, labels: Labels | None = None) -> Row:
        """Row ``index`` (``labels``: the block's, already parsed, when the caller makes many rows)."""
        step = None if self.steps is None or self.steps[index] < 0 else self.steps[index]
        group, metric = self.series[self.codes[index]]
        if labels is None:
            labels = labels_from_str(self.labels)
        return Row(self.times[index], group, metric, self.values[index], labels, step)

    def storable(self) -> bool:
        """True when every row passes ``row_problem``, checked per column (C loops, no Row objects)."""
        if any(group not in GROUPS for group, _ in self.series):
            return False
        times = self.times
        return not times or (math.isfinite(math.fsum(times)) and min(times) >= 0 and max(times) <= MAX_TIME)


def parse_columns(line: bytes) -> ColumnBlock:
    """A column block line, decoded; ValueError when it is not a whole, consistent block."""
    block = json.loads(line)
    if not isinstance(block, dict):
        raise ValueError("not a column block")
    try:
        count = block["rows"]
        series = [(str(group), str(metric)) for group, metric in block["series"]]
        labels = block["labels"]
        labels_from_str(labels)  # ValueError when it is not a labels string
        times = _unpacked("d", block["time"])
        values = _unpacked("d", block["value"])
        steps = _unpacked("q", block["step"]) if "step" in block else None
        if "codes" in block:
            typecode, packed = block["codes"]
            if typecode not in ("B", "H", "I", "L", "Q"):
                raise ValueError(f"codes of type {typecode!r}")
            codes = _unpacked(typecode, packed)
        else:
            codes = array("B", bytes(count))  # one series
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"bad column block ({exc})") from None
    if not (len(codes) == len(times) == len(values) == count and (steps is None or len(steps) == count)):
        raise ValueError("column block with columns of different lengths")
    if count and max(codes) >= len(series):
        raise ValueError("column block naming a series it does not list")
    return ColumnBlock(series, str(labels), codes, times, values, steps)


def _read_lines(lines: Iterable[bytes], keep_blocks: bool) -> tuple[list[Row], list[ColumnBlock], int]:
    """(rows, column blocks, unreadable lines or rows) of a segment's lines after its header.

    With ``keep_blocks`` a block whose rows are all storable is returned as it is (the fold writes it
    with column operations); otherwise, and for a block with a bad row, its rows are checked one by one.
    """
    rows: list[Row] = []
    blocks: list[ColumnBlock] = []
    bad = 0
    for line in lines:
        try:
            if line.startswith(b"{"):
                block = parse_columns(line)
                if keep_blocks and block.storable():
                    blocks.append(block)
                    continue
                for row in block.rows():
                    if row_problem(row) is None:
                        rows.append(row)
                    else:
                        bad += 1
                continue
            t, group, metric, value, labels, step = json.loads(line)
            rows.append(check_row(Row(float(t), group, metric, float(value), labels_from_str(labels), step)))
        except (ValueError, TypeError, StoreError):
            bad += 1
    return rows, blocks, bad


def read_segment(path: Path) -> tuple[dict[str, object], list[Row]]:
    """Header and rows of a segment; a torn last line and unreadable lines are skipped (with a warning)."""
    header, rows, _blocks = read_segment_blocks(path, keep_blocks=False)
    return header, rows


def read_segment_blocks(path: Path, keep_blocks: bool = True) -> tuple[dict[str, object], list[Row], list[ColumnBlock]]:
    """``read_segment`` that hands column blocks over undecoded (the fold's path: no Row per value)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline; else a line cut short by a kill
    if torn:
        log.warning("%s: skipped a torn last line (%d bytes), the writer was killed mid-write", path, len(torn))
    if not lines:
        return {}, [], []
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or "llamamon_journal" not in header:
            raise ValueError("no journal header")
    except ValueError:
        log.warning("%s: not a llamamon journal (bad header); skipped", path)
        return {}, [], []
    rows, blocks, bad = _read_lines(lines[1:], keep_blocks)
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    return header, rows, blocks


def tail_segment(
    path: Path, offset: int = 0, keep_blocks: bool = True
) -> tuple[dict[str, object] | None, list[Row], list[ColumnBlock], int]:
    """What was appended to a segment since byte ``offset``: (header when read from 0, rows, column blocks,
    next offset).

    For readers that follow a live run (``llamamon watch``, record's live alerts and .prom file): only whole
    lines are consumed, so a line being written is read on the next call; a vanished segment gives nothing
    and the same offset. Storable column blocks are handed over undecoded, because those readers need less
    than every row of them; ``keep_blocks=False`` decodes them into ``rows`` too.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return None, [], [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return None, [], [], offset
    lines = data[:end].split(b"\n")
    header: dict[str, object] | None = None
    if offset == 0:
        try:
            first = json.loads(lines[0])
        except ValueError:
            first = None
        if not isinstance(first, dict) or "llamamon_journal" not in first:
            return None, [], [], offset + end + 1  # not a journal: never read again
        header, lines = first, lines[1:]
    rows, blocks, _bad = _read_lines(lines, keep_blocks)  # the fold warns about unreadable lines
    return header, rows, blocks, offset + end + 1
