"""promtool's test-file format, and the cross-check: same test file, same alerts as real Prometheus."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import promtool_labels, require_binary, run_llamamon

from llamamon.rules import promtest


def pass_under_both(tmp_path: Path, promtool: str, doc: Callable[[str], dict[str, Any]]) -> None:
    """The same `promtool test rules` file, ``doc(rule file)``, passes under promtool with the exported rules
    (exported.yml) and under `llamamon alerts test --unit` with llamamon's own (rules.yaml)."""
    for rule_file, name in (("exported.yml", "prom.yaml"), ("rules.yaml", "llamamon.yaml")):
        (tmp_path / name).write_text(yaml.safe_dump(doc(rule_file), allow_unicode=True))
    prom = subprocess.run([promtool, "test", "rules", "prom.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert prom.returncode == 0, prom.stdout[-3000:]
    ours = run_llamamon("alerts", "test", "--unit", "llamamon.yaml", cwd=tmp_path)
    assert ours.returncode == 0, ours.stdout.decode()[-3000:]
    assert ours.stdout.decode().endswith("  SUCCESS\n")


@pytest.mark.parametrize(
    ("values", "expanded"),
    [
        ("-2+4x3", [-2, 2, 6, 10]),
        ("1+0x6 0 0 0 0 0 0 0 0", [1] * 7 + [0] * 8),
        ("10+10x2 30+20x5", [10, 20, 30, 30, 50, 70, 90, 110, 130]),
        ("10+10x7 10+30x4", [10, 20, 30, 40, 50, 60, 70, 80, 10, 40, 70, 100, 130]),
        ("0+10x5", [0, 10, 20, 30, 40, 50]),
        (" 1-2x4", [1, -1, -3, -5, -7]),
        (" 1x4", [1, 1, 1, 1, 1]),
        (" 1 _x3 stale", [1, None, None, None, promtest.STALE]),
        ("1e3 _ +Inf -Inf", [1000, None, math.inf, -math.inf]),
    ],
)
def test_values_notation(values: str, expanded: list) -> None:
    assert promtest.expand_values(values) == expanded


def test_values_nan_and_errors() -> None:
    assert math.isnan(promtest.expand_values("NaN")[0])
    with pytest.raises(ValueError, match="bad value 'x3'"):
        promtest.expand_values("1 x3")


def test_series_notation_and_names() -> None:
    assert promtest.parse_series('llamamon_gpu_utilization_ratio{gpu="0", host="a\\"b"}') == (
        "llamamon_gpu_utilization_ratio",
        {"gpu": "0", "host": 'a"b'},
    )
    assert promtest.parse_series("up") == ("up", {})
    # exported names map back to stored names, with base units converted to the catalog unit
    assert promtest.metric_of("llamamon_inference_latency_seconds") == ("inference_latency", 1000.0)
    assert promtest.metric_of("llamamon_gpu_energy_joules_total") == ("gpu_energy", 1.0)
    assert promtest.metric_of("llamamon_my_metric") == ("my_metric", 1.0)
    assert promtest.metric_of("memory_usage") == ("memory_usage", 1.0)


CROSS_RULES = """\
alerts:
  builtin: {loss_plateau: false, train_loss_plateau: false}
  rules:
    mem_high:
      condition: "memory_usage > 90%"
      severity: critical
      for: 2m
      annotations:
        summary: "Memory at {{ $value }} on {{ $labels.host }}"
    gpu_idle:
      condition: 'gpu_utilization < 0.2 and gpu_process_memory_used > 1GiB'
      severity: warning
      for: 1m
      keep_firing_for: 3m
      labels: {team: ml}
      annotations:
        summary: "GPU {{ $labels.gpu }} {{ $value | humanizePercentage }}"
    slow:
      condition: "p95(step_time, 5m) > 500ms"
      severity: warning
      annotations:
        summary: "p95 {{ $value | humanizeDuration }}"
    energy:
      condition: "rate(gpu_energy, 2m) > 5 or increase(gpu_energy, 3m) < 100"
      severity: info
    queue:
      condition: "avg(batch_queue_size, 3m) >= 10 unless max(batch_queue_size, 3m) > 50"
      severity: info
      annotations:
        summary: '{{ $value | printf "%.2f" }} {{ $value | humanize }}'
    big:
      condition: "gpu_memory_used > 1000000 and not gpu_memory_used >= 3e9"
      severity: info
      annotations:
        summary: "{{ $value }}"
    window_mix:
      condition: "count(batch_queue_size, 2m) >= 3 and min(batch_queue_size, 2m) < 30 and sum(batch_queue_size, 2m) > 40"
      severity: info
    nan_loss:
      condition: "not isfinite(loss)"
      severity: critical
      annotations:
        summary: "loss is {{ $value }}"
"""

CROSS_SERIES = [
    ('llamamon_memory_usage_ratio{host="box1"}', "0.5 0.95x4 0.5 stale"),
    ('llamamon_gpu_utilization_ratio{gpu="0", host="box1"}', "0.1x3 0.9 0.1x6 stale"),
    ('llamamon_gpu_utilization_ratio{gpu="1", host="box1"}', "0.1x10"),
    ('llamamon_gpu_process_memory_used_bytes{gpu="0", host="box1"}', "2e9x12"),
    ('llamamon_gpu_process_memory_used_bytes{gpu="1", host="box1"}', "2e9x2 0x9"),
    ("llamamon_step_time_seconds", "0.1 0.2 0.7 0.9 0.8 0.1x8"),
    ("llamamon_gpu_energy_joules_total", "0+400x4 0+100x8"),
    ("llamamon_batch_queue_size", "5 10 20 30 60 10x6 _ 12"),
    ('llamamon_gpu_memory_used_bytes{gpu="0"}', "500 1234567 2e6 123456 3e9 2.5e9 _x3 1e7"),
    ("llamamon_loss", "1 0.5 NaN 0.4 +Inf 0.3 stale"),
    # Every .prom file says its run is live; the exported rules fire only where it is.
    ('llamamon_run_active{host="box1"}', "1x14"),
    ("llamamon_run_active", "1x14"),
]
ALERTS = ("mem_high", "gpu_idle", "slow", "energy", "queue", "big", "window_mix", "nan_loss")


def _test_doc(rule_file: str, expected: dict[tuple[str, int], list] | None) -> dict:
    cases = []
    for minute in range(15):
        for name in ALERTS:
            case: dict = {"eval_time": f"{minute}m", "alertname": name}
            if expected is not None:
                case["exp_alerts"] = expected.get((name, minute), [])
            cases.append(case)
    return {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "cross",
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in CROSS_SERIES],
                "alert_rule_test": cases,
            }
        ],
    }


