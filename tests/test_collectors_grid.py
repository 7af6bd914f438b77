"""Built-in collectors store every value on its catalog resolution's grid; user collectors are kept as given."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from llamamon import catalog
from llamamon.collectors.base import MetricsCollector, normalize, on_grid
from llamamon.collectors.gpu import GpuCollector
from llamamon.collectors.process import ProcessTreeCollector
from llamamon.collectors.system import SystemCollector
from llamamon.samples import Sample, make_labels
from tests.fakes import nvml as fake_nvml


def assert_on_grid(samples: list[Sample]) -> None:
    assert samples
    for sample in samples:
        resolution = catalog.resolution_of(sample.metric)
        assert resolution is not None, sample.metric
        assert catalog.quantize(sample.value, resolution) == sample.value, sample
        assert type(sample.value) is float


async def ticks(collector: MetricsCollector, n: int = 2) -> list[Sample]:
    await collector.open()
    try:
        return [s for _ in range(n) for s in await collector.collect()]
    finally:
        await collector.close()


def test_system_collector_values_are_on_their_grid(metrics_dir: Path):
    samples = asyncio.run(ticks(SystemCollector(metrics_dir, per_core=True)))
    assert {"cpu_usage", "memory_used", "load1"} <= {s.metric for s in samples}
    assert_on_grid(samples)


def test_process_collector_values_are_on_their_grid():
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as child:
        try:
            samples = asyncio.run(ticks(ProcessTreeCollector(child.pid)))
        finally:
            child.kill()
    assert {"process_cpu_usage", "process_memory_rss"} <= {s.metric for s in samples}
    assert_on_grid(samples)


def test_gpu_collector_values_are_on_their_grid_and_keep_nvml_units():
    fake = fake_nvml.gpus(1, utilization=91, power_mw=398_123, energy_mj=123_456_789)
    samples = asyncio.run(ticks(GpuCollector(nvml=fake), n=1))
    assert_on_grid(samples)
    values = {s.metric: s.value for s in samples if dict(s.labels).keys() == {"gpu"}}
    assert round(values["gpu_utilization"] * 100) == 91
    assert round(values["gpu_power"] * 1000) == 398_123
    assert round(values["gpu_energy"] * 1000) == 123_456_789


def test_on_grid_rounds_rates_to_whole_bytes_and_leaves_unknown_metrics_alone():
    labels = make_labels(gpu=0)
    samples = [
        Sample("network_rx_throughput", 1_234_567.891),
        Sample("my_metric", 0.123456789),
        Sample("gpu_temperature", 64.0, labels),
    ]
    out = on_grid(samples)
    assert out == [Sample("network_rx_throughput", 1_234_568.0), samples[1], samples[2]]
    assert on_grid(out) == out


def test_a_user_collector_is_stored_as_given_even_under_a_catalog_name():
    # Its source may measure finer than the built-in one does; only the built-in collectors round.
    class Precise(MetricsCollector):
        async def collect(self) -> dict[str, float]:
            return {"cpu_usage": 0.123456789}

    (sample,) = normalize(asyncio.run(Precise().collect()), "Precise")
    assert sample.value == 0.123456789
