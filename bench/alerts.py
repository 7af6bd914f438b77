"""Benchmark: evaluate 12 alert rules over 7 days of 1 Hz samples of 16 series (~9.7M points).

Prints the evaluation's wall time and peak memory next to one polars scan of the same columns,
each measured in its own child process in the same run (targets: <= 3x the scan's time, < 2 GiB).

    python bench/alerts.py [--days 7] [--step 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
RUN = "20260101T000000Z-benchhost-0001"
# 16 series: (metric, labels)
SERIES = [
    ("cpu_usage", ""),
    ("memory_usage", ""),
    ("swap_usage", ""),
    ("disk_usage", ""),
    ("load1", ""),
    ("process_memory_rss", ""),
    ("gpu_utilization", '{"gpu":"0"}'),
    ("gpu_utilization", '{"gpu":"1"}'),
    ("gpu_memory_usage", '{"gpu":"0"}'),
    ("gpu_memory_usage", '{"gpu":"1"}'),
    ("gpu_process_memory_used", '{"gpu":"0"}'),
    ("gpu_process_memory_used", '{"gpu":"1"}'),
    ("gpu_temperature", '{"gpu":"0"}'),
    ("inference_latency", ""),
    ("batch_queue_size", ""),
    ("timeout_rate", ""),
]
RULES = {
    "mem_warn": ("memory_usage > 0.8", "2m"),
    "mem_crit": ("memory_usage > 0.9", "1m"),
    "gpu_idle": ("gpu_utilization < 0.7 and gpu_process_memory_used > 0", "10m"),
    "gpu_mem": ("gpu_memory_usage > 0.95", "2m"),
    "latency_p95": ("p95(inference_latency, 5m) > 1s", "2m"),
    "latency_avg": ("avg(inference_latency, 1m) > 800ms", "0s"),
    "queue": ("batch_queue_size > 100", "2m"),
    "queue_max": ("max(batch_queue_size, 10m) > 150", "0s"),
    "timeouts": ("timeout_rate > 0", "1m"),
    "cpu_hot": ("avg(cpu_usage, 5m) > 0.95 and gpu_temperature > 85", "0s"),
    "swap_rate": ("rate(swap_usage, 5m) > 0.001", "0s"),
    "rss_growth": ("increase(process_memory_rss, 10m) > 1GiB", "0s"),
}


def make_store(folder: Path, days: int) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(42)
    per_day = 86_400
    total = 0
    for day in range(days):
        start = T0 + day * per_day
        secs = np.arange(start, start + per_day, dtype=np.int64) * 1_000_000
        date = time.strftime("%Y-%m-%d", time.gmtime(start))
        by_group: dict[str, list[pa.Table]] = {}
        for metric, labels in SERIES:
            from llamamon.catalog import group_of

            base = {
                "memory_usage": 0.75,
                "gpu_utilization": 0.8,
                "inference_latency": 600.0,
                "batch_queue_size": 40.0,
                "gpu_temperature": 70.0,
                "process_memory_rss": 8e9,
                "gpu_process_memory_used": 1e10,
            }.get(metric, 0.5)
            noise = rng.normal(0, 0.08 * abs(base), per_day)
            values = base + noise
            if metric == "timeout_rate":
                values = (rng.random(per_day) < 0.0005).astype(float) * 0.01
            table = pa.table(
                {
                    "time": pa.array(secs, pa.timestamp("us", tz="UTC")),
                    "host": pa.array(["benchhost"] * per_day, pa.string()),
                    "metric": pa.array([metric] * per_day, pa.string()),
                    "value": pa.array(values, pa.float64()),
                    "labels": pa.array([labels] * per_day, pa.string()),
                    "step": pa.nulls(per_day, pa.int64()),
                }
            )
            by_group.setdefault(group_of(metric), []).append(table)
            total += per_day
        for group, tables in by_group.items():
            out = folder / f"group={group}" / f"date={date}" / f"run={RUN}"
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(tables), out / "part-0000.parquet")
    return total


def frame(folder: Path):
    from llamamon.store.reader import scan

    return scan(folder).select("time", "host", "metric", "value", "labels", "run")


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(kind: str, folder: Path, step: float) -> dict:
    t = time.perf_counter()
    if kind == "scan":
        df = frame(folder).collect()
        rows = df.height
        result = {"rows": rows}
    else:
        from llamamon.rules import history, lang
        from llamamon.rules.history_input import prepare
        from llamamon.rules.model import Rule, needed_metrics
        from llamamon.units import parse_duration

        rules = [
            Rule(name, lang.parse(cond), "warning", for_=parse_duration(for_)) for name, (cond, for_) in RULES.items()
        ]
        lf = frame(folder)
        t_prep, c_prep = time.perf_counter(), cpu_now()
        samples = prepare(lf, needed_metrics(rules))
        t_rules, c_rules = time.perf_counter(), cpu_now()
        # What `alerts test` runs: each rule on its evaluation points (the grid, the run's end, and for
        # `for: 0` rules every sample of what they read).
        alerts = history.replay(rules, samples, step_s=step)
        result = {
            "prepare_cpu_s": c_rules - c_prep,
            "rules_cpu_s": cpu_now() - c_rules,
            "alerts": len(alerts),
            "rules_fired": sorted({a.rule for a in alerts}),
            "prepare_s": t_rules - t_prep,
            "rules_s": time.perf_counter() - t_rules,
        }
        result["ticks"] = max(g.n for g, _ in history.evaluation_grids(rules, samples, step))
    result["seconds"] = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--step", type=float, default=1.0, help="grid step in seconds (update_frequency)")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the synthetic store here")
    parser.add_argument("--child", choices=["scan", "eval"], default=None)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line (python -m bench)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.step)))
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="llamamon-bench-"))
    try:
        if not any(folder.glob("group=*")):
            t = time.perf_counter()
            n = make_store(folder, args.days)
            print(
                f"store: {n:,} points ({len(SERIES)} series, {args.days} days at 1 Hz) written in {time.perf_counter() - t:.1f}s"
            )
        out = {}
        for kind in ("scan", "eval"):
            cmd = [sys.executable, __file__, "--child", kind, "--dir", str(folder), "--step", str(args.step)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        scan, ev = out["scan"], out["eval"]
        print(
            f"scan : {scan['seconds']:.2f}s wall, {scan['cpu_s']:.2f}s CPU (process), "
            f"peak RSS {scan['peak_rss_mib']:.0f} MiB ({scan['rows']:,} rows)"
        )
        print(
            f"eval : {ev['seconds']:.2f}s wall (prepare {ev['prepare_s']:.2f}s + rules {ev['rules_s']:.2f}s), "
            f"{ev['cpu_s']:.2f}s CPU (process; prepare {ev['prepare_cpu_s']:.2f}s + rules {ev['rules_cpu_s']:.2f}s), peak RSS {ev['peak_rss_mib']:.0f} MiB "
            f"({len(RULES)} rules, {ev['ticks']:,} ticks at {args.step:g}s, {ev['alerts']} alert episodes)"
        )
        ratio = ev["seconds"] / scan["seconds"]
        print(
            f"ratio: {ratio:.2f}x the scan's wall time, {ev['cpu_s'] / scan['cpu_s']:.2f}x its CPU time "
            f"(target <= 3x); peak {ev['peak_rss_mib'] / 1024:.2f} GiB (target < 2 GiB)"
        )
        if args.json:
            what = f"{len(RULES)} rules, {args.days} d x {len(SERIES)} series at 1 Hz"
            figures = [
                {
                    "name": f"Alerts: evaluate {what} (wall time)",
                    "unit": "s",
                    "llamamon": ev["seconds"],
                    "peers": {"one polars scan of the same columns": scan["seconds"]},
                    "ratios": {"scan": ratio},
                    "target": "<= 3x the scan",
                    "met": ratio <= 3,
                },
                {
                    "name": f"Alerts: evaluate {what} (peak memory)",
                    "unit": "GiB",
                    "llamamon": ev["peak_rss_mib"] / 1024,
                    "peers": {"one polars scan of the same columns": scan["peak_rss_mib"] / 1024},
                    "ratios": {"scan": ev["peak_rss_mib"] / scan["peak_rss_mib"]},
                    "target": "< 2 GiB",
                    "met": ev["peak_rss_mib"] / 1024 < 2,
                },
            ]
            print(json.dumps({"figures": figures}))
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
