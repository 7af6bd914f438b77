"""Synthetic 1 Hz metrics that look like a real training box: 16 series in the system, process, GPU and
training groups, vectorised with numpy so a week (~9.7 million points) takes seconds.

Values are made the way the real sources and collectors make them: what the source reports (continuous
CPU shares, page-sized byte counts, /proc/loadavg's two decimals, NVML integer percents, degrees and
milliwatts, whole bytes over a jittered monotonic interval for I/O rates), then rounded by the same
function the built-in collectors call (``catalog.quantize`` at the catalog's resolution). Training
series are what a job logs, never rounded: a step counter, a float32 loss (``loss.item()``: a float64
holding a float32), a float64 cosine learning-rate schedule (PyTorch schedulers compute in Python
floats) and tokens/s as tokens / elapsed seconds (a full float64). Smooth series are interpolated
between random knots (a minute to an hour apart) plus small noise, the way load drifts rather than jumps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

START = 1_767_225_600  # 2026-01-01T00:00:00Z
HOST = "gpu-box01"
RUN = "20260101T000000Z-gpu-box01-be0c"
GIB = 1024**3
STEPS_PER_S = 2.5

# (group, metric, labels) in the store's label encoding (labels_to_str)
SERIES: list[tuple[str, str, str]] = [
    ("system", "cpu_usage", ""),
    ("system", "memory_usage", ""),
    ("system", "memory_used", ""),
    ("system", "load1", ""),
    ("system", "disk_read_throughput", ""),
    ("system", "network_rx_throughput", ""),
    ("process", "process_cpu_usage", ""),
    ("process", "process_memory_rss", ""),
    ("gpu", "gpu_utilization", '{"gpu":"0"}'),
    ("gpu", "gpu_memory_used", '{"gpu":"0"}'),
    ("gpu", "gpu_temperature", '{"gpu":"0"}'),
    ("gpu", "gpu_power", '{"gpu":"0"}'),
    ("training", "step", ""),
    ("training", "loss", ""),
    ("training", "learning_rate", ""),
    ("training", "tokens_per_second", ""),
]


def _smooth(rng: np.random.Generator, t: np.ndarray, every: int, lo: float, hi: float) -> np.ndarray:
    knots = np.arange(t[0] - every, t[-1] + 2 * every, every, dtype=np.float64)
    return np.interp(t, knots, rng.uniform(lo, hi, len(knots)))


def on_collector_grid(metric: str, values: np.ndarray) -> np.ndarray:
    """``values`` as the built-in collectors store them: through ``catalog.quantize`` itself, value by value
    (the very function they call), so the benchmark measures the real rounding, not a numpy look-alike."""
    from llamamon.catalog import quantize, resolution_of

    resolution = resolution_of(metric)
    if resolution is None:
        return values
    return np.fromiter((quantize(v, resolution) for v in values.tolist()), np.float64, len(values))


def series_values(seconds: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Values of every series at the given seconds since START (one float64 array per metric)."""
    t = seconds.astype(np.float64)
    n = len(t)
    noise = rng.normal
    step = np.floor(t * STEPS_PER_S)
    # Rates are whole bytes counted over the collector's monotonic interval, which wobbles around 1 s.
    elapsed = 1.0 + rng.normal(0, 0.0004, n)
    cpu = np.clip(_smooth(rng, t, 60, 0.35, 0.9) + noise(0, 0.03, n), 0, 1)
    mem = np.clip(_smooth(rng, t, 1800, 0.4, 0.7) + noise(0, 0.0005, n), 0, 1)
    burst = rng.random(n) < 0.05
    disk = np.floor(np.where(burst, rng.exponential(5e7, n), rng.exponential(2e4, n)) / 512) * 512  # sectors
    rss = 8 * GIB + np.floor(t / 600) * 16 * 2**20 + np.where(rng.random(n) < 0.2, 4096 * rng.integers(0, 64, n), 0)
    util = np.where(rng.random(n) < 0.02, rng.uniform(0.0, 0.4, n), np.clip(noise(0.93, 0.04, n), 0, 1))
    gpu_mem = 60 * GIB + np.floor(_smooth(rng, t, 3600, 0, 4)) * 2**28
    total_steps = step[-1] + 1 if n else 1
    warm = np.minimum(1.0, step / 2000)
    lr = 3e-4 * warm * 0.5 * (1 + np.cos(np.pi * np.minimum(step / max(total_steps, 1), 1)))
    loss = (0.3 + 2.5 * np.exp(-step / 150_000) + np.abs(noise(0, 0.05, n))).astype(np.float32).astype(np.float64)
    source = {
        "cpu_usage": cpu,
        "memory_usage": np.floor(mem * 64 * GIB / 4096) * 4096 / (64 * GIB),
        "memory_used": np.floor(mem * 64 * GIB / 4096) * 4096,
        "load1": np.round(np.abs(_smooth(rng, t, 300, 1.5, 3.5) + noise(0, 0.05, n)), 2),
        "disk_read_throughput": disk / elapsed,
        "network_rx_throughput": np.floor(np.abs(noise(2e6, 4e5, n))) / elapsed,
        "process_cpu_usage": np.clip(noise(1.0, 0.05, n), 0, 2),
        "process_memory_rss": rss,
        "gpu_utilization": np.round(util * 100) / 100,  # NVML: whole percent
        "gpu_memory_used": gpu_mem,
        "gpu_temperature": np.round(_smooth(rng, t, 120, 62, 78)),  # NVML: whole degrees
        "gpu_power": np.round(noise(380, 25, n) * 1000) / 1000,  # NVML: milliwatts
        "step": step,
        "loss": loss,
        "learning_rate": lr,
        "tokens_per_second": np.round(np.abs(noise(52_000, 1_500, n))) / elapsed,
    }
    return {metric: on_collector_grid(metric, values) for metric, values in source.items()}


