"""``llamamon alerts check | test | export`` through the real entry point: output, exact errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO, require_binary, run_llamamon, write_samples

from llamamon.cli import main
from llamamon.rules.builtin import BUILTIN_NAMES

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in-process through main() (the one error-translation point): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return int(exc.value.code or 0), out, err


FULL = """\
monitoring:
  update_frequency: 10s
  thresholds:
    memory: {warning: 0.7, critical: 0.85}
aliases:
  tput: tokens_per_second
alerts:
  channels:
    hook: {type: webhook, url: "http://127.0.0.1:9/hook"}
  builtin:
    gpu_underutilized: false
  rules:
    gpu_hot:
      condition: 'gpu_temperature{gpu=~"[01]"} > 85 and gpu_power > 250W'
      severity: critical
      channels: [hook]
      for: 2m
      keep_firing_for: 5m
      labels: {team: ml, gpu_index: "{{ $labels.gpu }}"}
      annotations:
        summary: "GPU {{ $labels.gpu }} at {{ $value | printf \\"%.0f\\" }} °C"
        description: "{{ $value | humanize }} on {{ $labels.host }}"
    slow_p99:
      condition: "p99(inference_latency, 5m) > 2s or avg(time_to_first_token, 1m) > 800ms"
      severity: warning
    throughput_drop:
      condition: "tput < 10 and not rate(gpu_energy, 1m) < 1 unless memory_usage >= 95%"
      severity: info
    vram:
      condition: "gpu_memory_used / gpu_memory_total > 0.5 and quantile(0.5, gpu_memory_used, 10m) > 20GiB"
      severity: info
      enabled: false
    nan:
      condition: "isnan(loss) or isinf(validation_loss) or abs(delta(loss, 5m)) > 10"
      severity: critical
"""


def test_check_repository_config_lists_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "alerts", "check", "--config", str(REPO / "monitoring.yaml"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["RULE", "SEVERITY", "FOR", "CHANNELS", "SOURCE", "CONDITION"]
    names = [line.split()[0] for line in lines[1:]]
    assert set(BUILTIN_NAMES) <= set(names)
    assert "memory_usage" in names
    assert "built-in (thresholds.memory.warning" in out
    assert err.strip().endswith(f"OK, {len(names)} rules ({len(names)} on)")


def test_check_config_using_every_feature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "full.yaml"
    path.write_text(FULL, encoding="utf-8")
    code, out, err = run(capsys, "alerts", "check", "--config", str(path))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "gpu_hot" in rows
    assert rows["gpu_hot"].split()[1:4] == ["critical", "2m", "hook"]
    assert f"{path}:" in rows["gpu_hot"]
    assert "vram (off)" in out
    assert "gpu_underutilized (off)" in out
    assert "memory_usage > 0.7" in rows["memory_warning"]


@pytest.mark.parametrize(
    ("body", "first_line"),
    [
        (
            'alerts:\n  rules:\n    memory_usage:\n      condition: "memory_usage >> 0.9"\n',
            "Error: {f}:4: alerts.rules.memory_usage.condition: unexpected '>' at column 15: "
            "expected a metric name, a number or '('",
        ),
        (
            'alerts:\n  rules:\n    g:\n      condition: "gpu_util < 0.5"\n',
            "Error: {f}:4: alerts.rules.g.condition: unknown metric 'gpu_util' "
            '(did you mean "gpu_utilization"?) at column 1',
        ),
        (
            'alerts:\n  rules:\n    g:\n      condition: "memory_usage > 1"\n      annotations:\n'
            '        summary: "{{ .Value }}"\n',
            "Error: {f}:6: alerts.rules.g.annotations.summary: unknown template term {{{{ .Value }}}} "
            "(use $value or $labels.NAME)",
        ),
        (
            "alerts:\n  builtin:\n    memory_warn: false\n",
            'Error: {f}:3: alerts.builtin.memory_warn: no built-in rule of that name (did you mean "memory_warning"?)',
        ),
    ],
)
def test_check_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, first_line: str
) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text(body, encoding="utf-8")
    code, out, err = run(capsys, "alerts", "check", "--config", str(path))
    assert code == 2
    assert out == ""
    assert err.splitlines()[0] == first_line.format(f=path)


def test_export_passes_promtool_and_lists_what_does_not_translate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "full.yaml"
    path.write_text(FULL, encoding="utf-8")
    target = tmp_path / "rules.yml"
    code, _, err = run(capsys, "alerts", "export", "--config", str(path), "-o", str(target))
    assert code == 0, err
    text = target.read_text()
    assert 'expr: ((llamamon_gpu_temperature_celsius{gpu=~"[01]"} > 85) and (llamamon_gpu_power_watts > 250))' in text
    # 2s and 800ms are compared with metrics stored in ms but exported in seconds
    # latency and time to first token are exported as histograms: only their bucket/sum/count series exist
    assert "(histogram_quantile(0.99, rate(llamamon_inference_latency_seconds_bucket[5m])) > 2)" in text
    assert (
        "((rate(llamamon_time_to_first_token_seconds_sum[1m]) / rate(llamamon_time_to_first_token_seconds_count[1m]))"
        " > 0.8)" in text
    )
    assert "keep_firing_for: 5m" in text
    assert "- alert: vram" not in text  # disabled
    assert "llamamon: not exported: loss_plateau: evals_since_best()" in err
    promtool = require_binary("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(target)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


UNIT_RULES = """\
alerts:
  builtin: {memory_warning: false, memory_critical: false}
  rules:
    HostMemoryHigh:
      condition: "memory_usage > 90%"
      severity: critical
      for: 2m
      annotations:
        summary: "Memory at {{ $value }}"
