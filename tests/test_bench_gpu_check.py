"""bench/gpu_check.sh, the real-GPU check: it parses, stops clearly at its first GPU step on a machine
without one, and its verdicts (bench/gpu_check_analysis.py) decide right on made-up rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from bench import gpu_check_analysis as an
from bench.gpu_check_analysis import MIB, Row
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


def test_each_gpu_metric_recorded_or_declared_unavailable():
    rows = [Row(1.0, "gpu_power", 100.0, {"gpu": "0"})]
    log = (
        "llamamon: GPU 0: energy not available (nvmlDeviceGetTotalEnergyConsumption: Not Supported); not asked again\n"
        "llamamon: gpu_fan_speed mentioned on a line that declares nothing\n"
    )
    got = {v.name: v.verdict for v in an.check_metrics_present(rows, ["gpu_power", "gpu_energy", "gpu_fan_speed"], log)}
    assert got == {"metric gpu_power": "PASS", "metric gpu_energy": "PASS", "metric gpu_fan_speed": "FAIL"}


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
