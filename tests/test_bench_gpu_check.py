"""bench/gpu_check.sh, the real-GPU check: it parses, stops clearly at its first GPU step on a machine
without one, and its verdicts (bench/gpu_check_analysis.py) decide right on made-up rows."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest
from fakes import nvml as fake_nvml

from bench import gpu_check_analysis as an
from bench.gpu_check_analysis import MIB, Row
from llamamon.collectors.gpu import GpuCollector
from tests.conftest import REPO
from tests.test_report_gpu_derived import _store

SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_dry_run_without_a_gpu_stops_at_nvidia_smi_with_the_reason(tmp_path):
    path = os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"])
    if shutil.which("nvidia-smi", path=path):
        pytest.skip("this machine has nvidia-smi: the check would really run")
    env = dict(os.environ, PATH=path, GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_TORCH="skip")
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("PASS python:")
    assert lines[1].startswith("FAIL nvidia-smi: not found on PATH: no NVIDIA driver on this machine; stopping")
    result = json.loads((out / "results.json").read_text())
    assert result["passed"] is False
    assert [c["verdict"] for c in result["checks"]] == ["PASS", "FAIL"]
    assert (out / "gpu_check.log").is_file()


def _gpu_rows(watts: float, counter_watts: float, seconds: int = 20) -> list[Row]:
    rows = []
    for i in range(2 * seconds + 1):
        t = 1000.0 + 0.5 * i
        rows.append(Row(t, "gpu_power", watts, {"gpu": "0"}))
        rows.append(Row(t, "gpu_energy", 1e6 + counter_watts * 0.5 * i, {"gpu": "0"}))
    return rows


def test_energy_against_integrated_power():
    got = {v.name: v.verdict for v in an.check_energy(_gpu_rows(300.0, 300.0), "0")}
    assert got == {"power": "PASS", "energy": "PASS", "energy vs integrated power": "PASS"}
    off = {v.name: v.verdict for v in an.check_energy(_gpu_rows(300.0, 200.0), "0")}
    assert off["energy vs integrated power"] == "FAIL"  # 33 % apart


def test_memory_within_five_percent_of_nvidia_smi_and_torch():
    snap = {"time": 1005.0, "smi_memory_used_mib": 10_000.0, "torch_used": 10_000 * MIB}
    rows = [
        Row(1000.0, "gpu_memory_used", 1.0 * MIB, {"gpu": "0"}),
        Row(1005.2, "gpu_memory_used", 10_300.0 * MIB, {"gpu": "0"}),
    ]
    assert [v.verdict for v in an.check_memory(rows, "0", snap)] == ["PASS", "PASS"]  # the nearest sample: 3 %
    rows[1] = Row(1005.2, "gpu_memory_used", 11_000.0 * MIB, {"gpu": "0"})
    assert [v.verdict for v in an.check_memory(rows, "0", snap)] == ["FAIL", "FAIL"]  # 9 %


def test_process_memory_holds_torch_reserve_and_matches_nvidia_smi():
    snap = {"time": 5.0, "pid": 42, "torch_reserved": 9_000 * MIB, "smi_apps": [{"pid": 42, "used_mib": 9_500.0}]}
    rows = [Row(5.0, "gpu_process_memory_used", 9_500.0 * MIB, {"gpu": "0"})]
    assert [v.verdict for v in an.check_process_memory(rows, "0", snap)] == ["PASS", "PASS"]
    rows = [Row(5.0, "gpu_process_memory_used", 8_000.0 * MIB, {"gpu": "0"})]
    assert [v.verdict for v in an.check_process_memory(rows, "0", snap)] == ["FAIL", "FAIL"]


def _recorded(fake, ticks: int = 3) -> tuple[list[Row], dict]:
    """Rows and run metadata as a recording with this (fake) NVML leaves them: the collector's samples, and
    its run_metadata() through JSON, as runs/<id>.json holds it."""
    clock = [0.0]

    def now() -> float:
        return clock[0]

    collector = GpuCollector(nvml=fake, pids=lambda: {os.getpid()}, clock=now)

    async def go():
        await collector.open()
        try:
            samples = []
            for tick in range(ticks):
                clock[0] += 2.0
                samples += [Row(float(tick), s.metric, s.value, dict(s.labels)) for s in await collector.collect()]
            return samples, json.loads(json.dumps(collector.run_metadata()))
        finally:
            await collector.close()

    return asyncio.run(go())


COLLECTED = sorted(an.UNAVAILABLE_FIELDS)


@pytest.mark.parametrize(
    ("scenario", "declared"),
    [
        (fake_nvml.h100_sxm, {"gpu_fan_speed"}),
        (
            fake_nvml.consumer_pcie,
            {
                "gpu_ecc_errors",
                "gpu_nvlink_rx_throughput",
                "gpu_nvlink_tx_throughput",
                "gpu_sm_activity",
                "gpu_tensor_activity",
                "gpu_dram_bandwidth_utilization",
            },
        ),
    ],
)
def test_each_gpu_metric_recorded_or_declared_unavailable_in_the_run_metadata(scenario, declared):
    rows, meta = _recorded(scenario())
    got = {v.name.removeprefix("metric "): v for v in an.check_metrics_present(rows, COLLECTED, meta, "0")}
    assert {m for m, v in got.items() if v.verdict != "PASS"} == set()
    assert {m for m, v in got.items() if v.figure == "declared unavailable"} == declared
    assert got["gpu_xid_errors"].figure == "none occurred (gpu_xid_events recorded)"
    if "gpu_sm_activity" in declared:  # the collector's own reason, from runs/<id>.json
        assert got["gpu_sm_activity"].detail == "gpm: this GPU has no NVML GPM (Hopper or later needed)"
    # A metric the board gave but that went missing from the rows is silent: no declaration covers it.
    without = [r for r in rows if r.metric != "gpu_temperature"]
    missing = {v.name: v.verdict for v in an.check_metrics_present(without, COLLECTED, meta, "0")}
    assert missing["metric gpu_temperature"] == "FAIL"


def test_a_declaration_counts_for_its_own_gpu_and_only_when_every_fallback_is_gone():
    meta = {
        "gpu": {
            "available": True,
            "gpus": [
                {"index": 0, "unavailable": {"clock_events": "nvmlDeviceGetCurrentClocksEventReasons: Not Supported"}},
                {"index": 1, "unavailable": {"energy": "nvmlDeviceGetTotalEnergyConsumption: Not Supported"}},
            ],
        }
    }
    rows = [Row(1.0, "gpu_power", 100.0, {"gpu": "0"}), Row(1.0, "gpu_power", 100.0, {"gpu": "1"})]
    names = ["gpu_power", "gpu_energy", "gpu_clock_event"]
    gpu0 = {v.name: v.verdict for v in an.check_metrics_present(rows, names, meta, "0")}
    assert gpu0 == {"metric gpu_power": "PASS", "metric gpu_energy": "FAIL", "metric gpu_clock_event": "FAIL"}
    gpu1 = {v.name: (v.verdict, v.detail) for v in an.check_metrics_present(rows, names, meta, "1")}
    assert gpu1["metric gpu_energy"] == ("PASS", "energy: nvmlDeviceGetTotalEnergyConsumption: Not Supported")
    meta["gpu"]["gpus"][0]["unavailable"]["clock_events_legacy"] = "this pynvml has no such function"
    gpu0 = {v.name: v.verdict for v in an.check_metrics_present(rows, names, meta, "0")}
    assert gpu0["metric gpu_clock_event"] == "PASS"  # neither function answers: declared
    off = {"gpu": {"available": False, "reason": "NVML library not found", "gpus": []}}
    assert [v.figure for v in an.check_metrics_present([], ["gpu_power"], off, "0")] == [
        "GPU collector off: NVML library not found"
    ]


def test_every_nvml_metric_of_the_catalog_has_its_collector_fields():
    from llamamon import catalog

    nvml = {m.name for m in catalog.METRICS if m.group == "gpu" and not m.name.startswith("torch_")}
    assert nvml == set(an.UNAVAILABLE_FIELDS)


def test_recorder_cpu_per_sample():
    on, off = {"cpu_seconds": 0.09, "samples": 30}, {"cpu_seconds": 0.06, "samples": 30}
    verdict = an.check_recorder_cpu(on, off)
    assert verdict.verdict == "PASS"
    assert "on 3.00 ms, off 2.00 ms, ratio 1.50" in verdict.figure
    assert an.check_recorder_cpu({"cpu_seconds": 0.9, "samples": 30}, off).verdict == "FAIL"  # 28 ms for the GPU
    assert an.check_recorder_cpu({"cpu_seconds": None, "samples": 30}, off).verdict == "FAIL"


def test_mfu_read_from_the_real_markdown_report(metrics_dir, tmp_path):
    from llamamon.report.render import render_report

    info = _store(metrics_dir, counter=True)
    md = render_report(metrics_dir, [info], tmp_path / "r.md", fmt="markdown").read_text()
    assert an.reported_mfu(md) == pytest.approx(0.006)  # 1000 tokens/s x 6e9 / 989.5e12, printed as 0.6%
    job = {"logged_first": (0.0, 0), "logged_last": (3600.0, 3.6e6), "flops_per_token": 6e9, "matmul_tflops": 10.0}
    assert an.check_mfu(md, job, 989.5)[0].verdict == "PASS"
    job["logged_last"] = (3600.0, 7.2e6)  # twice the rate the report shows
    assert an.check_mfu(md, job, 989.5)[0].verdict == "FAIL"