"""

UNIT_TEST = """\
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - name: memory alerts
    interval: 1m
    input_series:
      - series: 'llamamon_memory_usage_ratio{host="box1"}'
        values: '0.5 0.95x4'
    alert_rule_test:
      - eval_time: 2m
        alertname: HostMemoryHigh
        exp_alerts: []
      - eval_time: 3m
        alertname: HostMemoryHigh
        exp_alerts:
          - exp_labels: {severity: critical, host: box1}
            exp_annotations: {summary: "Memory at 0.95"}
"""


def test_unit_file_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rules.yaml").write_text(UNIT_RULES)
    (tmp_path / "t.yaml").write_text(UNIT_TEST)
    code, out, err = run(capsys, "alerts", "test", "--unit", str(tmp_path / "t.yaml"))
    assert (code, out) == (0, f"Unit Testing:  {tmp_path / 't.yaml'}\n  SUCCESS\n"), err


def test_unit_failure_prints_a_readable_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rules.yaml").write_text(UNIT_RULES)
    (tmp_path / "t.yaml").write_text(UNIT_TEST.replace("eval_time: 3m", "eval_time: 2m30s").replace('0.95"}', '0.9"}'))
    code, out, _ = run(capsys, "alerts", "test", "--unit", str(tmp_path / "t.yaml"))
    assert code == 1
    assert "  FAILED:" in out
    assert "alertname: HostMemoryHigh, time: 2m30s," in out
    assert '- {alertname="HostMemoryHigh", host="box1", severity="critical"} {summary="Memory at 0.9"}' in out
    assert "got:[]" in out


def test_unit_file_unknown_key_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rules.yaml").write_text(UNIT_RULES)
    (tmp_path / "t.yaml").write_text(UNIT_TEST.replace("    interval: 1m\n", "    intervall: 1m\n"))
    code, _, err = run(capsys, "alerts", "test", "--unit", str(tmp_path / "t.yaml"))
    assert code == 2
    assert (
        err.splitlines()[-1]
        == f"Error: {tmp_path / 't.yaml'}: tests[0].intervall: unknown key (known: name, interval, input_series, alert_rule_test, promql_expr_test, external_labels, external_url, replay)"
    )


def test_unit_needs_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "alerts", "test", "--unit")
    assert (code, err) == (2, "Error: alerts test: --unit needs at least one test file\n")


# --- over recorded data -------------------------------------------------------------------------------------


def _recorded(metrics_dir: Path) -> None:
    rows = [(T0 + i * 10, "memory_usage", 0.95 if 6 <= i < 30 else 0.5) for i in range(60)]
    rows += [(T0 + i * 10, "gpu_memory_usage", 0.99, {"gpu": "1"}) for i in range(60)]
    write_samples(metrics_dir, rows)


def test_recorded_run_table_exit_codes_json_and_junit(
    metrics_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _recorded(metrics_dir)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("alerts:\n  rules: {}\n")
    code, out, err = run(capsys, "alerts", "test", "--config", str(cfg), "--metrics-dir", str(metrics_dir))
    assert code == 1, err  # memory_critical fired (default --fail-on critical)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["memory_critical"][:3] == ["memory_critical", "critical", "-"]
    assert rows["gpu_memory_high"][2] == "gpu=1"
    assert rows["memory_critical"][-1] == "20260101T000000Z-testhost-0001"
    code, _, _ = run(
        capsys,
        "alerts",
        "test",
        "--config",
        str(cfg),
        "--metrics-dir",
        str(metrics_dir),
        "--fail-on",
        "critical",
        "--run",
        "20260101T000000Z-testhost-0001",
    )
    assert code == 1
    junit = tmp_path / "alerts.xml"
    code, out, _ = run(
        capsys,
        "alerts",
        "test",
        "--config",
        str(cfg),
        "--metrics-dir",
        str(metrics_dir),
        "--latest",
        "--json",
        "--junit",
        str(junit),
    )
    data = json.loads(out)
    crit = next(a for a in data if a["rule"] == "memory_critical")
    assert crit["fired_at"] - crit["active_at"] == 60  # for: 1m
    assert crit["labels"]["host"] == "testhost"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c.find("failure") is not None for c in suite.iter("testcase")}
    assert cases["memory_critical"] is True
    assert cases["loss_not_finite"] is False


def test_recorded_fail_on_threshold(metrics_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_samples(metrics_dir, [(T0 + i * 10, "gpu_memory_usage", 0.99, {"gpu": "0"}) for i in range(60)])
    cfg = tmp_path / "m.yaml"
    cfg.write_text("alerts:\n  rules: {}\n")
    base = ("alerts", "test", "--config", str(cfg), "--metrics-dir", str(metrics_dir))
    assert run(capsys, *base)[0] == 1  # a warning fired: the default --fail-on is warning
    assert run(capsys, *base, "--fail-on", "warning")[0] == 1
    assert run(capsys, *base, "--fail-on", "critical")[0] == 0  # only a warning fired
    code, _, err = run(capsys, *base, "--run", "nope")
    assert code == 2
    assert "Error: " in err


def test_unit_replay_of_a_recorded_run(metrics_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the run starts at 12:00; eval_time counts from its first sample
    start = T0 + 12 * 3600
    rows = [(start + i * 60, "memory_usage", 0.95 if 2 <= i < 6 else 0.5) for i in range(10)]
    write_samples(metrics_dir, rows, run="20260101T120000Z-testhost-00aa")
    (tmp_path / "rules.yaml").write_text(UNIT_RULES)
    (tmp_path / "t.yaml").write_text(
        "rule_files: [rules.yaml]\n"
        "tests:\n"
        "  - name: replayed\n"
        f"    replay: {{metrics_dir: {metrics_dir.name}, run: 20260101T120000Z-testhost-00aa}}\n"
        "    alert_rule_test:\n"
        "      - {eval_time: 3m, alertname: HostMemoryHigh, exp_alerts: []}\n"
        "      - eval_time: 4m\n"
        "        alertname: HostMemoryHigh\n"
        "        exp_alerts:\n"
        "          - exp_labels: {severity: critical, host: testhost, run: 20260101T120000Z-testhost-00aa}\n"
        '            exp_annotations: {summary: "Memory at 0.95"}\n'
        "      - {eval_time: 6m, alertname: HostMemoryHigh, exp_alerts: []}\n"
    )
    code, out, err = run(capsys, "alerts", "test", "--unit", str(tmp_path / "t.yaml"))
    assert code == 0, out + err
    assert out.endswith("  SUCCESS\n")


def test_export_refuses_a_bare_histogram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "alerts:\n  builtin: {}\n  rules:\n    raw_latency:\n      condition: inference_latency > 500\n",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "alerts", "export", "--config", str(path))
    assert code == 0, err
    assert "alert: raw_latency" not in out
    assert "raw_latency: inference_latency is exported as a histogram" in err


# --- metric names the job records -------------------------------------------------------------------


# Why the pauses: rules are evaluated on a grid of update_frequency (100ms here), and the low rewards
# must be the latest sample at some tick.
TRAIN = """\
import time
import llamamon
for step, reward in enumerate([0.9, 0.8, 0.2, 0.1, 0.15]):
    llamamon.log(reward_mean=reward, step=step)
    time.sleep(0.15)
