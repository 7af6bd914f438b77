"""SystemCollector with real psutil on this machine: ranges, catalog names, rates from deltas."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from llamamon import catalog
from llamamon.collectors.system import SystemCollector, cpu_model, existing_parent
from llamamon.samples import Sample

RATIOS = {"cpu_usage", "cpu_core_usage", "memory_usage", "swap_usage", "disk_usage"}


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def write_to_disk(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
        fh.flush()
        os.fsync(fh.fileno())


async def first_sample(collector: SystemCollector) -> list[Sample]:
    await collector.open()
    try:
        return await collector.collect()
    finally:
        await collector.close()


def test_first_sample_has_every_metric_in_range_under_catalog_names(metrics_dir: Path):
    samples = asyncio.run(first_sample(SystemCollector(metrics_dir)))
    names = {s.metric for s in samples}
    expected = {
        "cpu_usage",
        "memory_usage",
        "memory_used",
        "memory_available",
        "swap_usage",
        "swap_used",
        "disk_usage",
        "load1",
        "load5",
        "load15",
        "network_throughput",
        "network_rx_throughput",
        "network_tx_throughput",
    }
    if psutil.disk_io_counters() is not None:
        expected |= {"disk_read_throughput", "disk_write_throughput"}
    assert names == expected
    for sample in samples:
        metric = catalog.get(sample.metric)
        assert metric is not None
        assert metric.group == "system"
        assert sample.labels == ()
        assert sample.value >= 0, sample
        if sample.metric in RATIOS:
            assert 0.0 <= sample.value <= 1.0, sample
    values = {s.metric: s.value for s in samples}
    total = psutil.virtual_memory().total
    assert values["memory_used"] + values["memory_available"] == pytest.approx(total, rel=0.05)
    assert values["network_throughput"] == pytest.approx(
        values["network_rx_throughput"] + values["network_tx_throughput"]
    )


def test_per_core_usage_has_one_labelled_sample_per_core(metrics_dir: Path):
    samples = asyncio.run(first_sample(SystemCollector(metrics_dir, per_core=True)))
    cores = {dict(s.labels)["core"]: s.value for s in samples if s.metric == "cpu_core_usage"}
    assert sorted(cores, key=int) == [str(i) for i in range(psutil.cpu_count())]
    assert all(0.0 <= value <= 1.0 for value in cores.values())


def test_cpu_usage_sees_a_busy_process_on_the_first_sample(metrics_dir: Path):
    # A busy loop in a thread would hold the GIL; a real process keeps one core busy.
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        psutil_share = []

        async def main() -> float:
            collector = SystemCollector(metrics_dir)
            await collector.open()
            psutil.cpu_percent(interval=None)
            sample = {s.metric: s.value for s in await collector.collect()}
            psutil_share.append(psutil.cpu_percent(interval=None) / 100)
            return sample["cpu_usage"]

        share = asyncio.run(main())
    finally:
        burner.kill()
        burner.wait()
    # One of N cores is ours alone: at least ~1/N busy, whatever else the machine does.
    assert share >= 0.8 / psutil.cpu_count()
    assert share == pytest.approx(psutil_share[0], abs=0.35)


def test_disk_write_rate_comes_from_the_counter_delta(metrics_dir: Path, tmp_path: Path):
    if psutil.disk_io_counters() is None:
        pytest.skip("this machine exposes no disk I/O counters")
    clock = Clock()

    async def main() -> dict[str, float]:
        collector = SystemCollector(metrics_dir, clock=clock)
        await collector.open()
        clock.now += 1.0
        await collector.collect()
        write_to_disk(tmp_path / "blob", 16_000_000)
        clock.now += 2.0  # two "seconds": the rate is half the bytes written
        return {s.metric: s.value for s in await collector.collect()}

    values = asyncio.run(main())
    assert values["disk_write_throughput"] >= 16_000_000 / 2 * 0.95


def test_no_rates_when_no_time_has_passed(metrics_dir: Path):
    clock = Clock()

    async def main() -> set[str]:
        collector = SystemCollector(metrics_dir, clock=clock)
        await collector.open()
        clock.now += 1.0
        await collector.collect()
        return {s.metric for s in await collector.collect()}  # the clock did not move

    names = asyncio.run(main())
    assert "network_throughput" not in names
    assert "disk_write_throughput" not in names
    assert "memory_usage" in names


def test_disk_usage_is_measured_on_the_nearest_existing_folder(tmp_path: Path):
    missing = tmp_path / "not" / "yet" / ".metrics"
    assert existing_parent(missing) == tmp_path
    samples = asyncio.run(first_sample(SystemCollector(missing)))
    usage = next(s.value for s in samples if s.metric == "disk_usage")
    expected = psutil.disk_usage(str(tmp_path))
    assert usage == pytest.approx(expected.used / (expected.used + expected.free), abs=0.01)


def test_cpu_model_names_this_cpu():
    model = cpu_model()
    assert model is None or (isinstance(model, str) and model.strip() == model and model)
