"""The rows a recorded job writes itself (``llamamon.log``) as they land in its journal.

Why here: the recorder's tick only sees its collectors' rows, yet the live .prom file must show the
job's step, loss and validation loss too. Reading the job's journal segments from the last offset costs
one folder listing and the new bytes per tick; the store's own fold is untouched. The file shows each
series' latest value, so of a column block (a flush of ``llamamon.log()`` calls, maybe a million
points) only each series' last row becomes a Row, plus every row of a histogram metric (each value
is an observation).
"""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

from llamamon import catalog
from llamamon.samples import Row, labels_from_str
from llamamon.store.journal import ColumnBlock, segment_paths, tail_segment


class JobJournalTail:
    """New rows in one run's journal segments, skipping the segments ``skip_pid`` (the recorder) writes."""

    def __init__(self, metrics_dir: Path, run_id: str, skip_pid: int) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.run_id = run_id
        self.skip_pid = skip_pid
        self.offsets: dict[Path, int] = {}
        self.skipped: set[Path] = set()

    def poll(self) -> list[Row]:
        """New rows in time order, a column block's reduced to what a latest-values snapshot needs."""
        rows: list[Row] = []
        for path in segment_paths(self.metrics_dir, self.run_id):
            if path in self.skipped:
                continue
            header, new, blocks, offset = tail_segment(path, self.offsets.get(path, 0))
            self.offsets[path] = offset
            if header is not None and header.get("pid") == self.skip_pid:
                self.skipped.add(path)
                continue
            rows.extend(new)
            for block in blocks:
                rows.extend(latest_rows(block))
        rows.sort(key=attrgetter("time"))
        return rows


def latest_rows(block: ColumnBlock) -> list[Row]:
    """Each series' last row by time (the later one on a tie), and every row of a histogram metric."""
    if any(_is_histogram(metric) for _, metric in block.series):
        return block.rows()
    times = block.times
    last: dict[int, int] = {}
    for index, code in enumerate(block.codes):
        seen = last.get(code)
        if seen is None or times[index] >= times[seen]:
            last[code] = index
    labels = labels_from_str(block.labels)
    return [block.row(index, labels) for index in last.values()]


def _is_histogram(name: str) -> bool:
    metric = catalog.get(name)
    return metric is not None and metric.kind == "histogram"
