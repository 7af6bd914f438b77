"""Exported rules keep llamamon's meaning: series matching across two metrics, and live runs only.

llamamon pairs series that agree on the labels they share (a GPU series with its host's memory series);
PromQL pairs identical label sets unless told ``on(...)``. The export adds what the catalog's label names
allow, refuses what PromQL cannot say, and warns where it cannot know. The same input goes through
real ``promtool test rules`` and ``llamamon alerts test --unit``; both must report the same alerts.
Every exported rule also fires only while its file says ``llamamon_run_active 1``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import require_binary, run_llamamon
from test_rules_promtest import _got, pass_under_both

RULES = """\
alerts:
  builtin: {loss_plateau: false, train_loss_plateau: false}
  rules:
    idle_gpu_full_ram:
      condition: "gpu_utilization < 0.2 and memory_usage > 0.9"
    full_ram_idle_gpu:
      condition: "memory_usage > 0.9 and gpu_utilization < 0.2"
    vram_over_ram:
      condition: "gpu_memory_used > memory_available"
    ram_under_vram:
      condition: "memory_used < gpu_memory_used"
    vram_share:
      condition: "gpu_memory_used / memory_used > 1.5"
    vram_over_half_ram:
      condition: "gpu_memory_used > memory_available * 0.5"
    busy_unless_loaded:
      condition: "gpu_utilization > 0.5 unless load1 > 8"
"""
ALERTS = (
    "idle_gpu_full_ram",
    "full_ram_idle_gpu",
    "vram_over_ram",
    "ram_under_vram",
    "vram_share",
    "vram_over_half_ram",
    "busy_unless_loaded",
)


def _series(host: str, run: str, shift: int) -> list[tuple[str, str]]:
    """One run's GPU series (gpu 0 and 1) and host series; ``shift`` moves the host's bad minutes."""
    at = f'host="{host}", run="{run}"'
    high, low = f"0.5x{shift} 0.95x4 0.5x{9 - shift}", f"9e9x{shift} 1e9x4 9e9x{9 - shift}"
    return [
        (f'llamamon_gpu_utilization_ratio{{gpu="0", {at}}}', "0.1x6 0.9x8"),
        (f'llamamon_gpu_utilization_ratio{{gpu="1", {at}}}', "0.9x3 0.1x11"),
        (f'llamamon_gpu_memory_used_bytes{{gpu="0", {at}}}', "2e9x14"),
        (f'llamamon_gpu_memory_used_bytes{{gpu="1", {at}}}', "8e9x14"),
        (f"llamamon_memory_usage_ratio{{{at}}}", high),
        (f"llamamon_memory_available_bytes{{{at}}}", low),
        (f"llamamon_memory_used_bytes{{{at}}}", f"4e9x{shift} 5e9x4 4e9x{9 - shift}"),
        (f"llamamon_load1{{{at}}}", f"1x{shift + 2} 9x3 1x{9 - shift}"),
        (f"llamamon_run_active{{{at}}}", "1x14"),
    ]


def _doc(rule_file: str, expected: dict[tuple[str, int], list] | None) -> dict:
    series = _series("box1", "r1", 2) + _series("box2", "r2", 6)
    cases = []
    for minute in range(1, 15):  # Why from 1: promtool writes minute 0 as "0s", which _got does not read
        for name in ALERTS:
            case: dict = {"eval_time": f"{minute}m", "alertname": name}
            if expected is not None:
                case["exp_alerts"] = expected.get((name, minute), [])
            cases.append(case)
    test = {
        "name": "matching",
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": cases,
    }
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": [test]}


def export(tmp_path: Path, rules: str) -> subprocess.CompletedProcess[bytes]:
    """``rules`` as rules.yaml, exported by `llamamon alerts export` to exported.yml (which must succeed)."""
    (tmp_path / "rules.yaml").write_text(rules)
    exported = run_llamamon("alerts", "export", "--config", "rules.yaml", "-o", "exported.yml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()
    return exported


@pytest.mark.integration
def test_two_metrics_with_different_labels_fire_alike_in_promtool_and_llamamon(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    exported = export(tmp_path, RULES)
    assert exported.stderr == b""  # every rule here translates faithfully: nothing skipped, nothing warned
    text = (tmp_path / "exported.yml").read_text()
    assert "(llamamon_gpu_utilization_ratio < 0.2) and on(host, run) (llamamon_memory_usage_ratio > 0.9)" in text
    assert "llamamon_gpu_memory_used_bytes > on(host, run) group_left() llamamon_memory_available_bytes" in text
    assert "llamamon_memory_used_bytes < on(host, run) group_right() llamamon_gpu_memory_used_bytes" in text
    # (a bare group_left before "(" would be read as its label list: promtool refused this one)
    assert "llamamon_gpu_memory_used_bytes > on(host, run) group_left() (llamamon_memory_available_bytes * 0.5)" in text
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(_doc("exported.yml", None)))
    probe = subprocess.run([promtool, "test", "rules", "probe.yaml"], cwd=tmp_path, capture_output=True, text=True)
    truth = _got(probe.stdout + probe.stderr)
    assert {name for name, _ in truth} == set(ALERTS), probe.stdout[-3000:]  # each rule fires in Prometheus
    # A host's bad minutes pair with its own GPUs only (box1: minutes 3-7, box2: 7-11; gpu 1 idle from 4).
    idle = {m: [a["exp_labels"] for a in alerts] for (n, m), alerts in truth.items() if n == "idle_gpu_full_ram"}
    assert idle[3] == [{"gpu": "0", "host": "box1", "run": "r1", "severity": "warning"}]
    assert idle[10] == [{"gpu": "1", "host": "box2", "run": "r2", "severity": "warning"}]
    pass_under_both(tmp_path, promtool, lambda rule_file: _doc(rule_file, truth))


def test_what_promql_cannot_pair_is_skipped_and_what_it_cannot_know_is_warned(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "alerts:\n  builtin: {loss_plateau: false, train_loss_plateau: false}\n  rules:\n"
        "    cores_vs_gpus: {condition: 'cpu_core_usage > gpu_utilization'}\n"
        "    gpu_and_server: {condition: 'gpu_utilization < 0.2 and batch_queue_size > 5'}\n"
        "    server_and_host: {condition: 'batch_queue_size > 5 and memory_usage > 0.9'}\n"
    )
    exported = run_llamamon("alerts", "export", "--config", "rules.yaml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()
    out, err = exported.stdout.decode(), exported.stderr.decode().splitlines()
    assert "alert: cores_vs_gpus" not in out
    assert err[0] == (
        "llamamon: not exported: cores_vs_gpus: cpu_core_usage > gpu_utilization: each side has labels the other "
        "lacks (core / gpu); PromQL cannot pair such series one to many"
    )
    # batch_queue_size's labels are the server's: exported as PromQL would match it, and said so.
    assert "alert: gpu_and_server" in out
    assert err[1].startswith("llamamon: warning: gpu_and_server: (gpu_utilization < 0.2) and (batch_queue_size > 5): ")
    assert "PromQL matches identical label sets only" in err[1]
    # Against a host-only metric every series agrees on host and run, whatever else it carries.
    assert "(llamamon_batch_queue_size > 5) and on(host, run) (llamamon_memory_usage_ratio > 0.9)" in out
    assert len(err) == 2


LIVE_RULES = """\
alerts:
  builtin: {loss_plateau: false, train_loss_plateau: false}
  rules:
    batch_queue_high:
      condition: batch_queue_size > 100
      for: 2m
    host_memory:
      condition: memory_usage > 0.9
