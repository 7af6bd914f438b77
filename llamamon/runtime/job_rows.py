"""The rows a recorded job writes itself (``llamamon.log``) as they land in its journal.

Why here: the recorder's tick only sees its collectors' rows, yet the live .prom file must show the
job's step, loss and validation loss too. Reading the job's journal segments from the last offset costs
one folder listing and the new bytes per tick; the store's own fold is untouched.
"""

from __future__ import annotations

from pathlib import Path

from llamamon.samples import Row
from llamamon.store.journal import segment_paths, tail_segment


class JobJournalTail:
    """New rows in one run's journal segments, skipping the segments ``skip_pid`` (the recorder) writes."""

    def __init__(self, metrics_dir: Path, run_id: str, skip_pid: int) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.run_id = run_id
        self.skip_pid = skip_pid
        self.offsets: dict[Path, int] = {}
        self.skipped: set[Path] = set()

    def poll(self) -> list[Row]:
        rows: list[Row] = []
        for path in segment_paths(self.metrics_dir, self.run_id):
            if path in self.skipped:
                continue
            header, new, offset = tail_segment(path, self.offsets.get(path, 0))
            self.offsets[path] = offset
            if header is not None and header.get("pid") == self.skip_pid:
                self.skipped.add(path)
                continue
            rows.extend(new)
        return rows