"""


def _rule_config(path: Path, condition: str, extra: str = "") -> Path:
    path.write_text(
        f"monitoring:\n  metrics_path: m\n  update_frequency: 100ms\n{extra}alerts:\n  rules:\n    reward_collapse:\n"
        f'      condition: "{condition}"\n      severity: critical\n',
        encoding="utf-8",
    )
    return path


def test_a_metric_the_job_logs_is_known_once_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.py").write_text(TRAIN, encoding="utf-8")
    rules = _rule_config(tmp_path / "rules.yaml", "reward_mean < 0.5")
    code, out, err = run(capsys, "alerts", "check", "--config", str(rules))
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == (
        f"Error: {rules}:7: alerts.rules.reward_collapse.condition: unknown metric 'reward_mean' (not in the "
        "catalog, not recorded in m, not declared under `metrics:` in the config) at column 1"
    )

    plain = tmp_path / "plain.yaml"
    plain.write_text("monitoring:\n  metrics_path: m\n", encoding="utf-8")
    proc = run_llamamon("record", "--no-gpu", "--config", str(plain), "--", sys.executable, "train.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()

    code, out, err = run(capsys, "alerts", "check", "--config", str(rules))
    assert code == 0, err
    assert "reward_mean < 0.5" in out
    assert "metrics the job recorded in m: reward_mean" in err

    typo = _rule_config(tmp_path / "typo.yaml", "reward_maen < 0.5")
    code, _, err = run(capsys, "alerts", "check", "--config", str(typo))
    assert code == 2
    assert "unknown metric 'reward_maen' (did you mean \"reward_mean\"?) at column 1" in err.splitlines()[0]

    code, out, err = run(capsys, "alerts", "test", "--config", str(rules), "--latest")
    assert code == 1, err  # critical fired
    (row,) = [line for line in out.splitlines() if line.startswith("reward_collapse")]
    assert "critical" in row


def test_a_declared_metric_is_known_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.py").write_text(TRAIN, encoding="utf-8")
    rules = _rule_config(tmp_path / "rules.yaml", "reward_mean < 0.5", "metrics: [reward_mean]\n")
    code, _, err = run(capsys, "alerts", "check", "--config", str(rules))
    assert code == 0, err
    assert "metrics the config declares: reward_mean" in err
    # record accepts the rule too (its live alerts check names the same way), and the rule fires
    proc = run_llamamon("record", "--no-gpu", "--config", str(rules), "--", sys.executable, "train.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    code, out, err = run(capsys, "alerts", "test", "--config", str(rules), "--latest", "--json")
    assert code == 1, err
    assert [a["rule"] for a in json.loads(out)] == ["reward_collapse"]


def test_a_parser_group_is_a_known_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rule_config(tmp_path / "rules.yaml", "kl_div > 0.2", "parsers:\n  - 'kl=(?P<kl_div>[0-9.]+)'\n")
    code, _, err = run(capsys, "alerts", "check", "--config", str(rules))
    assert code == 0, err


def test_a_declared_name_must_be_a_metric_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rule_config(tmp_path / "rules.yaml", "memory_usage > 0.5", "metrics: [reward-mean]\n")
    code, _, err = run(capsys, "alerts", "check", "--config", str(rules))
    assert code == 2
    assert err.splitlines()[0] == (
        f"Error: {rules}:4: metrics[0]: expected a metric name like tokens_per_second (got 'reward-mean')"
    )


def _ci_store(tmp_path: Path) -> Path:
    """The README's CI scenario: a run whose validation loss goes over training.validation_loss_max (2)."""
    metrics = tmp_path / ".metrics"
    rows = [(T0 + i * 10, "loss", 3.0 - 0.01 * i, None, i * 50) for i in range(30)]
    rows += [(T0 + 100, "validation_loss", 1.9, None, 500), (T0 + 200, "validation_loss", 2.31, None, 1000)]
    write_samples(metrics, rows)
    return metrics


