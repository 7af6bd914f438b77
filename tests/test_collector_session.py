"""The collector session record, watch and TrainingMonitor share: real collectors beside ones that fail, hang
or are off; each failure said once, nothing fatal, a hung collector skipped within the (injected) timeout."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from fakes import nvml as fake_nvml

from llamamon.collectors.base import MetricsCollector
from llamamon.collectors.gpu import GpuCollector
from llamamon.collectors.process import ProcessTreeCollector
from llamamon.collectors.session import CollectorSession
from llamamon.collectors.system import SystemCollector
from llamamon.samples import RowMaker, Sample

NOW = 1_700_000_000.0


class Fails(MetricsCollector):
    def __init__(self) -> None:
        self.calls = 0

    async def collect(self) -> dict[str, float]:
        self.calls += 1
        raise RuntimeError("sensor unplugged")


class Hangs(MetricsCollector):
    """Answers only once released; counts how often it was asked. Like NVML in a thread, it may stall."""

    may_stall = True

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def collect(self) -> dict[str, float]:
        self.calls += 1
        await self.release.wait()
        return {"queue_depth": 1.0}


class Off(MetricsCollector):
    async def open(self) -> None:
        self.available = False
        self.reason = "no sensor here"

    async def collect(self) -> dict[str, float]:
        raise AssertionError("an unavailable collector is never asked")


class CannotOpen(MetricsCollector):
    async def open(self) -> None:
        raise OSError("permission denied")

    async def collect(self) -> dict[str, float]:
        raise AssertionError("a collector that did not open is never asked")


class Closes(MetricsCollector):
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.closed = False

    async def collect(self) -> dict[str, float]:
        return {"queue_depth": 2.0}

    async def close(self) -> None:
        self.closed = True
        if self.fail:
            raise RuntimeError("already gone")


@pytest.fixture
def warnings(caplog):
    caplog.set_level(logging.INFO, logger="llamamon.collectors")
    return caplog


def real(tmp_path) -> list[MetricsCollector]:
    return [SystemCollector(tmp_path), ProcessTreeCollector(os.getpid())]


def test_real_collectors_give_rows_filed_under_the_catalogs_groups(tmp_path):
    async def main():
        async with CollectorSession(real(tmp_path), timeout=30.0) as session:
            return await session.rows(NOW)

    rows = asyncio.run(main())
    groups = {row.metric: row.group for row in rows}
    assert groups["memory_used"] == "system"
    assert groups["process_cpu_usage"] == "process"
    assert {row.time for row in rows} == {NOW}  # stamped with the tick's time


def test_a_failing_collector_is_said_once_and_the_others_go_on(tmp_path, warnings):
    fails = Fails()

    async def main():
        async with CollectorSession([*real(tmp_path), fails], timeout=30.0) as session:
            return [await session.rows(NOW + i) for i in range(3)]

    ticks = asyncio.run(main())
    assert fails.calls == 3  # asked again every tick: it may recover
    assert all(any(row.metric == "memory_used" for row in rows) for rows in ticks)
    said = [r for r in warnings.records if "sensor unplugged" in r.getMessage()]
    assert [r.getMessage() for r in said] == [
        "collector Fails failed: sensor unplugged (logged once; recording goes on)"
    ]
    assert said[0].levelno == logging.WARNING


def test_a_hanging_collector_is_skipped_within_the_timeout_and_not_asked_again_while_busy(tmp_path, warnings):
    """Its late answer is not lost: an endpoint slower than the interval is recorded less often, not never."""
    hangs = Hangs()

    async def main():
        async with CollectorSession([*real(tmp_path), hangs], timeout=0.5, goes_on="watching") as session:
            stuck = [dict(await session.collect()) for _ in range(3)]
            hangs.release.set()
            await asyncio.sleep(0)  # its late answer arrives
            late = dict(await session.collect())
            again = dict(await session.collect())
        return stuck, late, again

    stuck, late, again = asyncio.run(main())
    for tick in stuck:
        assert tick[hangs] == []
        assert any(s.metric == "memory_used" for c, samples in tick.items() if c.name == "system" for s in samples)
    assert [s.metric for s in late[hangs]] == ["queue_depth"]  # the late answer, at the first tick after it
    assert [s.metric for s in again[hangs]] == ["queue_depth"]
    assert hangs.calls == 2  # once stuck (not asked again while busy), once after its late answer was taken
    timeouts = [m for m in warnings.messages if "gave no answer" in m]
    assert timeouts == ["collector Hangs gave no answer within 0.5s (logged once; watching goes on)"]


def test_off_and_unopenable_collectors_are_said_once_and_left_out(tmp_path, warnings):
    off, cannot = Off(), CannotOpen()
    gpu = GpuCollector(nvml=fake_nvml.library_missing())

    async def main():
        async with CollectorSession([off, cannot, gpu, *real(tmp_path)], timeout=30.0) as session:
            ticks = [await session.collect() for _ in range(2)]
            return ticks, session.run_metadata()

    ticks, metadata = asyncio.run(main())
    assert all([c.name for c, _ in tick] == ["system", "process"] for tick in ticks)
    lines = [(r.levelno, r.getMessage()) for r in warnings.records]
    assert lines.count((logging.WARNING, "collector Off off: no sensor here")) == 1
    assert lines.count((logging.WARNING, "collector CannotOpen not started: permission denied")) == 1
    # Most machines have no NVIDIA GPU: the collector says so as information, not as a warning.
    assert (logging.INFO, "GPU metrics off: NVML library not found (no NVIDIA driver on this machine)") in lines
    assert metadata == {"gpu": gpu.describe(), "gpu_names": []}
    assert metadata["gpu"]["available"] is False


def test_the_gpu_collector_adds_its_devices_to_the_run_metadata():
    async def main():
        async with CollectorSession([GpuCollector(nvml=fake_nvml.gpus(2))], timeout=30.0) as session:
            return session.run_metadata(), await session.rows(NOW)

    metadata, rows = asyncio.run(main())
    assert metadata["gpu_names"] == ["NVIDIA Fake 0", "NVIDIA Fake 1"]
    assert metadata["gpu"]["available"] is True
    assert {row.group for row in rows} == {"gpu"}


def test_close_closes_every_opened_collector_even_when_one_fails_to(tmp_path):
    first, second = Closes(fail=True), Closes(fail=False)

    async def main():
        session = CollectorSession([first, second], timeout=30.0)
        await session.open()
        await session.close()

    asyncio.run(main())
    assert first.closed
    assert second.closed


def test_rows_take_the_catalogs_group_for_a_known_metric_else_the_sources():
    make = RowMaker("queue")
    samples = [Sample("cpu_usage", 0.5), Sample("queue_depth", 3.0, time=NOW - 1, step=7), Sample("queue_depth", 4.0)]
    rows = make(samples, NOW)
    assert [(r.group, r.metric, r.time, r.step) for r in rows] == [
        ("system", "cpu_usage", NOW, None),
        ("queue", "queue_depth", NOW - 1, 7),
        ("queue", "queue_depth", NOW, None),
    ]
    assert RowMaker()([Sample("eval_accuracy", 0.9)], NOW)[0].group == "training"  # the catalog's validation rule