"""


@pytest.mark.integration
def test_a_finished_runs_frozen_values_never_fire(tmp_path: Path) -> None:
    """The issue's crashed run: queue 166 left in its file. Live, the rule fires; finished, it never does."""
    promtool = require_binary("promtool")
    export(tmp_path, LIVE_RULES)
    series = [
        ('llamamon_batch_queue_size{host="h", run="crashed"}', "166x14"),
        ('llamamon_run_active{host="h", run="crashed"}', "1 0x13"),  # ended after a minute: for 2m never met
        ('llamamon_batch_queue_size{host="h", run="live"}', "166x14"),
        ('llamamon_run_active{host="h", run="live"}', "1x6 0x7"),  # ended at minute 7
        ('llamamon_memory_usage_ratio{host="h"}', "0.95x14"),  # watch's own file: host only
        ('llamamon_run_active{host="h"}', "1x3 0x10"),  # watch exited at minute 4
    ]
    live = {"severity": "warning", "host": "h", "run": "live"}
    cases = [
        {
            "eval_time": f"{m}m",
            "alertname": "batch_queue_high",
            "exp_alerts": [{"exp_labels": live}] if 2 <= m <= 6 else [],
        }
        for m in range(14)
    ] + [
        {
            "eval_time": f"{m}m",
            "alertname": "host_memory",
            "exp_alerts": [{"exp_labels": {"severity": "warning", "host": "h"}}] if m <= 3 else [],
        }
        for m in range(14)
    ]
    test = {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series], "alert_rule_test": cases}
    doc = {"rule_files": ["exported.yml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(doc))
    result = subprocess.run([promtool, "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