def test_readme_ci_line_fails_and_its_junit_file_says_why(tmp_path: Path) -> None:
    _ci_store(tmp_path)
    done = run_llamamon("alerts", "test", "--latest", "--junit", "alerts.xml", cwd=tmp_path)
    assert done.returncode == 1, done.stderr.decode()
    suite = ET.parse(tmp_path / "alerts.xml").getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "1"
    failed = {c.get("name"): c.find("failure") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert list(failed) == ["validation_loss_high"]
    body = failed["validation_loss_high"].text or ""
    assert body.startswith("validation_loss_high: value 2.31 at step 1000, 2026-01-01T00:03:20Z, resolved ")
    assert "run 20260101T000000Z-testhost-0001" in body
    assert "{" not in body  # no Python dict


def test_junit_fails_the_rules_the_exit_code_fails_on(tmp_path: Path) -> None:
    _ci_store(tmp_path)
    (tmp_path / "monitoring.yaml").write_text(
        "alerts:\n  rules:\n    loss_logged: {condition: 'loss > 0', severity: info}\n"
    )
    for fail_on, code, failures in (("critical", 0, set()), ("warning", 1, {"validation_loss_high"})):
        done = run_llamamon("alerts", "test", "--fail-on", fail_on, "--junit", "a.xml", cwd=tmp_path)
        assert done.returncode == code, done.stderr.decode()
        suite = ET.parse(tmp_path / "a.xml").getroot().find("testsuite")
        assert suite is not None
        cases = {c.get("name"): c for c in suite.iter("testcase")}
        assert {n for n, c in cases.items() if c.find("failure") is not None} == failures
        assert suite.get("failures") == str(len(failures))
        # what fired below --fail-on is listed, not failed
        out = {n: c.find("system-out").text for n, c in cases.items() if c.find("system-out") is not None}
        below = {"loss_logged"} | ({"validation_loss_high"} if fail_on == "critical" else set())
        assert set(out) == below
        assert out["loss_logged"].startswith(f"loss_logged (info, below --fail-on {fail_on}) fired 1 time(s):\n")
        assert "loss_logged: value 3 at step 0, 2026-01-01T00:00:00Z" in out["loss_logged"]
