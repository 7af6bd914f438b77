"""Small, realistic stores for the report tests, written directly in the store layout (no recorder)."""

from __future__ import annotations

import math
import random
from pathlib import Path

from conftest import write_samples

from llamamon.samples import Row, RunInfo, make_labels

T0 = 1_795_000_000.0  # 2026-11-18, a fixed start so reports are reproducible


def write_rows(metrics_dir: Path, rows: list[Row], *, run: str, host: str = "testhost") -> None:
    """conftest.write_samples for `samples.Row`s (their group is the catalog's, as the store files them)."""
    tuples = [(r.time, r.metric, r.value, dict(r.labels), r.step) for r in rows]
    write_samples(Path(metrics_dir), tuples, run=run, host=host, write_run=False)


def save_run(metrics_dir: Path, info: RunInfo) -> Path:
    """runs/<id>.json through the store, as a recorder leaves it."""
    from llamamon.store.runs import write_run

    return write_run(metrics_dir, info)


def run_info(run_id: str, start: float, end: float | None, **kw) -> RunInfo:
    base = dict(
        id=run_id,
        host="gpu-box",
        start=start,
        end=end,
        exit_code=0 if end is not None else None,
        command=["python", "train.py", "--lr", "3e-4"],
        cpu_model="AMD EPYC 7543 32-Core Processor",
        gpu_names=["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"],
        git_commit="4f1c2ab",
        tags={"team": "llm", "dataset": "wiki-103"},
        name="llama-ft-a",
        interval=5.0,
    )
    base.update(kw)
    return RunInfo(**base)


def system_rows(start: float, ticks: int, interval: float, gpus: int = 2, seed: int = 1) -> list[Row]:
    rnd = random.Random(seed)
    rows = []
    for i in range(ticks):
        t = start + i * interval
        phase = i / ticks
        mem = 0.45 + 0.4 * phase + 0.03 * rnd.random()
        rows += [
            Row(t, "system", "cpu_usage", min(1.0, 0.55 + 0.25 * math.sin(i / 40) + 0.1 * rnd.random())),
            Row(t, "system", "memory_usage", min(mem, 0.97)),
            Row(t, "system", "disk_usage", 0.62 + 0.05 * phase),
            Row(t, "system", "disk_read_throughput", 40e6 * rnd.random() + (300e6 if i % 180 == 0 else 0)),
            Row(t, "system", "disk_write_throughput", 5e6 * rnd.random()),
            Row(t, "system", "network_rx_throughput", 2e6 + 1e6 * rnd.random()),
            Row(t, "system", "network_tx_throughput", 0.5e6 * rnd.random()),
            Row(t, "process", "process_cpu_usage", 6 + 2 * rnd.random()),
            Row(t, "process", "process_memory_rss", 18e9 + 6e9 * phase),
        ]
        for g in range(gpus):
            lab = make_labels(gpu=str(g))
            util = 0.9 - 0.5 * (1 if 0.6 < phase < 0.65 else 0) + 0.06 * rnd.random() - 0.1 * g
            power = 180 + 200 * util + 10 * rnd.random()
            rows += [
                Row(t, "gpu", "gpu_utilization", max(0.0, min(1.0, util)), lab),
                Row(t, "gpu", "gpu_memory_usage", 0.7 + 0.15 * phase + 0.02 * g, lab),
                Row(t, "gpu", "gpu_temperature", 55 + 20 * util + rnd.random(), lab),
                Row(t, "gpu", "gpu_power", power, lab),
                Row(t, "gpu", "gpu_sm_clock", 1410 - (200 if 0.6 < phase < 0.65 else 0), lab),
                Row(t, "gpu", "gpu_process_memory_used", 50e9 + 10e9 * phase, lab),
            ]
    return rows


