"""GpuCollector through the NVML fake, which raises pynvml's real exception classes."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import llamamon_env
from fakes import nvml as fake_nvml

from llamamon.collectors.gpu import GpuCollector, read_nspid
from llamamon.samples import Sample


@pytest.fixture
def llamamon_log(caplog):
    caplog.set_level(logging.DEBUG, logger="llamamon")
    return caplog


def run(coro):
    return asyncio.run(coro)


def by_metric(samples: list[Sample]) -> dict[str, dict[tuple, float]]:
    table: dict[str, dict[tuple, float]] = defaultdict(dict)
    for sample in samples:
        table[sample.metric][sample.labels] = sample.value
    return table


async def opened(collector: GpuCollector, ticks: int = 1) -> list[list[Sample]]:
    await collector.open()
    try:
        return [await collector.collect() for _ in range(ticks)]
    finally:
        await collector.close()


def test_importing_the_gpu_collector_does_not_import_pynvml():
    code = "import sys, llamamon.collectors.gpu; print('pynvml' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=llamamon_env()
    )
    assert result.stdout.strip() == "False"


def test_library_missing_turns_the_collector_off_with_a_reason():
    fake = fake_nvml.library_missing()
    collector = GpuCollector(nvml=fake)
    (samples,) = run(opened(collector))
    assert samples == []
    assert collector.available is False
    assert collector.reason == "NVML library not found (no NVIDIA driver on this machine)"
    assert collector.describe() == {
        "available": False,
        "reason": "NVML library not found (no NVIDIA driver on this machine)",
        "driver_version": None,
        "gpus": [],
    }
    assert collector.gpu_names() == []
    # Unavailable is decided once: nothing is queried per tick and shutdown is not called on a failed init.
    assert fake.calls == {"nvmlInit": 1}


def _library_loads(name: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def test_a_missing_library_is_found_without_importing_pynvml():
    """The real binding is never imported where the library it would load is not there."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the library is looked up first only where pynvml loads one fixed name (Linux)")
    code = (
        "import sys; from llamamon.collectors import _nvml; _nvml.LINUX_LIBRARY = 'libllamamon-absent.so.1'\n"
        "try:\n    _nvml.import_nvml()\nexcept _nvml.NvmlUnavailable as e:\n    print(e.reason)\n"
        "print('pynvml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=llamamon_env()
    ).stdout.splitlines()
    assert out == ["NVML library not found (no NVIDIA driver on this machine)", "False"]


def test_the_early_answer_is_the_one_real_pynvml_gives_for_the_same_library():
    """Differential: where this machine has no NVML library, real pynvml's nvmlInit says the same thing."""
    from llamamon.collectors import _nvml

    if not sys.platform.startswith("linux") or _library_loads(_nvml.LINUX_LIBRARY):
        pytest.skip("this machine loads libnvidia-ml.so.1: the early answer is not taken here")
    import pynvml

    with pytest.raises(pynvml.NVMLError) as real:
        pynvml.nvmlInit()
    with pytest.raises(_nvml.NvmlUnavailable) as early:
        _nvml.import_nvml()
    assert early.value.reason == _nvml.unavailable_reason(real.value, pynvml)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (fake_nvml.real.NVML_ERROR_DRIVER_NOT_LOADED, "driver not loaded"),
        (fake_nvml.real.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "versions differ"),
        (fake_nvml.real.NVML_ERROR_NO_PERMISSION, "no permission"),
    ],
)
def test_each_init_failure_has_its_own_reason(code, words):
    collector = GpuCollector(nvml=fake_nvml.FakeNvml(init_error=code))
    run(opened(collector))
    assert collector.available is False
    assert words in collector.reason


def test_no_devices_is_unavailable_and_shuts_nvml_down():
    fake = fake_nvml.no_devices()
    collector = GpuCollector(nvml=fake)
    (samples,) = run(opened(collector))
    assert samples == []
    assert collector.available is False
    assert collector.reason == "NVML found no NVIDIA GPU on this machine"
    assert fake.calls["nvmlShutdown"] == 1
    assert fake.initialised is False


def test_two_gpus_give_every_field_with_gpu_labels_in_base_units():
    fake = fake_nvml.gpus(2)
    fake.gpus[1].utilization = 12
    fake.gpus[1].clock_event_reasons = 0x40 | 0x4  # hw_thermal_slowdown + sw_power_cap
    collector = GpuCollector(nvml=fake)
    (samples,) = run(opened(collector))
    table = by_metric(samples)
    gpu0, gpu1 = (("gpu", "0"),), (("gpu", "1"),)

    # Stored on the catalog's 2**-10 grid: NVML's whole percent is still exactly recoverable.
    assert table["gpu_utilization"] == {gpu0: pytest.approx(0.87, abs=2**-11), gpu1: pytest.approx(0.12, abs=2**-11)}
    assert {g: round(v * 100) for g, v in table["gpu_utilization"].items()} == {gpu0: 87, gpu1: 12}
    assert table["gpu_memory_usage"][gpu0] == pytest.approx(0.25)
    assert table["gpu_memory_used"][gpu0] == 20 * 1024**3
    assert table["gpu_memory_total"][gpu1] == 80 * 1024**3
    assert table["gpu_temperature"][gpu0] == 64
    assert table["gpu_power"][gpu0] == pytest.approx(412.0)  # W from mW
    assert table["gpu_power_limit"][gpu0] == pytest.approx(700.0)
    assert table["gpu_energy"][gpu0] == pytest.approx(9876.543)  # J from mJ
    assert table["gpu_sm_clock"][gpu0] == 1980
    assert table["gpu_memory_clock"][gpu1] == 2619
    assert table["gpu_ecc_errors"][(("gpu", "0"), ("type", "corrected"))] == 3
    assert table["gpu_ecc_errors"][(("gpu", "0"), ("type", "uncorrected"))] == 0

    events = table["gpu_clock_event"]
    active1 = {dict(labels)["reason"] for labels, value in events.items() if dict(labels)["gpu"] == "1" and value}
    assert active1 == {"hw_thermal_slowdown", "sw_power_cap"}
    assert events[(("gpu", "0"), ("reason", "hw_thermal_slowdown"))] == 0.0  # present as 0 so a rule can resolve
    assert "gpu_process_memory_used" not in table  # no pids callable given

    assert collector.gpu_names() == ["NVIDIA Fake 0", "NVIDIA Fake 1"]
    description = collector.describe()
    assert description["available"] is True
    assert description["driver_version"] == "575.57.08"
    assert [g["uuid"] for g in description["gpus"]] == ["GPU-fake-0000", "GPU-fake-0001"]
    assert fake.calls["nvmlShutdown"] == 1


