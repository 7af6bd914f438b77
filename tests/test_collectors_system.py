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
from llamamon.collectors.system import SystemCollector, cpu_model, disk_bytes, existing_parent, memory_and_swap
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


def test_a_reading_primed_early_leaves_no_window_to_wait(metrics_dir: Path, monkeypatch):
    clock = Clock()
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    collector = SystemCollector(metrics_dir, clock=clock)
    collector.prime()  # what record does before starting the job
    clock.now += 0.5

    async def main() -> set[str]:
        monkeypatch.setattr(asyncio, "sleep", sleep)
        await collector.open()  # keeps the primed reading
        return {s.metric for s in await collector.collect()}

    names = asyncio.run(main())
    assert slept == []
    assert "network_throughput" in names  # a rate over the primed reading's window (a fresh one has none)
    fresh = SystemCollector(metrics_dir, clock=clock)  # not primed: open() reads now, collect() waits it out

    async def unprimed() -> None:
        monkeypatch.setattr(asyncio, "sleep", sleep)
        await fresh.open()
        await fresh.collect()

    asyncio.run(unprimed())
    assert len(slept) == 1
    assert slept[0] == pytest.approx(0.1)


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


def test_memory_and_swap_read_from_proc_agree_with_psutil():
    total, available, swap_total, swap_free = memory_and_swap()
    mem, swap = psutil.virtual_memory(), psutil.swap_memory()
    assert total == mem.total
    assert available == pytest.approx(mem.available, rel=0.05)
    assert swap_total == swap.total
    assert swap_free == pytest.approx(swap.free, rel=0.05, abs=1 << 20)


def test_meminfo_with_swap_in_use(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n"
        "Buffers:          200000 kB\nSwapCached:        1000 kB\nSwapTotal:       2000000 kB\n"
        "SwapFree:        1500000 kB\nHugePages_Total:       0\n"
    )
    assert memory_and_swap(meminfo) == (16_000_000 * 1024, 4_000_000 * 1024, 2_000_000 * 1024, 1_500_000 * 1024)


def test_without_proc_meminfo_psutil_answers(tmp_path: Path):
    total, _, swap_total, _ = memory_and_swap(tmp_path / "missing")
    assert total == psutil.virtual_memory().total
    assert swap_total == psutil.swap_memory().total


def test_disk_bytes_agree_with_psutil():
    counters = psutil.disk_io_counters(perdisk=False)
    read, written = disk_bytes({})
    assert read == pytest.approx(counters.read_bytes, abs=64 << 20)  # other work may read or write meanwhile
    assert written == pytest.approx(counters.write_bytes, abs=64 << 20)


def test_disk_bytes_count_whole_disks_not_their_partitions(tmp_path: Path):
    sys_block = tmp_path / "block"
    for disk in ("sda", "nvme0n1", "cciss!c0d0"):
        (sys_block / disk).mkdir(parents=True)
    diskstats = tmp_path / "diskstats"
    diskstats.write_text(
        "   8       0 sda 100 0 1000 0 50 0 400 0 0 0 0 0 0 0 0 0 0\n"
        "   8       1 sda1 90 0 900 0 40 0 300 0 0 0 0 0 0 0 0 0 0\n"
        " 259       0 nvme0n1 10 0 20 0 5 0 8 0 0 0 0 0 0 0 0 0 0\n"
        " 259       1 nvme0n1p1 10 0 20 0 5 0 8 0 0 0 0 0 0 0 0 0 0\n"
        " 104       0 cciss/c0d0 1 0 2 0 1 0 4 0 0 0 0 0 0 0\n"
        "   3       1 hda1 8 8 8 8\n"
    )
    whole: dict[str, bool] = {}
    assert disk_bytes(whole, diskstats, sys_block) == ((1000 + 20 + 2) * 512, (400 + 8 + 4) * 512)
    assert whole == {"sda": True, "sda1": False, "nvme0n1": True, "nvme0n1p1": False, "cciss/c0d0": True}
    (sys_block / "sda").rmdir()  # asked once per name: a later call trusts what it learnt
    assert disk_bytes(whole, diskstats, sys_block) == ((1000 + 20 + 2) * 512, (400 + 8 + 4) * 512)


def test_no_whole_disk_means_no_disk_rates(tmp_path: Path):
    diskstats = tmp_path / "diskstats"
    diskstats.write_text("   8       1 sda1 90 0 900 0 40 0 300 0 0 0 0 0 0 0 0 0 0\n")
    assert disk_bytes({}, diskstats, tmp_path) is None