def training_rows(
    start: float, steps: int, seconds_per_step: float, nan_at: int | None = None, seed: int = 2
) -> list[Row]:
    rnd = random.Random(seed)
    rows = []
    for s in range(1, steps + 1):
        t = start + s * seconds_per_step
        loss = 2.2 * math.exp(-s / (steps / 3)) + 0.9 + 0.15 * rnd.gauss(0, 1)
        if nan_at is not None and s == nan_at:
            loss = float("nan")
        lr = 3e-4 * min(1.0, s / 100) * (0.5 * (1 + math.cos(math.pi * s / steps)) + 1e-3)
        rows += [
            Row(t, "training", "loss", loss, step=s),
            Row(t, "training", "learning_rate", lr, step=s),
            Row(t, "training", "grad_norm", 1.0 + 0.4 * rnd.random() + (6 if s % 400 == 0 else 0), step=s),
        ]
        if s % 10 == 0:
            rows += [
                Row(t, "training", "steps_per_second", 1 / seconds_per_step * (0.95 + 0.1 * rnd.random())),
                Row(t, "training", "tokens_per_second", 8192 / seconds_per_step * (0.95 + 0.1 * rnd.random())),
            ]
        if s % 200 == 0:
            rows += [
                Row(t, "training", "validation_loss", 2.0 * math.exp(-s / (steps / 3)) + 1.0, step=s),
                Row(t, "custom", "validation_accuracy", 0.4 + 0.5 * s / steps, step=s),
            ]
    return rows


def inference_rows(start: float, seconds: int, seed: int = 3) -> list[Row]:
    rnd = random.Random(seed)
    rows = []
    for i in range(seconds):
        t = start + i
        busy = 1.0 + (2.5 if 300 < i < 420 else 0)
        for _ in range(5):
            rows.append(
                Row(t + rnd.random(), "inference", "inference_latency", rnd.lognormvariate(math.log(120 * busy), 0.35))
            )
        if i % 5 == 0:
            rows += [
                Row(t, "inference", "batch_throughput", 5 * (1 + 0.1 * rnd.random())),
                Row(t, "inference", "token_throughput", 5 * 180 * (1 + 0.1 * rnd.random())),
                Row(t, "inference", "error_rate", 0.01 * rnd.random() + (0.05 if 300 < i < 420 else 0)),
                Row(t, "inference", "timeout_rate", 0.004 * rnd.random()),
                Row(t, "inference", "cache_hit_rate", 0.6 + 0.1 * rnd.random()),
                Row(t, "inference", "batch_queue_size", rnd.randint(0, 4) + (30 if 300 < i < 420 else 0)),
            ]
    return rows


def training_store(
    metrics_dir: Path, run_id: str = "20261118T034000Z-gpu-box-a1b2", start: float = T0, **info
) -> RunInfo:
    """Two hours of a two-GPU fine-tune sampled every 5 s, with training metrics every 2.5 s."""
    ticks = 1440
    info_obj = run_info(run_id, start, start + ticks * 5.0, **info)
    save_run(metrics_dir, info_obj)
    write_rows(metrics_dir, system_rows(start, ticks, 5.0), run=run_id, host=info_obj.host)
    rows = training_rows(start, 2800, 2.5, nan_at=2100)
    write_rows(metrics_dir, rows, run=run_id, host=info_obj.host)
    return info_obj


def inference_store(
    metrics_dir: Path, run_id: str = "20261118T080000Z-web-1-c3d4", start: float = T0 + 16000
) -> RunInfo:
    info = run_info(
        run_id,
        start,
        start + 900,
        name="serve-7b",
        command=["python", "serve.py"],
        gpu_names=[],
        gpu={"available": False, "reason": "NVML library not found"},
        cpu_model="Intel Xeon",
        tags={},
    )
    save_run(metrics_dir, info)
    write_rows(metrics_dir, system_rows(start, 180, 5.0, gpus=0), run=run_id, host=info.host)
    write_rows(metrics_dir, inference_rows(start, 900), run=run_id, host=info.host)
    return info
