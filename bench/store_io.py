"""Store benchmark: bytes per sample of one synthetic day (1 Hz x 16 metrics) and write throughput.

    python bench/store_io.py            # full day for sizes, one hour through StoreWriter
    python bench/store_io.py --quick    # smaller, for a smoke run

Figures printed, with the baselines measured in the same run: CSV of the same rows (long schema),
pyarrow's default Parquet, and encoding variants, so the choice in store/parquet.py can be checked.
Values are made the way the collectors make them: what the source reports (continuous CPU shares,
NVML integer percents / degrees / milliwatts, page-sized byte counts, whole bytes over a jittered
interval for rates), then rounded by ``catalog.quantize`` at the catalog's resolution, the function
the built-in collectors call; timestamps are wall-clock ticks with scheduling jitter stamped by the
recorder's TickStamps (the realistic case) or exact grid ticks.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa
import pyarrow.parquet as pq

from llamamon.catalog import quantize, resolution_of
from llamamon.runtime.ticker import TickStamps
from llamamon.samples import Row, labels_to_str, make_labels
from llamamon.store import flush_file, parquet
from llamamon.store.compaction import compact
from llamamon.store.reader import scan
from llamamon.store.retention import store_stats
from llamamon.store.runs import write_run
from llamamon.store.writer import StoreWriter

START = 1_764_201_600.0  # 2025-11-27T00:00:00Z
GIB = 1024**3


def series_generators(rng: random.Random, profile: str = "noisy"):
    """16 (group, metric, labels, next_value) series that behave like the real collectors' output.

    "noisy": every series moves every second (a pessimistic case). "steady": a steady training job,
    where each series moves with the probability given per series (load1 every 5 s as Linux updates it,
    allocator-held GPU memory almost never, utilisation and power every second).
    """

    def walk(lo, hi, step, quant, start, p_noisy=1.0, p_steady=1.0):
        state = [start]
        last = [quant(start)]
        p = p_noisy if profile == "noisy" else p_steady

        def nxt():
            if rng.random() < p:
                state[0] = min(hi, max(lo, state[0] + rng.gauss(0, step)))
                last[0] = quant(state[0])
            return last[0]

        return nxt

    pct1 = lambda x: x / 100  # noqa: E731  a share from CPU-time deltas, on the collector's grid below
    pages = lambda x: float(int(x) // 4096 * 4096)  # noqa: E731
    mib = lambda x: float(int(x) // 2**20 * 2**20)  # noqa: E731

    def rate(mean):
        def nxt():
            # whole bytes counted over a jittered interval: a full-precision float until the collector rounds it
            return float(int(max(0.0, rng.gauss(mean, mean / 5)))) / rng.uniform(0.998, 1.002)

        return nxt

    out = [("system", "cpu_usage", make_labels(), walk(0, 100, 3, pct1, 40))]
    out += [("system", "cpu_core_usage", make_labels(core=c), walk(0, 100, 6, pct1, 40)) for c in range(4)]
    out += [
        ("system", "memory_usage", make_labels(), walk(0, 100, 0.05, pct1, 55, p_steady=0.2)),
        ("system", "memory_used", make_labels(), walk(2 * GIB, 60 * GIB, 2**22, pages, 30 * GIB, p_steady=0.5)),
        ("system", "load1", make_labels(), walk(0, 32, 0.2, lambda x: round(x, 2), 4, p_steady=0.2)),
        ("system", "network_rx_throughput", make_labels(), rate(2e6)),
        ("system", "network_tx_throughput", make_labels(), rate(5e5)),
        ("gpu", "gpu_utilization", make_labels(gpu="0"), walk(0, 100, 4, lambda x: round(x) / 100, 90, p_steady=0.3)),
        ("gpu", "gpu_memory_used", make_labels(gpu="0"), walk(0, 80 * GIB, 2**24, mib, 40 * GIB, p_steady=0.01)),
        (
            "gpu",
            "gpu_temperature",
            make_labels(gpu="0"),
            walk(30, 90, 0.3, lambda x: float(round(x)), 65, p_steady=0.1),
        ),
        ("gpu", "gpu_power", make_labels(gpu="0"), walk(50, 700, 8, lambda x: round(x * 1000) / 1000, 400)),
        ("process", "process_cpu_usage", make_labels(), walk(0, 16, 0.2, float, 2)),
        ("process", "process_memory_rss", make_labels(), walk(GIB, 30 * GIB, 2**20, pages, 8 * GIB, p_steady=0.2)),
    ]
    assert len(out) == 16
    return out


def collected(metric: str, value: float) -> float:
    """A source reading as the built-in collector stores it (its catalog resolution)."""
    return quantize(value, resolution_of(metric))


def tick_times(n: int, rng: random.Random, jitter: bool) -> list[float]:
    """Exact grid ticks, or wall-clock wake-ups (a little after each second) stamped as the recorder does."""
    if not jitter:
        return [START + k for k in range(n)]
    stamps = TickStamps(1.0)
    return [stamps(START + k + abs(rng.gauss(0.0008, 0.0004))) for k in range(n)]


def make_table(seconds: int, jitter: bool, profile: str, seed: int = 7) -> pa.Table:
    rng = random.Random(seed)
    gens = series_generators(rng, profile)
    times = tick_times(seconds, rng, jitter)
    cols: dict[str, list] = {k: [] for k in ("time", "host", "metric", "value", "labels", "step")}
    for t in times:
        us = round(t * 1_000_000)
        for _group, metric, labels, nxt in gens:
            cols["time"].append(us)
            cols["host"].append("gpu-box01")
            cols["metric"].append(metric)
            cols["value"].append(collected(metric, nxt()))
            cols["labels"].append(labels_to_str(labels))
            cols["step"].append(None)
    return pa.table(
        {
            "time": pa.array(cols["time"], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "host": cols["host"],
            "metric": cols["metric"],
            "value": pa.array(cols["value"], pa.float64()),
            "labels": cols["labels"],
            "step": pa.array(cols["step"], pa.int64()),
        },
        schema=parquet.SCHEMA,
    )


def parquet_bytes(table: pa.Table, **options) -> int:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return buf.tell()


def flush_file_bytes(table: pa.Table) -> int:
    """The size of the file a flush (``store.flush_file``) writes for these rows, already sorted."""
    d = table.to_pydict()
    micros = table.column("time").cast(pa.int64()).to_pylist()
    entries = [
        flush_file.Entry(m, lab, us, v, s)
        for m, lab, us, v, s in zip(d["metric"], d["labels"], micros, d["value"], d["step"], strict=True)
    ]
    return len(flush_file.encode(entries, d["host"][0]))


def csv_bytes(table: pa.Table) -> int:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["time", "host", "metric", "value", "labels", "step"])
    d = table.to_pydict()
    for row in zip(d["time"], d["host"], d["metric"], d["value"], d["labels"], d["step"], strict=True):
        t, host, metric, value, labels, step = row
        writer.writerow([t.isoformat(), host, metric, repr(value), labels, "" if step is None else step])
    return len(buf.getvalue().encode())


def size_report(seconds: int) -> None:
    print(f"== size: {seconds} s at 1 Hz x 16 metrics = {seconds * 16:,} samples, one compacted file ==")
    compacted = parquet.COMPACT_OPTIONS
    encodings = {"time": "DELTA_BINARY_PACKED", "step": "DELTA_BINARY_PACKED"}
    for profile in ("noisy", "steady"):
        for jitter in (True, False):
            table = make_table(seconds, jitter, profile)
            n = table.num_rows
            srt = parquet.sort_table(table)
            variants = [
                ("CSV, long schema (baseline)", table, csv_bytes),
                ("pyarrow defaults (snappy, dictionary), tick order", table, {}),
                ("zstd 9 + dictionary everywhere, sorted", srt, {"compression": "zstd", "compression_level": 9}),
                ("llamamon compacted, but tick order (unsorted)", table, compacted),
                (
                    "llamamon compacted, but PLAIN values",
                    srt,
                    {**compacted, "column_encoding": {**encodings, "value": "PLAIN"}},
                ),
                (
                    "llamamon compacted, but dictionary values",
                    srt,
                    {
                        **compacted,
                        "use_dictionary": ["host", "metric", "labels", "value"],
                        "column_encoding": encodings,
                    },
                ),
                ("llamamon compacted, but zstd 9", srt, {**compacted, "compression_level": 9}),
                (
                    "llamamon flush file (store.flush_file: PLAIN numbers, dictionary strings, gzip)",
                    srt,
                    flush_file_bytes,
                ),
                (
                    f"llamamon compacted (sorted, DELTA time, BSS value, zstd {parquet.COMPACT_ZSTD_LEVEL}, 1 page)",
                    srt,
                    compacted,
                ),
            ]
            stamps = "wall-clock wake-ups with jitter, stamped by TickStamps" if jitter else "exact 1 s grid ticks"
            print(f"-- profile {profile}, {stamps}")
            base = None
            for label, tbl, options in variants:
                size = options(tbl) if callable(options) else parquet_bytes(tbl, **options)
                base = base or size
                print(f"  {label:<72} {size:>12,} B {size / n:7.3f} B/sample {base / size:6.1f}x < CSV")
    print()


def write_report(seconds: int) -> None:
    print(f"== write path: {seconds} s at 1 Hz x 16 metrics through StoreWriter (journal + flush every 30 s) ==")
    rng = random.Random(11)
    gens = series_generators(rng, "steady")
    ticks = [
        [Row(t, group, metric, collected(metric, nxt()), labels) for group, metric, labels, nxt in gens]
        for t in tick_times(seconds, rng, True)
    ]
    run = "20251127T000000Z-gpu-box01-beef"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / ".metrics"
        fake_now = [0.0]
        writer = StoreWriter(root, run, "gpu-box01", flush_interval=30.0, clock=lambda: fake_now[0])
        t0 = time.perf_counter()
        for k, rows in enumerate(ticks):
            fake_now[0] = float(k)
            writer.append(rows)
        writer.close()
        elapsed = time.perf_counter() - t0
        samples = seconds * 16
        stats = store_stats(root)
        print(f"  {samples:,} samples in {elapsed:.2f} s = {samples / elapsed:,.0f} samples/s")
        print(f"  per 16-metric tick: {elapsed / seconds * 1000:.2f} ms (journal write + amortised flush)")
        print(f"  {stats.files} flush files, {stats.total_bytes:,} B = {stats.total_bytes / samples:.2f} B/sample")

        t0 = time.perf_counter()
        height = scan(root).collect().height
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        scan(root).collect()
        warm = time.perf_counter() - t0
        assert height == samples
        print(f"  scan of {stats.files} files: {cold:.3f} s first (footers checked), {warm:.3f} s again")

        write_run(root, _run_info(run))
        t0 = time.perf_counter()
        result = compact(root)
        elapsed = time.perf_counter() - t0
        stats = store_stats(root)
        data = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        print(
            f"  compact: {result.files_before} -> {result.files_after} files in {elapsed:.2f} s; "
            f"{data:,} B = {data / samples:.3f} B/sample (3 group partitions, {seconds} s)"
        )
        assert scan(root).collect().height == samples
    print()


def _run_info(run: str):
    from llamamon.samples import RunInfo

    return RunInfo(id=run, host="gpu-box01", start=START, end=START + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one hour instead of one day, 10 min writes")
    args = parser.parse_args()
    size_report(3600 if args.quick else 86_400)
    write_report(600 if args.quick else 3600)
    print(f"(python {sys.version.split()[0]}, pyarrow {pa.__version__}; target after compaction: <= 1.37 B/sample)")
    assert math.isfinite(START)


if __name__ == "__main__":
    main()
