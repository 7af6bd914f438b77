"""Storage: bytes per sample of one day of 1 Hz system + process + GPU + training metrics after compaction.

    python -m bench.storage [--quick]

The day (16 series from bench/synthetic.py, 1,382,400 samples) goes through llamamon's real write
path: ``StoreWriter.append`` once per tick (journal, then a Parquet flush every 30 s of the fake
clock), then ``compact()``. Bytes are every data file under the store afterwards (run metadata
excluded). Baselines from the same rows: CSV in the store's long schema (time, host, metric, value,
labels, step), CSV wide (one row per second, one column per series: what most loggers write),
psrecord's plain log format (fixed-width ``%12.3f`` columns, one line per second) and Prometheus
TSDB's 1.37 B/sample (a constant quoted in the issue, not measured here). Target: <= 1.37 B/sample.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_B_PER_SAMPLE = 1.37


def _rows_by_tick(tables: dict) -> list[list]:
    from llamamon.samples import Row, labels_from_str

    ticks: dict[int, list] = {}
    for group, table in tables.items():
        cols = table.to_pydict()
        labels = {s: labels_from_str(s) for s in set(cols["labels"])}
        for t, metric, value, lbl, step in zip(
            cols["time"], cols["metric"], cols["value"], cols["labels"], cols["step"], strict=True
        ):
            ts = t.timestamp()
            ticks.setdefault(int(ts), []).append(Row(ts, group, metric, value, labels[lbl], step))
    return [ticks[k] for k in sorted(ticks)]


def csv_long(tables: dict) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(pa.concat_tables(tables.values()), buf)
    return buf.tell()


def wide(tables: dict):
    import polars as pl

    frame = pl.concat([pl.from_arrow(t) for t in tables.values()])
    frame = frame.with_columns(pl.col("time").dt.truncate("1s").alias("second"))
    return frame.pivot(on="metric", index="second", values="value", aggregate_function="first").sort("second")


def csv_wide(tables: dict) -> int:
    frame = wide(tables)
    return len(frame.write_csv().encode())


def psrecord_log(tables: dict) -> int:
    """psrecord's plain log: a header, then one line per sample of fixed-width %12.3f columns."""
    frame = wide(tables).drop("second")
    out = io.StringIO()
    out.write("# Elapsed time".ljust(16) + "".join(c[:12].rjust(13) for c in frame.columns) + "\n")
    for k, row in enumerate(frame.iter_rows()):
        out.write(f"{float(k):12.3f}" + "".join(f" {v:12.3f}" for v in row) + "\n")
    return len(out.getvalue().encode())


def through_writer(seconds: int) -> dict:
    """The real write path on a slice: StoreWriter.append per tick, flushes, close, compact()."""
    from bench.synthetic import HOST, RUN, day_tables
    from llamamon.store.compaction import compact
    from llamamon.store.writer import StoreWriter

    tables = day_tables(0, seconds)
    samples = sum(t.num_rows for t in tables.values())
    ticks = _rows_by_tick(tables)
    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        root = Path(tmp) / "m"
        now = [0.0]
        writer = StoreWriter(root, RUN, HOST, flush_interval=30.0, clock=lambda: now[0])
        t0 = time.perf_counter()
        for k, rows in enumerate(ticks):
            now[0] = float(k)
            writer.append(rows)
        writer.close()
        write_s = time.perf_counter() - t0
        flushed = list(root.glob("group=*/date=*/run=*/*.parquet"))
        flushed_bytes = sum(p.stat().st_size for p in flushed)
        compact(root, older_than=0.0)
        compacted_files = list(root.glob("group=*/date=*/run=*/*.parquet"))
        compacted = sum(p.stat().st_size for p in compacted_files)
        names_bytes = sum(len(_replaces(p)) for p in compacted_files)
    return {
        "seconds": seconds,
        "samples": samples,
        "write_s": write_s,
        "flush_files": len(flushed),
        "flush_bytes": flushed_bytes,
        "compacted_bytes": compacted,
        "replaces_metadata_bytes": names_bytes,
    }


