"""``llamamon doctor`` and the collectors' describe functions behind it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import psutil
from conftest import run_llamamon
from fakes import nvml as fake_nvml

from llamamon.cli import cli
from llamamon.collectors.describe import describe_gpu, describe_process, describe_system
from llamamon.samples import Row
from llamamon.store.layout import new_run_id
from llamamon.store.retention import store_stats
from llamamon.store.writer import StoreWriter

RUN = new_run_id("h", 1.8e9)


def test_describe_system_reports_this_machine(tmp_path: Path):
    system = describe_system(tmp_path / ".metrics")
    assert system["cpu"]["logical"] == psutil.cpu_count()
    assert system["memory"]["total"] == psutil.virtual_memory().total
    assert system["metrics_filesystem"]["path"] == str(tmp_path)
    assert 0.0 <= system["metrics_filesystem"]["usage"] <= 1.0
    assert all(0.0 <= disk["usage"] <= 1.0 for disk in system["disks"])
    json.dumps(system)  # plain data: doctor --json and run metadata print it as is


def test_describe_gpu_uses_the_collectors_reasons_and_devices():
    missing = describe_gpu(fake_nvml.library_missing())
    assert missing == {
        "available": False,
        "reason": "NVML library not found (no NVIDIA driver on this machine)",
        "driver_version": None,
        "gpus": [],
    }
    two = describe_gpu(fake_nvml.gpus(2))
    assert two["available"] is True
    assert two["driver_version"] == "575.57.08"
    assert [(g["index"], g["name"], g["memory_total"]) for g in two["gpus"]] == [
        (0, "NVIDIA Fake 0", 80 * 1024**3),
        (1, "NVIDIA Fake 1", 80 * 1024**3),
    ]
    off = describe_gpu(enabled=False)
    assert off["available"] is False
    assert "--no-gpu" in off["reason"]


def test_describe_process_names_the_discovery_method():
    info = describe_process()
    assert info["discovery"] in ("/proc/<pid>/task/<tid>/children", "psutil scan of every process")
    assert info["cost_grows_with_machine"] is (info["discovery"] != "/proc/<pid>/task/<tid>/children")


def test_doctor_prints_every_section_with_defaults(runner, tmp_path: Path):
    result = runner.invoke(cli, ["doctor", "--no-gpu"])
    assert result.exit_code == 0, result.output
    for heading in ("System (psutil", "Process tree", "GPU (NVML)", "Config", "Metrics folder"):
        assert heading in result.output
    assert f"{psutil.cpu_count()} logical cores" in result.output
    assert "off: turned off (--no-gpu)" in result.output
    assert "built-in defaults" in result.output
    assert "Alert rules    16: 2 from the config, 14 built-in" in result.output
    assert str(tmp_path / ".metrics") in result.output
    assert "does not exist yet" in result.output


def test_doctor_json_matches_the_describe_functions(runner, tmp_path: Path):
    (tmp_path / "monitoring.yaml").write_text(
        "monitoring:\n  update_frequency: 2\n  metrics_path: data\n"
        "alerts:\n  builtin:\n    gpu_underutilized: false\n  rules:\n    loss_plateau:\n      condition: loss > 9\n"
    )
    with StoreWriter(tmp_path / "data", RUN, "h") as writer:
        writer.append([Row(1.8e9, "system", "cpu_usage", 0.5), Row(1.8e9, "gpu", "gpu_utilization", 0.9)])
    result = runner.invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["config"]["source"] == "monitoring.yaml"
    assert report["config"]["origin"] == "monitoring.yaml (found in the current folder)"
    assert report["config"]["update_frequency"] == 2.0
    assert (report["config"]["rules"], report["config"]["builtin_rules"]) == (1, 12)  # 14, one off, one replaced
    folder = report["metrics_folder"]
    assert folder["path"] == str(tmp_path / "data")
    assert (folder["exists"], folder["runs"], folder["data_files"], folder["journal_bytes"]) == (True, 1, 2, 0)
    assert folder["size"] == store_stats(tmp_path / "data").total_bytes > 0
    # The GPU section is what the GPU collector itself says on this machine (NVML or its reason).
    assert report["gpu"] == describe_gpu()


def test_doctor_metrics_dir_option_wins(runner, tmp_path: Path):
    result = runner.invoke(cli, ["doctor", "--no-gpu", "--json", "--metrics-dir", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["metrics_folder"]["path"] == str(tmp_path / "elsewhere")


def test_doctor_with_a_broken_config_still_reports_then_exits_2(tmp_path: Path):
    (tmp_path / "monitoring.yaml").write_text(
        textwrap.dedent(
            """\
            monitoring:
              update_frequncy: 5
            """
        )
    )
    result = run_llamamon("doctor", "--no-gpu", cwd=tmp_path)
    assert result.returncode == 2
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "System (psutil" in out
    assert "Metrics folder" in out
    assert "monitoring.yaml:2" in out
    assert err.startswith("Error: monitoring.yaml:2: monitoring.update_frequncy")
    assert "Traceback" not in err