def tick_stamps_us(seconds: np.ndarray, late_us: np.ndarray) -> np.ndarray:
    """Tick times as ``llamamon record`` stores them: each wake-up (``late_us`` after the second, as a real
    scheduler wakes) passed through the recorder's own TickStamps (snapped to the grid within 2 ms)."""
    from llamamon.runtime.ticker import TickStamps

    stamps = TickStamps(1.0)
    return np.array([round(stamps(float(t) + late / 1e6) * 1e6) for t, late in zip(seconds, late_us, strict=True)])


def day_tables(day: int, seconds: int = 86_400, seed: int = 7) -> dict[str, object]:
    """pyarrow tables (store schema, one per group) for ``seconds`` of day ``day`` after START."""
    import pyarrow as pa

    from llamamon.store import parquet

    rng = np.random.default_rng(seed + day)
    offs = np.arange(day * 86_400, day * 86_400 + seconds, dtype=np.int64)
    time_us = tick_stamps_us(START + offs, np.abs(rng.normal(800, 400, len(offs))).astype(np.int64))
    values = series_values(offs, rng)
    # The job stamps what it logs itself (llamamon.log: the time of the call), never snapped to a grid.
    job_us = (START + offs) * 1_000_000 + 300_000 + rng.normal(0, 10_000, len(offs)).astype(np.int64)
    step = np.floor(offs * STEPS_PER_S).astype(np.int64)
    tables = {}
    for group in dict.fromkeys(g for g, _, _ in SERIES):
        members = [(m, lbl) for g, m, lbl in SERIES if g == group]
        n = len(offs) * len(members)
        tables[group] = pa.table(
            {
                "time": pa.array(np.tile(job_us if group == "training" else time_us, len(members)), pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
                "host": pa.array([HOST] * n, pa.string()),
                "metric": pa.array(np.repeat([m for m, _ in members], len(offs)), pa.string()),
                "value": pa.array(np.concatenate([values[m] for m, _ in members]), pa.float64()),
                "labels": pa.array(np.repeat([lbl for _, lbl in members], len(offs)), pa.string()),
                "step": pa.array(np.tile(step, len(members)), pa.int64())
                if group == "training"
                else pa.nulls(n, pa.int64()),
            },
            schema=parquet.SCHEMA,
        )
    return tables


def write_store(root: Path, days: int, seconds_per_day: int = 86_400) -> int:
    """A compacted store of ``days`` days: one file per (group, date) written by the store's own writer
    function and then rewritten by llamamon's compaction, exactly as a finished run's store ends up."""
    from llamamon.store import parquet
    from llamamon.store.compaction import compact
    from llamamon.store.layout import data_file, utc_date

    points = 0
    for day in range(days):
        date = utc_date(START + day * 86_400)
        for group, table in day_tables(day, seconds_per_day).items():
            parquet.write_table(data_file(root, group, date, RUN, "gen-0000"), parquet.sort_table(table))
            points += table.num_rows
    compact(root, older_than=0.0)
    return points
