"""The metrics store: hive-partitioned Parquet, a crash-safe journal, and run metadata.

Package rule: the store only stores. It knows nothing of alerts and must not import
llamamon.collectors, llamamon.rules, llamamon.channels, llamamon.report or llamamon.cli; polars and
pyarrow are imported only inside functions (or by store.parquet / store.reader, which are themselves
only imported inside functions).
"""

from __future__ import annotations

import os
from pathlib import Path

from llamamon.errors import StoreError

__all__ = ["open_store"]


def open_store(metrics_dir: str | os.PathLike[str]) -> Path:
    """Create the metrics folder if needed and fold the journals of writers that died; returns the folder.

    Every llamamon command that uses the store calls this first, so rows a killed recorder left in its
    journal reach Parquet (and a killed compaction is finished) the next time anyone looks. pyarrow is
    only imported when there is something to fold.
    """
    root = Path(metrics_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create metrics folder {root}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise StoreError(f"metrics folder {root} is not a directory")
    from llamamon.store import journal
    from llamamon.store.compaction_intents import recover

    recover(root)
    if journal.segment_paths(root):
        from llamamon.store.writer import fold_orphans

        fold_orphans(root)
    return root
