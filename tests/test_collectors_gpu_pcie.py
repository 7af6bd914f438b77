"""PCIe throughput without blocking each tick: NVML's PCIe byte counters where the driver has them, else
nvmlDeviceGetPcieThroughput (which samples 20 ms per call inside NVML) at most every PCIE_SNAPSHOT_EVERY_S."""

from __future__ import annotations

import asyncio

from fakes import nvml as fake_nvml

from llamamon.collectors.gpu import GpuCollector
from llamamon.collectors.gpu_links import PCIE_SNAPSHOT_EVERY_S

TX, RX = fake_nvml.real.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, fake_nvml.real.NVML_FI_DEV_PCIE_COUNT_RX_BYTES
PCIE = {"gpu_pcie_tx_throughput", "gpu_pcie_rx_throughput"}
MIB = 1024**2


def ticks(fake, n: int, interval: float, between=None) -> list[dict[str, float]]:
    """GPU 0's PCIe rows of ``n`` collects ``interval`` apart on an injected clock; ``between(fake, tick)``
    runs before each."""
    now = [100.0]
    collector = GpuCollector(nvml=fake, clock=lambda: now[0])

    async def go():
        await collector.open()
        try:
            out = []
            for tick in range(n):
                now[0] += interval
                if between is not None:
                    between(fake, tick)
                samples = await collector.collect()
                out.append({s.metric: s.value for s in samples if s.metric in PCIE and dict(s.labels)["gpu"] == "0"})
            return out
        finally:
            await collector.close()

    return asyncio.run(go())


def test_the_byte_counters_give_the_interval_mean_and_the_20_ms_query_is_never_made():
    fake = fake_nvml.h100_sxm(2)
    for gpu in fake.gpus:
        gpu.pcie_bytes = {TX: 10 * MIB, RX: 0}

    def traffic(fake, tick):
        fake.gpus[0].pcie_bytes[TX] += 4 * MIB  # 4 MiB out every 0.5 s: 8 MiB/s
        fake.gpus[0].pcie_bytes[RX] += MIB
        if tick == 2:
            fake.gpus[0].pcie_bytes[RX] = 0  # the counter wrapped (or the driver reloaded)

    rows = ticks(fake, 4, 0.5, traffic)
    assert rows[0] == {"gpu_pcie_tx_throughput": 8 * MIB, "gpu_pcie_rx_throughput": 2 * MIB}  # baseline at open
    assert rows[1] == rows[0]
    assert rows[2] == {"gpu_pcie_tx_throughput": 8 * MIB}  # no rate across the wrap rather than a wrong one
    assert rows[3] == rows[0]
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert fake.calls["nvmlDeviceGetFieldValues(PCIE_COUNT)"] == 2 * (1 + 4)  # per GPU: the baseline, each tick


def test_without_the_counters_the_snapshot_is_taken_at_most_every_few_seconds():
    fake = fake_nvml.h100_sxm(8)  # pcie_bytes None: a driver before r550
    rows = ticks(fake, 24, 0.5)  # 12 s at 0.5 s
    taken = [i for i, r in enumerate(rows) if r]
    every = int(PCIE_SNAPSHOT_EVERY_S / 0.5)
    assert taken == list(range(0, 24, every))
    assert rows[0] == {"gpu_pcie_tx_throughput": 1_200_000 * 1024, "gpu_pcie_rx_throughput": 800_000 * 1024}
    # 2 calls (tx, rx) per GPU per snapshot: 48 instead of 384 blocking 20 ms queries over the 24 ticks.
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 2 * 8 * len(taken)


def test_counters_that_stop_answering_fall_back_to_snapshots():
    fake = fake_nvml.h100_sxm(1)
    fake.gpus[0].pcie_bytes = {TX: 0, RX: 0}

    def lose(fake, tick):
        if tick == 0:
            fake.gpus[0].pcie_bytes[TX] += MIB
        else:
            fake.gpus[0].pcie_bytes = None

    rows = ticks(fake, 3, 1.0, lose)
    assert rows[0] == {"gpu_pcie_tx_throughput": MIB, "gpu_pcie_rx_throughput": 0.0}
    assert rows[1] == {"gpu_pcie_tx_throughput": 1_200_000 * 1024, "gpu_pcie_rx_throughput": 800_000 * 1024}
    assert rows[2] == {}  # the next snapshot is due PCIE_SNAPSHOT_EVERY_S later


def test_a_board_with_neither_says_so_once_in_its_unavailable_fields():
    fake = fake_nvml.gpus(1, unsupported={"nvmlDeviceGetPcieThroughput"})
    collector = GpuCollector(nvml=fake)

    async def go():
        await collector.open()
        try:
            await collector.collect()
            return collector.describe()
        finally:
            await collector.close()

    unavailable = asyncio.run(go())["gpus"][0]["unavailable"]
    assert unavailable["pcie_tx"] == "nvmlDeviceGetPcieThroughput: Not Supported"
    assert unavailable["pcie_rx"] == "nvmlDeviceGetPcieThroughput: Not Supported"
