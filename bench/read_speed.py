"""Read speed: llamamon's reader (store.reader.scan + polars) against DuckDB over the same Parquet files.

    python -m bench.read_speed [--quick] [--repeat 5]

The store: 7 days x 16 series at 1 Hz (~9.7 million points) from bench/synthetic.py, compacted by
llamamon's own compaction, generated once into bench/out/ (gitignored) and reused. Two queries, each
engine reading the files through its own Parquet reader, both given the same pruning information:

* one metric's 1-minute means over the whole week (``gpu_utilization``; group ``gpu``);
* the last hour of every metric (all columns, materialised: a polars DataFrame, an Arrow table).

llamamon's per-process cache of file footers is cleared before each run, so every run pays what a
fresh ``llamamon`` command pays; DuckDB keeps one connection open across runs (its best case). Runs alternate the engines; the ratio is per run. Target: within 1.5x
of DuckDB.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def store(days: int) -> Path:
    from bench.synthetic import START, write_store

    root = OUT / f"read-store-{days}d"
    done = root / ".complete"
    if not done.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        points = write_store(root, days)
        done.write_text(f"{points}\n{START}\n")
        print(f"read store: {points:,} points written to {root} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return root


def queries(root: Path, days: int):
    """(name, llamamon callable, duckdb callable) per query; each returns its row count."""
    from datetime import datetime, timezone

    import duckdb
    import polars as pl

    from bench.synthetic import START
    from llamamon.store import reader

    end = START + days * 86_400
    since = end - 3600
    since_dt = datetime.fromtimestamp(since, tz=timezone.utc)
    files = f"{root}/group=*/date=*/run=*/*.parquet"

    def fresh() -> None:
        reader._verdicts.clear()  # what a new process starts with

    def ll_minutes() -> int:
        fresh()
        frame = (
            reader.scan(root, groups=["gpu"])
            .filter(pl.col("metric") == "gpu_utilization")
            .group_by(pl.col("time").dt.truncate("1m"))
            .agg(pl.col("value").mean())
            .sort("time")
            .collect()
        )
        return frame.height

    # One DuckDB connection for all runs (its best case: a fresh one costs ~50 ms more per query).
    con = duckdb.connect()

    def duck_minutes() -> int:
        table = con.sql(
            f"SELECT time_bucket(INTERVAL '1 minute', time) AS t, avg(value) AS value "
            f"FROM read_parquet('{files}', hive_partitioning = true) "
            f"WHERE \"group\" = 'gpu' AND metric = 'gpu_utilization' GROUP BY t ORDER BY t"
        ).to_arrow_table()
        return table.num_rows

    def ll_last_hour() -> int:
        fresh()
        return reader.scan(root, since=since).collect().height

    def duck_last_hour() -> int:
        table = con.sql(
            f"SELECT * FROM read_parquet('{files}', hive_partitioning = true) "
            f"WHERE date >= DATE '{since_dt.date()}' AND time >= TIMESTAMPTZ '{since_dt.isoformat()}'"
        ).to_arrow_table()
        return table.num_rows

    return [
        ("one metric's 1-minute means over the store", ll_minutes, duck_minutes),
        ("last hour of every metric", ll_last_hour, duck_last_hour),
    ]


def run(quick: bool = False, repeat: int | None = None) -> list:
    import duckdb

    from bench.results import Figure, load1, median, median_ratio

    days = 1 if quick else 7
    repeat = repeat or (2 if quick else 5)
    root = store(days)
    points = int((root / ".complete").read_text().split()[0])
    figures = []
    for name, ours, theirs in queries(root, days):
        before = load1()
        rows_ours, rows_theirs = ours(), theirs()  # warm-up (page cache, imports); unmeasured
        if rows_ours != rows_theirs:
            raise RuntimeError(f"{name}: llamamon read {rows_ours} rows, DuckDB {rows_theirs}")
        pairs = []
        for r in range(repeat):
            timings = {}
            for label, fn in (("llamamon", ours), ("duckdb", theirs))[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                fn()
                timings[label] = (time.perf_counter() - t0) * 1e3
            pairs.append((timings["llamamon"], timings["duckdb"]))
        ratio = median_ratio(pairs)
        figures.append(
            Figure(
                name=f"Read: {name} ({days} d x 16 series, {points / 1e6:.1f} M points)",
                unit="ms",
                llamamon=median([a for a, _ in pairs]),
                peers={f"DuckDB {duckdb.__version__}": median([b for _, b in pairs])},
                ratios={"DuckDB": ratio},
                target="<= 1.5x DuckDB",
                met=ratio <= 1.5,
                runs=repeat,
                load=(before, load1()),
                note=f"{rows_ours:,} rows returned by both; wall time in one process, page cache warm.",
                detail={"pairs_ms": pairs, "rows": rows_ours},
            )
        )
    return figures


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.results import standalone

    standalone(run, __doc__)


if __name__ == "__main__":
    main()
