"""GpuCollector's deeper NVML queries (PCIe/NVLink, GPM, XID events, fans, throttle causes) through the fake,
on an H100-like node, a consumer PCIe card and an old driver, with the error codes real drivers give."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import pytest
from fakes import nvml as fake_nvml

from llamamon.collectors.describe import describe_gpu
from llamamon.collectors.gpu import GpuCollector
from llamamon.samples import Sample

NVLINK_TX = fake_nvml.real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
NVLINK_RX = fake_nvml.real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
NEW_METRICS = {
    "gpu_fan_speed",
    "gpu_throttled",
    "gpu_pcie_link_gen",
    "gpu_pcie_link_gen_max",
    "gpu_pcie_link_width",
    "gpu_pcie_link_width_max",
    "gpu_pcie_rx_throughput",
    "gpu_pcie_tx_throughput",
    "gpu_nvlink_rx_throughput",
    "gpu_nvlink_tx_throughput",
    "gpu_sm_activity",
    "gpu_tensor_activity",
    "gpu_dram_bandwidth_utilization",
    "gpu_xid_events",
    "gpu_xid_errors",
}
GPM = {"gpu_sm_activity", "gpu_tensor_activity", "gpu_dram_bandwidth_utilization"}
NVLINK = {"gpu_nvlink_rx_throughput", "gpu_nvlink_tx_throughput"}


@pytest.fixture
def llamamon_log(caplog):
    caplog.set_level(logging.DEBUG, logger="llamamon")
    return caplog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(samples: list[Sample]) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for sample in samples:
        out[sample.metric][sample.labels] = sample.value
    return out


def run_ticks(fake, ticks: int, between=None, clock: Clock | None = None) -> tuple[list[list[Sample]], dict]:
    """Open, ``ticks`` collects (``between(fake, tick)`` before each, the clock 2 s on), describe, close."""
    clock = clock or Clock()
    collector = GpuCollector(nvml=fake, clock=clock)

    async def go():
        await collector.open()
        try:
            out = []
            for tick in range(ticks):
                clock.now += 2.0
                if between is not None:
                    between(fake, tick)
                out.append(await collector.collect())
            return out, collector.describe()
        finally:
            await collector.close()

    return asyncio.run(go())


def said(log, field: str) -> list[logging.LogRecord]:
    return [r for r in log.records if f": {field} not available" in r.getMessage()]


def test_an_h100_node_records_every_new_metric_its_hardware_has(llamamon_log):
    fake = fake_nvml.h100_sxm(2)
    fake.gpus[1].clock_event_reasons = 0x40  # hw_thermal_slowdown

    def traffic(fake, tick):
        if tick == 1:
            fake.gpus[0].nvlink_kib[(3, NVLINK_TX)] = 4096  # 4 MiB out on link 3 over the 2 s
            fake.gpus[0].nvlink_kib[(3, NVLINK_RX)] = 1024
            fake.xid(1, 79)
            fake.xid(1, 79)
            fake.xid(1, 94)

    ticks, description = run_ticks(fake, 3, traffic)
    first, second = table(ticks[0]), table(ticks[1])
    gpu0, gpu1 = (("gpu", "0"),), (("gpu", "1"),)

    assert set(first) >= NEW_METRICS - {"gpu_fan_speed", "gpu_xid_errors"}
    assert "gpu_fan_speed" not in first  # an SXM board has no fan: NotSupported, said once per GPU
    assert len(said(llamamon_log, "fan_speed")) == 2
    assert first["gpu_pcie_link_gen"][gpu0] == 5
    assert first["gpu_pcie_link_gen_max"][gpu0] == 5
    assert first["gpu_pcie_link_width"][gpu1] == 16
    assert first["gpu_pcie_link_width_max"][gpu1] == 16
    assert first["gpu_pcie_tx_throughput"][gpu0] == 1_200_000 * 1024  # NVML's KB/s, in bytes/s
    assert first["gpu_pcie_rx_throughput"][gpu0] == 800_000 * 1024
    # GPM percentages as 0..1 ratios, on the catalog's 2**-10 grid.
    assert first["gpu_sm_activity"][gpu0] == pytest.approx(0.625, abs=2**-11)
    assert first["gpu_tensor_activity"][gpu0] == pytest.approx(0.4125, abs=2**-11)
    assert first["gpu_dram_bandwidth_utilization"][gpu1] == pytest.approx(0.55, abs=2**-11)
    # One rate per active link and direction, from the baseline read at open: 18 links on each GPU.
    assert len(first["gpu_nvlink_tx_throughput"]) == 36
    assert set(first["gpu_nvlink_tx_throughput"].values()) == {0.0}
    assert second["gpu_nvlink_tx_throughput"][(("gpu", "0"), ("link", "3"))] == 4096 * 1024 / 2.0
    assert second["gpu_nvlink_rx_throughput"][(("gpu", "0"), ("link", "3"))] == 1024 * 1024 / 2.0
    assert second["gpu_nvlink_tx_throughput"][(("gpu", "0"), ("link", "4"))] == 0.0

    assert first["gpu_throttled"] == {
        (("cause", "power"), ("gpu", "0")): 1.0,  # the fake's default reason: sw_power_cap
        (("cause", "thermal"), ("gpu", "0")): 0.0,
        (("cause", "power"), ("gpu", "1")): 0.0,
        (("cause", "thermal"), ("gpu", "1")): 1.0,
    }

    # XIDs: the per-GPU count is there (0) from the first sample, the per-code series from its first event.
    assert first["gpu_xid_events"] == {gpu0: 0.0, gpu1: 0.0}
    assert "gpu_xid_errors" not in first
    assert second["gpu_xid_events"] == {gpu0: 0.0, gpu1: 3.0}
    assert second["gpu_xid_errors"] == {(("gpu", "1"), ("xid", "79")): 2.0, (("gpu", "1"), ("xid", "94")): 1.0}
    assert table(ticks[2])["gpu_xid_events"][gpu1] == 3.0  # a counter: held, not reset per tick
    # Never blocks: every wait asks for 0 ms.
    assert fake.wait_timeouts
    assert set(fake.wait_timeouts) == {0}
    assert description["gpus"][0]["unavailable"] == {"fan_speed": "nvmlDeviceGetFanSpeed: Not Supported"}
    # Closed cleanly: the event set and both GPM buffers of each GPU given back before nvmlShutdown.
    assert fake.event_sets == set()
    assert fake.gpm_buffers == {}
    assert fake.calls["nvmlGpmSampleAlloc"] == 4
    assert fake.calls["nvmlGpmSampleFree"] == 4


def test_a_consumer_pcie_card_records_fans_and_pcie_and_says_once_what_it_lacks(llamamon_log):
    fake = fake_nvml.consumer_pcie(1)
    fake.gpus[0].pcie_width = 4  # trained at x4 in an x16 slot
    ticks, description = run_ticks(fake, 3)
    for samples in ticks:
        rows = table(samples)
        assert not set(rows) & (GPM | NVLINK | {"gpu_ecc_errors"})
        assert rows["gpu_fan_speed"][(("gpu", "0"),)] == pytest.approx(0.38, abs=2**-11)
        assert rows["gpu_pcie_link_width"][(("gpu", "0"),)] == 4
        assert rows["gpu_pcie_link_width_max"][(("gpu", "0"),)] == 16
        assert rows["gpu_xid_events"] == {(("gpu", "0"),): 0.0}
    unavailable = description["gpus"][0]["unavailable"]
    assert unavailable["nvlink"] == "nvmlDeviceGetNvLinkState: Not Supported (no NVLink)"
    assert unavailable["gpm"] == "this GPU has no NVML GPM (Hopper or later needed)"
    for field in ("nvlink", "gpm"):
        assert len(said(llamamon_log, field)) == 1
    # Asked once at open, never per tick.
    assert fake.calls["nvmlDeviceGetNvLinkState"] == 1
    assert fake.calls["nvmlGpmQueryDeviceSupport"] == 1
    assert fake.calls["nvmlGpmSampleAlloc"] == 0
    assert fake.calls["nvmlDeviceGetFieldValues"] == 0


def test_an_old_driver_without_gpm_says_so_once_and_records_the_rest(llamamon_log):
    fake = fake_nvml.old_driver(1)
    ticks, description = run_ticks(fake, 3)
    for samples in ticks:
        rows = table(samples)
        assert not set(rows) & GPM
        assert set(rows) >= NVLINK
        assert "gpu_pcie_link_gen" in rows
        assert "gpu_xid_events" in rows
    assert description["gpus"][0]["unavailable"]["gpm"] == (
        "nvmlGpmQueryDeviceSupport: Function Not Found (GPM needs driver r520+)"
    )
    assert len(said(llamamon_log, "gpm")) == 1
    assert fake.calls["nvmlGpmQueryDeviceSupport"] == 1
    assert fake.calls["nvmlGpmSampleGet"] == 0


def test_a_pynvml_without_the_gpm_functions_is_the_same_as_an_old_driver(llamamon_log, monkeypatch):
    fake = fake_nvml.h100_sxm(1)
    monkeypatch.delattr(fake_nvml.FakeNvml, "nvmlGpmQueryDeviceSupport")
    ticks, description = run_ticks(fake, 2)
    assert not set(table(ticks[-1])) & GPM
    assert description["gpus"][0]["unavailable"]["gpm"].startswith("nvmlGpmQueryDeviceSupport: this pynvml has no")


def test_a_gpu_whose_gpm_samples_fail_drops_gpm_and_frees_its_buffers(llamamon_log):
    fake = fake_nvml.h100_sxm(1)

    def break_gpm(fake, tick):
        if tick == 1:
            fake.unsupported.add("nvmlGpmSampleGet")

    ticks, description = run_ticks(fake, 3, break_gpm)
    assert set(table(ticks[0])) >= GPM
    assert not set(table(ticks[1])) & GPM
    assert not set(table(ticks[2])) & GPM
    assert description["gpus"][0]["unavailable"]["gpm"] == "nvmlGpmSampleGet: Not Supported"
    assert fake.gpm_buffers == {}


def test_nvlink_rates_skip_down_links_and_counter_resets():
    fake = fake_nvml.h100_sxm(1)
    gpu = fake.gpus[0]
    gpu.nvlink_down = {1, 2}
    gpu.nvlink_kib[(0, NVLINK_TX)] = 10_000

    def reset(fake, tick):
        if tick == 0:
            fake.gpus[0].nvlink_kib[(0, NVLINK_TX)] = 12_000
        if tick == 1:
            fake.gpus[0].nvlink_kib[(0, NVLINK_TX)] = 5  # the driver reloaded

    ticks, _ = run_ticks(fake, 3, reset)
    link0 = (("gpu", "0"), ("link", "0"))
    rates = [table(samples)["gpu_nvlink_tx_throughput"] for samples in ticks]
    assert {dict(labels)["link"] for labels in rates[0]} == {str(link) for link in range(18)} - {"1", "2"}
    assert rates[0][link0] == 2000 * 1024 / 2.0
    assert link0 not in rates[1]  # no rate across a reset rather than a wrong one
    assert rates[2][link0] == 0.0


def test_nvlink_throughput_fields_all_failing_are_dropped_with_the_reason_once(llamamon_log):
    fake = fake_nvml.h100_sxm(1)
    fake.gpus[0].nvlink_throughput_return = fake_nvml.real.NVML_ERROR_NOT_SUPPORTED
    ticks, description = run_ticks(fake, 3)
    assert not any(set(table(samples)) & NVLINK for samples in ticks)
    assert description["gpus"][0]["unavailable"]["nvlink_throughput"] == (
        "nvmlDeviceGetFieldValues(NVLINK_THROUGHPUT_DATA): Not Supported"
    )
    assert fake.calls["nvmlDeviceGetFieldValues"] == 1  # the baseline at open; never again
    assert len(said(llamamon_log, "nvlink_throughput")) == 1


@pytest.mark.parametrize(
    ("reasons", "power", "thermal"),
    [(0x0, 0.0, 0.0), (0x8, 0.0, 0.0), (0x4, 1.0, 0.0), (0x80, 1.0, 0.0), (0x20, 0.0, 1.0), (0x40 | 0x80, 1.0, 1.0)],
)
def test_throttle_causes_split_the_clock_event_reasons(reasons, power, thermal):
    fake = fake_nvml.h100_sxm(1)
    fake.gpus[0].clock_event_reasons = reasons
    ((samples,), _) = run_ticks(fake, 1)
    causes = {dict(labels)["cause"]: value for labels, value in table(samples)["gpu_throttled"].items()}
    assert causes == {"power": power, "thermal": thermal}  # hw_slowdown (0x8) is either: in neither


def test_a_driver_without_xid_events_says_so_once_and_never_creates_an_event_set(llamamon_log):
    fake = fake_nvml.h100_sxm(2)
    fake.gpus[0].event_types = 0  # Windows/WSL: NVML answers an empty mask
    fake.gpus[1].event_types = 0

    def xid(fake, tick):
        fake.xid(0, 79)

    ticks, description = run_ticks(fake, 2, xid)
    assert not any({"gpu_xid_events", "gpu_xid_errors"} & set(table(samples)) for samples in ticks)
    assert description["gpus"][1]["unavailable"]["xid_events"] == "the driver reports no XID events for this GPU"
    assert len(said(llamamon_log, "xid_events")) == 2
    assert fake.calls["nvmlEventSetCreate"] == 0
    assert fake.calls["nvmlEventSetWait_v2"] == 0


def test_xid_events_of_one_gpu_that_cannot_register_are_not_counted(llamamon_log):
    fake = fake_nvml.h100_sxm(2)
    fake.unsupported.add("nvmlDeviceRegisterEvents")  # e.g. a vGPU guest
    ticks, description = run_ticks(fake, 2, lambda fake, tick: fake.xid(1, 13))
    assert not any("gpu_xid_events" in table(samples) for samples in ticks)
    assert description["gpus"][0]["unavailable"]["xid_events"] == "nvmlDeviceRegisterEvents: Not Supported"
    assert fake.event_sets == set()  # created, then freed at close


def test_an_event_storm_is_drained_in_bounded_batches():
    fake = fake_nvml.h100_sxm(1)
    for _ in range(300):
        fake.xid(0, 48)
    ticks, _ = run_ticks(fake, 2)
    counts = [table(samples)["gpu_xid_events"][(("gpu", "0"),)] for samples in ticks]
    assert counts == [256.0, 300.0]  # the rest waits for the next tick instead of stalling this one


def test_doctor_lists_what_each_gpu_will_not_record(tmp_path):
    from llamamon.cli.doctor import _metrics_folder, _text
    from llamamon.collectors.describe import describe_process, describe_system

    description = describe_gpu(fake_nvml.consumer_pcie(1))
    unavailable = description["gpus"][0]["unavailable"]
    assert set(unavailable) == {"nvlink", "gpm"}
    assert unavailable["gpm"] == "this GPU has no NVML GPM (Hopper or later needed)"
    report = {
        "system": describe_system(tmp_path),
        "process": describe_process(),
        "gpu": description,
        "config": {"error": "not needed here"},
        "metrics_folder": _metrics_folder(str(tmp_path)),
    }
    lines = _text(report)
    at = lines.index("  GPU 0          NVIDIA GeForce RTX 4090 (24.0 GiB)")
    assert lines[at + 1 : at + 3] == [
        "    no nvlink      nvmlDeviceGetNvLinkState: Not Supported (no NVLink)",
        "    no gpm         this GPU has no NVML GPM (Hopper or later needed)",
    ]


def test_a_gpu_lost_while_probed_at_open_is_probed_again_when_it_answers():
    fake = fake_nvml.h100_sxm(1)
    lost = {"on": True}  # GpuIsLost from the GPM support query at open, then the GPU answers again
    real_query = fake.nvmlGpmQueryDeviceSupport

    def flaky(device):
        if lost["on"]:
            fake.calls["nvmlGpmQueryDeviceSupport"] += 1
            raise fake_nvml.real.NVMLError(fake_nvml.real.NVML_ERROR_GPU_IS_LOST)
        return real_query(device)

    fake.nvmlGpmQueryDeviceSupport = flaky

    def back(fake, tick):
        lost["on"] = False

    ticks, description = run_ticks(fake, 2, back)
    assert "gpm" not in description["gpus"][0]["unavailable"]
    assert not set(table(ticks[0])) & GPM  # its first tick took the first GPM sample
    assert set(table(ticks[1])) >= GPM
    assert fake.gpm_buffers == {}


def test_nvlinks_probed_late_give_their_first_rate_a_tick_later():
    fake = fake_nvml.h100_sxm(1)
    lost = {"on": True}
    real_state = fake.nvmlDeviceGetNvLinkState

    def flaky(device, link):
        if lost["on"]:
            raise fake_nvml.real.NVMLError(fake_nvml.real.NVML_ERROR_GPU_IS_LOST)
        return real_state(device, link)

    fake.nvmlDeviceGetNvLinkState = flaky

    def traffic(fake, tick):
        lost["on"] = False
        fake.gpus[0].nvlink_kib[(0, NVLINK_RX)] = 1000 * (tick + 1)

    ticks, _ = run_ticks(fake, 2, traffic)
    assert not set(table(ticks[0])) & NVLINK  # the baseline, not a rate over no time
    assert table(ticks[1])["gpu_nvlink_rx_throughput"][(("gpu", "0"), ("link", "0"))] == 1000 * 1024 / 2.0