def _replaces(path: Path) -> bytes:
    """The compacted file's footer list of the flush files it replaced (it grows with the flushes)."""
    import pyarrow.parquet as pq

    from llamamon.store import parquet

    return (pq.read_schema(path).metadata or {}).get(parquet.REPLACES_KEY, b"")


def day(seconds: int) -> dict:
    """The whole day compacted: one file per partition, then compact() (which rewrites every partition
    from its rows alone, so the result is the same file the 2,880 flushes of a day would compact into)."""
    from bench.synthetic import write_store

    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        root = Path(tmp) / "m"
        samples = write_store(root, 1, seconds)
        files = list(root.glob("group=*/date=*/run=*/*.parquet"))
        compacted = sum(p.stat().st_size for p in files)
    from bench.synthetic import day_tables

    tables = day_tables(0, seconds)
    return {
        "samples": samples,
        "files": len(files),
        "llamamon": compacted,
        "csv_long": csv_long(tables),
        "csv_wide": csv_wide(tables),
        "psrecord": psrecord_log(tables),
    }


def run(quick: bool = False) -> list:
    from bench.results import Figure, load1

    seconds = 3600 if quick else 86_400
    before = load1()
    m = day(seconds)
    w = through_writer(600 if quick else 3600)
    n = m["samples"]
    per = {k: m[k] / n for k in ("llamamon", "csv_long", "csv_wide", "psrecord")}
    peers = {
        "CSV (store's long schema)": per["csv_long"],
        "CSV (wide, 1 row/s)": per["csv_wide"],
        "psrecord log format": per["psrecord"],
        "Prometheus TSDB (constant from the issue)": PROMETHEUS_B_PER_SAMPLE,
    }
    span = "one day" if seconds == 86_400 else f"{seconds} s"
    return [
        Figure(
            name=f"Storage after compaction, {span} at 1 Hz x 16 series",
            unit="B/sample",
            llamamon=per["llamamon"],
            peers=peers,
            ratios={
                "Prometheus": per["llamamon"] / PROMETHEUS_B_PER_SAMPLE,
                "CSV wide": per["llamamon"] / per["csv_wide"],
                "psrecord": per["llamamon"] / per["psrecord"],
            },
            target="<= 1.37 B/sample",
            met=per["llamamon"] <= PROMETHEUS_B_PER_SAMPLE,
            runs=1,
            load=(before, load1()),
            note=(
                f"{n:,} samples of bench/synthetic.py, compacted by compact() into {m['files']} files, "
                f"{m['llamamon']:,} B. The real write path on the first {w['seconds']} s "
                f"(StoreWriter.append per tick, 30 s flushes, compact()): {w['flush_files']} flush files at "
                f"{w['flush_bytes'] / w['samples']:.2f} B/sample -> {w['compacted_bytes'] / w['samples']:.2f} B/sample "
                f"compacted; {w['samples'] / w['write_s']:,.0f} samples/s through the writer. "
                f"The footer's list of replaced flush files cost {w['replaces_metadata_bytes']:,} B of that slice "
                f"({w['replaces_metadata_bytes'] / w['flush_files']:.0f} B per flush file); the {seconds // 30:,} flushes "
                f"per partition of the figure's span would add ~"
                f"{w['replaces_metadata_bytes'] / w['flush_files'] * (seconds // 30) * m['files'] / n:.2f} "
                "B/sample to the figure above, which compacts one file per partition. "
                "Sizes are deterministic (fixed seed): one run."
            ),
            detail={"day": m, "through_writer": w},
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    for fig in run(args.quick):
        print(f"{fig.name}: {fig.llamamon:.3f} B/sample; {fig.peers}; met {fig.met}\n  {fig.note}")


if __name__ == "__main__":
    main()
