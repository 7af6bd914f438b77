"""How ``record``'s rows become Parquet, decided in one place (:class:`ParquetRoute`).

Every row is journaled first, so a ``kill -9`` of ``record`` loses at most what was not journaled yet, and
a journal left behind is folded by the next llamamon command. While the job runs, the store writer's
flushes and the folds of the job's own journals write flush files with ``store.flush_file`` (standard
library only), so this process never imports pyarrow and numpy for them: that import alone is about
60 MiB and a quarter of a CPU second, several times the rest of recording (issue 20;
``python -m bench.recorder_weight``). pyarrow comes in at the run's end, and only when the run is worth
compacting there (a partition holds more than one flush file, and all of them are few: COMPACT_AT_EXIT_*);
a run shorter than one flush interval has one file per partition and never loads it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from llamamon.store.writer import StoreWriter

log = logging.getLogger("llamamon.record")

FLUSH_INTERVAL_S = 30.0  # the store writer's Parquet flushes, and the folds of the job's journals
# A run with at most this many files, and bytes, is compacted as it ends, where the wait is short (500
# files: an hour of four partitions in FLUSH_INTERVAL_S flushes); a bigger one is left for `llamamon
# compact`, which a user runs when the wait suits them.
COMPACT_AT_EXIT_FILES = 500
COMPACT_AT_EXIT_BYTES = 8 << 20


class ParquetRoute:
    """``record``'s store writer and the folds beside it. Used from the sampler's loop, but for :meth:`finish`."""

    def __init__(self) -> None:
        self._fold: asyncio.Future[None] | None = None
        self._next_fold = 0.0

    def open_writer(self, metrics_dir: Path, run_id: str, host: str) -> StoreWriter:
        """The run's writer: it journals every row at once and writes Parquet every FLUSH_INTERVAL_S."""
        from llamamon.store.writer import StoreWriter

        self._next_fold = time.monotonic() + FLUSH_INTERVAL_S
        return StoreWriter(metrics_dir, run_id, host, flush_interval=FLUSH_INTERVAL_S)

    def after_tick(self, metrics_dir: Path) -> None:
        """Segments the job's llamamon.log() has finished (it rotates them) go into Parquet while it runs, in a
        thread beside the ticks, every FLUSH_INTERVAL_S: a long run's journal stays small and its exit quick."""
        now = time.monotonic()
        if now >= self._next_fold and (self._fold is None or self._fold.done()):
            import asyncio

            self._next_fold = now + FLUSH_INTERVAL_S
            self._fold = asyncio.ensure_future(asyncio.to_thread(_fold_journals, metrics_dir))

    async def close_writer(self, writer: StoreWriter) -> None:
        """After the last tick: the fold under way done, then the writer's last rows written."""
        if self._fold is not None:
            await self._fold  # never raises: _fold_journals says what failed
        writer.close()

    def finish(self, metrics_dir: Path, run_id: str) -> None:
        """At exit: the rows still in journals (the job's) into Parquet, then the run compacted when that is cheap."""
        _fold_journals(metrics_dir)
        from llamamon.store.compaction import compact_ended_run

        try:
            compact_ended_run(metrics_dir, run_id, COMPACT_AT_EXIT_FILES, COMPACT_AT_EXIT_BYTES)
        except Exception as exc:  # noqa: BLE001 - the run is recorded; `llamamon compact` can do this later
            log.warning("compacting the run failed: %s (its files stay as they are)", exc)


def _fold_journals(metrics_dir: Path) -> None:
    """Fold here every journal segment whose writer is gone (the job's, once it has finished them)."""
    from llamamon.store.writer import fold_orphans

    try:
        fold_orphans(metrics_dir)  # a segment still locked (a job's child lives on) waits for next time
    except Exception as exc:  # noqa: BLE001 - the rows stay in the journal; the next store open folds them
        log.warning("folding the job's metrics journal failed: %s (kept for the next llamamon command)", exc)