def test_an_unsupported_field_is_dropped_alone_and_not_queried_again(llamamon_log):
    fake = fake_nvml.gpus(2, unsupported={"nvmlDeviceGetPowerUsage"})
    collector = GpuCollector(nvml=fake)
    ticks = run(opened(collector, ticks=3))
    for samples in ticks:
        table = by_metric(samples)
        assert "gpu_power" not in table
        assert len(table["gpu_power_limit"]) == 2  # the neighbouring field stays
        assert len(table["gpu_utilization"]) == 2
    # Asked once per GPU, then remembered as unsupported.
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 2
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 6
    dropped = [r for r in llamamon_log.records if "power not available" in r.getMessage()]
    assert len(dropped) == 2
    assert all(r.levelno == logging.DEBUG for r in dropped)


def test_clock_events_fall_back_to_the_older_throttle_reasons_function():
    fake = fake_nvml.gpus(1, unsupported={"nvmlDeviceGetCurrentClocksEventReasons"})
    fake.gpus[0].clock_event_reasons = 0x20
    collector = GpuCollector(nvml=fake)
    ticks = run(opened(collector, ticks=2))
    events = by_metric(ticks[-1])["gpu_clock_event"]
    assert events[(("gpu", "0"), ("reason", "sw_thermal_slowdown"))] == 1.0
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2


def test_ecc_unsupported_on_a_consumer_card_drops_both_counts_only():
    fake = fake_nvml.gpus(1, unsupported={"nvmlDeviceGetTotalEccErrors"})
    (samples,) = run(opened(GpuCollector(nvml=fake)))
    table = by_metric(samples)
    assert "gpu_ecc_errors" not in table
    assert "gpu_temperature" in table


def test_a_lost_gpu_is_skipped_per_tick_and_warned_once(llamamon_log):
    fake = fake_nvml.lost_after(2, gpu_count=2, index=1)
    collector = GpuCollector(nvml=fake)
    ticks = run(opened(collector, ticks=5))
    # describe() at open asks memory once, so GPU 1 answers that and the first tick, then is lost.
    seen = [{dict(s.labels)["gpu"] for s in samples if s.metric == "gpu_utilization"} for samples in ticks]
    assert seen == [{"0", "1"}, {"0"}, {"0"}, {"0"}, {"0"}]
    # No partial rows from a device skipped mid-tick.
    assert not any(dict(s.labels).get("gpu") == "1" for samples in ticks[1:] for s in samples)
    warnings = [r for r in llamamon_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "GPU 1" in warnings[0].getMessage()
    assert "GPU is lost" in warnings[0].getMessage()
    # It keeps being asked (the GPU may come back), one memory query per tick.
    assert fake._ticks[1] == 6


def test_process_memory_counts_only_the_tree_and_maps_container_pids(tmp_path: Path):
    # Our tree (as this process sees it): container pids 67 and 68. NVML reports host pids.
    fake = fake_nvml.processes(
        {40067: 3 * 1024**3, 40068: 1024**3, 555: 7 * 1024**3, 40099: None},
        nspid_map={40067: 67, 40068: 68, 40099: 99},
    )
    proc_root = fake.write_proc(tmp_path / "proc")
    collector = GpuCollector(nvml=fake, pids=lambda: {67, 68, 99}, proc_root=proc_root)
    (samples,) = run(opened(collector))
    table = by_metric(samples)
    # 555 is someone else's process; 40099 is ours but the driver could not say how much it uses.
    assert table["gpu_process_memory_used"] == {(("gpu", "0"),): float(4 * 1024**3)}


def test_process_memory_is_zero_when_the_tree_uses_no_gpu(tmp_path: Path):
    fake = fake_nvml.processes({555: 1024**3})
    collector = GpuCollector(nvml=fake, pids=lambda: {1234}, proc_root=tmp_path)
    (samples,) = run(opened(collector))
    assert by_metric(samples)["gpu_process_memory_used"] == {(("gpu", "0"),): 0.0}


def test_nspid_of_a_real_process_starts_with_its_pid_in_this_procfs():
    # This procfs is mounted in our own PID namespace, so the outermost id it shows is our pid.
    assert read_nspid(Path("/proc"), os.getpid())[0] == os.getpid()
    assert read_nspid(Path("/nonexistent"), 42) == (42,)


def test_collect_before_open_or_after_close_returns_nothing():
    fake = fake_nvml.gpus(1)
    collector = GpuCollector(nvml=fake)
    assert run(collector.collect()) == []
    run(opened(collector))
    assert run(collector.collect()) == []
