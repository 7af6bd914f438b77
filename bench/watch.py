"""Benchmark: one live-alert tick (``LiveAlerts.evaluate``) against scanning the store for the same data.

A store holds one run of N hours of 1 Hz samples of 12 series; the watcher's tick evaluates the builtin
and two own rules over its trailing window in memory. The baseline, measured in the same run, is what a
tick would cost if it rescanned the store (``reader.scan``, the history's conditions on one tick,
``AlertStates.step``). Prints both and the ratio.

    python bench/watch.py [--hours 6] [--ticks 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0 = 1_767_225_600.0
RUN = "20260101T000000Z-benchhost-0001"
SERIES = [
    ("cpu_usage", "system", {}),
    ("memory_usage", "system", {}),
    ("process_tree_size", "process", {}),
    ("process_memory_rss", "process", {}),
    *((m, "gpu", {"gpu": str(g)}) for m in ("gpu_utilization", "gpu_memory_usage") for g in range(4)),
]
CONFIG = """monitoring:
  update_frequency: 1
alerts:
  rules:
    mem:
      condition: memory_usage > 0.9
      for: 1m
    gpu_idle:
      condition: avg(gpu_utilization, 5m) < 0.1
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=6)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()

    from llamamon.config import load_config
    from llamamon.rules.history import conditions
    from llamamon.rules.history_input import Grid, prepare
    from llamamon.rules.model import needed_metrics
    from llamamon.rules.promql import US
    from llamamon.rules.states import AlertStates
    from llamamon.runtime.live_alerts import LiveAlerts
    from llamamon.samples import Row, make_labels
    from llamamon.store.reader import scan
    from llamamon.store.writer import StoreWriter

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "monitoring.yaml").write_text(CONFIG)
        cfg = load_config(str(folder / "monitoring.yaml"))
        n = int(args.hours * 3600)
        writer = StoreWriter(folder / "m", RUN, "benchhost", flush_interval=1e9)
        labels = [make_labels(lab) for _m, _g, lab in SERIES]
        for start in range(0, n, 3600):
            rows = [
                Row(T0 + i, g, m, 0.5, lab, None)
                for i in range(start, min(n, start + 3600))
                for (m, g, _), lab in zip(SERIES, labels, strict=True)
            ]
            writer.append(rows)
            writer.flush()
        writer.close()
        end = T0 + n
        live = LiveAlerts(cfg, folder / "m")
        for i in range(int(live.window) + 1):
            t = end - live.window + i
            live.add([Row(t, g, m, 0.5, lab, None) for (m, g, _), lab in zip(SERIES, labels, strict=True)], RUN, "h")
        live.evaluate(end)  # warm-up: imports

        def timed(fn) -> float:
            times = []
            for k in range(args.ticks):
                started = time.perf_counter()
                fn(end + k)
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        tick = timed(live.evaluate)
        states = AlertStates()

        def step_all(t: float) -> None:
            samples = prepare(scan(folder / "m", runs=[RUN]), needed_metrics(live.rules))
            results = conditions(live.rules, samples, Grid(round(t * US), US, 1))
            for rule in live.rules:
                df, labels = results[rule.name]
                states.step(rule, t, {make_labels(labels[sid]): value for _, sid, value in df.iter_rows()})

        rescan = timed(step_all)
        print(f"store: {n * len(SERIES):,} samples ({args.hours:g} h x {len(SERIES)} series at 1 Hz)")
        print(
            f"window kept by the tick: {live.window:.0f} s, {sum(len(b.times) for b in live._series.values()):,} rows"
        )
        print(f"live tick (LiveAlerts.evaluate), median of {args.ticks}: {tick * 1000:.1f} ms")
        print(f"baseline: rescan the run + step the states, median of {args.ticks}: {rescan * 1000:.1f} ms")
        print(f"ratio: {rescan / tick:.1f}x cheaper per tick")


if __name__ == "__main__":
    main()