def _got(report: str) -> dict[tuple[str, int], list]:
    """promtool's failure report (every case expected nothing) -> what fired, per (alertname, minute)."""
    out: dict[tuple[str, int], list] = {}
    blocks = re.finditer(r"alertname: (\w+), time: (\d+)m, \n\s+exp:\[\], \n\s+got:(\[\]|\[.*?\n\s+\])", report, re.S)
    for m in blocks:
        found = re.findall(r"Labels:(\{.*?\})\n\s+Annotations:(\{.*?\})", m.group(3))
        items = []
        for lab, ann in found:
            labels = promtool_labels(lab)
            labels.pop("alertname")
            items.append({"exp_labels": labels, "exp_annotations": promtool_labels(ann)})
        out[(m.group(1), int(m.group(2)))] = items
    return out


@pytest.mark.integration
def test_same_alerts_as_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    (tmp_path / "rules.yaml").write_text(CROSS_RULES)
    exported = run_llamamon("alerts", "export", "--config", "rules.yaml", "-o", "exported.yml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    # 1. ask Prometheus what fires, tick by tick (every case expects nothing, so promtool prints what it got)
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(_test_doc("exported.yml", None)))
    probe = subprocess.run([promtool, "test", "rules", "probe.yaml"], cwd=tmp_path, capture_output=True, text=True)
    truth = _got(probe.stdout + probe.stderr)
    assert len(truth) >= 40, probe.stdout[-2000:]  # many ticks with alerts: the scenario is not trivial
    assert {name for name, _ in truth} == set(ALERTS)
    # 2. the same test file, with Prometheus' answers as expectations, passes under both tools
    pass_under_both(tmp_path, promtool, lambda rule_file: _test_doc(rule_file, truth))
