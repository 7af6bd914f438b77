"""Benchmark `llamamon report --html` on a week of 1 Hz samples of 16 metrics (~9.7M points).

Prints wall time and peak memory of the report, next to one plain polars scan of the same data measured
in the same run (a child process each, so peak RSS is comparable). Targets: < 10 s and < 1.5 GiB.

    python bench/report.py [--days 7] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
RUN = "20260101T000000Z-benchhost-0b0b"
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

METRICS: dict[str, list[tuple[str, str]]] = {
    "system": [
        ("cpu_usage", ""),
        ("memory_usage", ""),
        ("disk_usage", ""),
        ("disk_read_throughput", ""),
        ("disk_write_throughput", ""),
        ("network_rx_throughput", ""),
        ("network_tx_throughput", ""),
        ("load1", ""),
    ],
    "process": [("process_cpu_usage", ""), ("process_memory_rss", ""), ("process_tree_size", "")],
    "gpu": [
        ("gpu_utilization", '{"gpu":"0"}'),
        ("gpu_memory_usage", '{"gpu":"0"}'),
        ("gpu_temperature", '{"gpu":"0"}'),
        ("gpu_power", '{"gpu":"0"}'),
        ("gpu_sm_clock", '{"gpu":"0"}'),
    ],
}


def build_store(metrics_dir: Path, days: int) -> int:
    """One Parquet file per group and hour, as a recorder flushing and compacting would leave them."""
    rng = np.random.default_rng(7)
    points = 0
    seconds = days * 86400
    for group, metrics in METRICS.items():
        for hour in range(seconds // 3600):
            t0 = START + dt.timedelta(hours=hour)
            base = np.arange(3600, dtype=np.int64) * 1_000_000 + int(t0.timestamp() * 1_000_000)
            n = len(base) * len(metrics)
            values = rng.random(n)
            values[rng.integers(0, n, 3)] = 50.0  # a few spikes the report must keep
            table = pa.table(
                {
                    "time": pa.array(np.tile(base, len(metrics)), pa.timestamp("us", tz="UTC")),
                    "host": pa.array(["benchhost"] * n, pa.string()),
                    "metric": pa.array(np.repeat([m for m, _ in metrics], len(base)), pa.string()),
                    "value": pa.array(values, pa.float64()),
                    "labels": pa.array(np.repeat([lbl for _, lbl in metrics], len(base)), pa.string()),
                    "step": pa.nulls(n, pa.int64()),
                }
            )
            folder = metrics_dir / f"group={group}" / f"date={t0:%Y-%m-%d}" / f"run={RUN}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / f"{t0:%H}0000.parquet")
            points += n
    runs = metrics_dir / "runs"
    runs.mkdir(exist_ok=True)
    end = START.timestamp() + seconds
    info = {"id": RUN, "host": "benchhost", "start": START.timestamp(), "end": end, "exit_code": 0, "name": "bench"}
    (runs / f"{RUN}.json").write_text(json.dumps(info))
    return points


BASELINE = """
import sys, glob, polars as pl
files = sorted(glob.glob(sys.argv[1] + "/group=*/date=*/run=*/*.parquet"))
df = pl.scan_parquet(files, hive_partitioning=True).group_by("metric").agg(pl.col("value").mean()).collect()
assert df.height == 16
"""


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, subprocess.CompletedProcess[bytes]]:
    """Wall seconds, CPU seconds (user + system, all threads) and peak RSS (GiB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024**2, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated store in bench/out/")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (python -m bench)")
    args = ap.parse_args()
    metrics_dir = OUT / f"store-{args.days}d"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not (metrics_dir / "runs" / f"{RUN}.json").exists():
        shutil.rmtree(metrics_dir, ignore_errors=True)
        t = time.perf_counter()
        points = build_store(metrics_dir, args.days)
        print(f"store: {points:,} points in {metrics_dir} (written in {time.perf_counter() - t:.1f}s)")
    size = sum(p.stat().st_size for p in metrics_dir.rglob("*.parquet"))
    files = len(list(metrics_dir.rglob("*.parquet")))
    print(f"store: {args.days} days x 16 metrics at 1 Hz, {files} files, {size / 1024**2:.0f} MiB on disk")
    # The baseline runs first; ru_maxrss of children is a running maximum, so it is measured before the report.
    base_wall, base_cpu, base_peak, proc = measure([sys.executable, "-c", BASELINE, str(metrics_dir)], env)
    if proc.returncode:
        sys.exit(proc.stderr.decode())
    out = OUT / "report.html"
    rep_wall, rep_cpu, rep_peak, proc = measure(
        [sys.executable, "-m", "llamamon", "report", "--metrics-dir", str(metrics_dir), "-o", str(out)], env
    )
    if proc.returncode:
        sys.exit(proc.stderr.decode())
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average {load:.1f} (wall times stretch when other work shares the cores)")
    print(f"baseline polars scan+group_by: {base_wall:6.2f} s wall  {base_cpu:6.2f} s CPU  peak {base_peak:5.2f} GiB")
    size_kib = out.stat().st_size / 1024
    print(
        f"llamamon report --html:        {rep_wall:6.2f} s wall  {rep_cpu:6.2f} s CPU  peak {rep_peak:5.2f} GiB"
        f"  ({size_kib:.0f} KiB)"
    )
    print(f"ratio report/baseline:         {rep_wall / base_wall:6.1f}x wall  {rep_cpu / base_cpu:6.1f}x CPU")
    ok = rep_wall < 10 and rep_peak < 1.5
    print(f"targets (< 10 s wall, < 1.5 GiB): {'met' if ok else 'NOT met'}")
    if args.json:
        what = f"{args.days} d x 16 metrics at 1 Hz"
        base = "polars scan + group_by of the same store"
        figures = [
            {
                "name": f"Report: `llamamon report --html`, {what} (wall time)",
                "unit": "s",
                "llamamon": rep_wall,
                "peers": {base: base_wall},
                "ratios": {"scan": rep_wall / base_wall},
                "target": "< 10 s",
                "met": rep_wall < 10,
                "note": f"CPU {rep_cpu:.2f} s (scan {base_cpu:.2f} s); HTML {size_kib:.0f} KiB",
            },
            {
                "name": f"Report: `llamamon report --html`, {what} (peak memory)",
                "unit": "GiB",
                "llamamon": rep_peak,
                "peers": {base: base_peak},
                "ratios": {"scan": rep_peak / base_peak},
                "target": "< 1.5 GiB",
                "met": rep_peak < 1.5,
            },
        ]
        print(json.dumps({"figures": figures}))
    if not args.keep:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
