"""Exposition speed: llamamon's parser and renderer against prometheus_client, measured in one run.

    python bench/prometheus.py [--series 2000] [--rounds 7]

* parse: a vLLM-like /metrics page (gauges, counters, 3 histograms per model, --series lines in all)
  with ``llamamon.prometheus.text.parse`` and with ``prometheus_client.parser.text_string_to_metric_families``
  (the scrape collector parses one such page per tick);
* tick: what the textfile writer does per tick with ``--series`` gauge series: ``RunSnapshot.add`` of
  every sample + ``render``, against a prometheus_client registry's ``Gauge.labels().set`` +
  ``generate_latest`` over the same series (the nearest thing a Python exporter does);
* write: the same plus ``atomic_write`` of the .prom file (fsync included), to show what the disk adds.

Best and median of --rounds, in milliseconds, and llamamon/prometheus_client ratios. prometheus_client
is not a llamamon dependency; without it only llamamon's figures are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamamon.prometheus.snapshot import RunSnapshot
from llamamon.prometheus.text import parse
from llamamon.prometheus.textfile import TextfileWriter
from llamamon.samples import Sample, make_labels

try:
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # optional baseline
    prometheus_client = None


def vllm_page(series: int) -> str:
    lines, models = [], max(1, series // 40)
    buckets = ["0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "1.0", "+Inf"]
    for kind in ("gauge", "counter"):
        for i in range(8):
            name = f"vllm:{kind}_metric_{i}" + ("_total" if kind == "counter" else "")
            lines += [f"# HELP {name} A {kind}.", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{model_name="model-{m}",engine="0"}} {m * 1.5}' for m in range(models)]
    for h in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "time_per_output_token_seconds"):
        name = f"vllm:{h}"
        lines += [f"# HELP {name} A histogram.", f"# TYPE {name} histogram"]
        for m in range(models):
            lab = f'model_name="model-{m}",engine="0"'
            lines += [f'{name}_bucket{{{lab},le="{b}"}} {n}' for n, b in enumerate(buckets)]
            lines += [f"{name}_sum{{{lab}}} 12.5", f"{name}_count{{{lab}}} 11"]
    return "\n".join(lines) + "\n"


def samples(series: int) -> list[Sample]:
    names = ["gpu_utilization", "gpu_memory_used", "gpu_temperature", "gpu_power", "cpu_core_usage", "loss"]
    return [Sample(names[i % len(names)], i * 0.5, make_labels(gpu=i // len(names))) for i in range(series)]


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1000)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    page = vllm_page(args.series)
    batch = samples(args.series)
    folder = Path(tempfile.mkdtemp(prefix="llamamon-bench-"))

    def our_tick() -> str:
        snap = RunSnapshot({"host": "h", "run": "r"})
        snap.add(batch)
        return snap.render()

    writer = TextfileWriter(folder, "h", "r")

    def our_write() -> Path:
        return writer.write(batch)

    cases: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
        f"parse ({page.count(chr(10))} lines)": (lambda: parse(page), None),
        f"tick ({args.series} series)": (our_tick, None),
        f"write ({args.series} series, fsync)": (our_write, None),
    }
    if prometheus_client is not None:
        names = {s.metric for s in batch}

        def their_tick() -> bytes:
            registry = prometheus_client.CollectorRegistry()
            gauges = {n: prometheus_client.Gauge(n, n, ["gpu", "host", "run"], registry=registry) for n in names}
            for s in batch:
                gauges[s.metric].labels(gpu=dict(s.labels)["gpu"], host="h", run="r").set(s.value)
            return prometheus_client.generate_latest(registry)

        key = next(iter(cases))
        cases[key] = (cases[key][0], lambda: list(text_string_to_metric_families(page)))
        key = list(cases)[1]
        cases[key] = (cases[key][0], their_tick)
    print(f"{'case':34} {'llamamon best/median ms':>24} {'prometheus_client':>20} {'ratio (best)':>13}")
    for name, (ours, theirs) in cases.items():
        best, median = timed(ours, args.rounds)
        line = f"{name:34} {best:11.2f} / {median:9.2f}"
        if theirs is not None:
            their_best, their_median = timed(theirs, args.rounds)
            line += f" {their_best:9.2f} / {their_median:8.2f} {best / their_best:12.2f}x"
        print(line)


if __name__ == "__main__":
    main()
