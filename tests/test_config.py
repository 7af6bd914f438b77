from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon.cli import cli
from llamamon.config import example_config_path, load_config
from llamamon.config.loader import UnsetVariable, expand_vars, parse_config_text
from llamamon.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "monitoring.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_defaults_are_the_issue_values_when_no_file_exists():
    cfg = load_config()
    m = cfg.monitoring
    assert cfg.source is None
    assert (m.enabled, m.update_frequency, str(m.metrics_path), m.export_format) == (
        True,
        10.0,
        ".metrics",
        "prometheus",
    )
    assert m.textfile_refresh == 5.0
    t = m.thresholds
    assert (t.memory.warning, t.memory.critical) == (0.80, 0.90)
    assert (t.gpu.utilization_min, t.gpu.memory_max) == (0.70, 0.95)
    assert (t.training.loss_plateau_patience, t.training.validation_loss_max, t.training.learning_rate_min) == (
        3,
        2.0,
        1e-6,
    )
    assert t.training.straggler_ratio == 1.25
    assert (t.inference.latency_max, t.inference.timeout, t.inference.batch_queue_max) == (1000, 30, 100)
    rules = cfg.alerts.rules
    assert rules["memory_usage"].condition == "memory_usage > 0.90"
    assert rules["memory_usage"].severity == "critical"
    assert rules["memory_usage"].channels == ("slack", "email")
    assert rules["gpu_utilization"].condition == "gpu_utilization < 0.50"
    assert cfg.alerts.channels["slack"].options["channel"] == "#alerts"


def test_repository_example_is_the_packaged_default():
    repo_example = Path(__file__).resolve().parents[1] / "monitoring.yaml"
    assert example_config_path().read_text() == repo_example.read_text()


def test_search_order(tmp_path, monkeypatch):
    write(tmp_path, "monitoring: {update_frequency: 3}\n")
    assert load_config().monitoring.update_frequency == 3
    env_file = write(tmp_path, "monitoring: {update_frequency: 4}\n", "env.yaml")
    monkeypatch.setenv("LLAMAMON_CONFIG", str(env_file))
    assert load_config().monitoring.update_frequency == 4
    explicit = write(tmp_path, "monitoring: {update_frequency: 5}\n", "explicit.yaml")
    assert load_config(explicit).monitoring.update_frequency == 5


def test_partial_file_keeps_other_defaults(tmp_path):
    path = write(tmp_path, "monitoring:\n  thresholds:\n    memory: {warning: 0.5}\n")
    cfg = load_config(path)
    assert cfg.monitoring.thresholds.memory.warning == 0.5
    assert cfg.monitoring.thresholds.memory.critical == 0.90
    assert "memory_usage" in cfg.alerts.rules


def test_own_rules_replace_the_example_rules(tmp_path):
    path = write(
        tmp_path,
        """
        alerts:
          rules:
            hot:
              condition: "gpu_temperature > 85"
              for: 2m
        """,
    )
    cfg = load_config(path)
    assert list(cfg.alerts.rules) == ["hot"]
    assert cfg.alerts.rules["hot"].for_ == 120
    assert cfg.alerts.rules["hot"].severity == "warning"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "monitoring:\n  update_frequncy: 5\n",
            'monitoring.yaml:2: monitoring.update_frequncy: unknown key (did you mean "update_frequency"?)',
        ),
        (
            "monitoring:\n  thresholds:\n    memory:\n      warning: 80\n",
            "monitoring.yaml:4: monitoring.thresholds.memory.warning: ratios are 0..1, e.g. 0.80 for 80 % (got 80)",
        ),
        (
            "monitoring:\n  update_frequency: soon\n",
            "monitoring.yaml:2: monitoring.update_frequency: expected a duration such as 30s or 2m (got 'soon')",
        ),
        (
            "monitoring:\n  textfile_refresh: -1\n",
            "monitoring.yaml:2: monitoring.textfile_refresh: a duration must be finite and not negative (got -1)",
        ),
        (
            "alerts:\n  rules:\n    r:\n      condition: x > 1\n      severity: urgent\n",
            "monitoring.yaml:5: alerts.rules.r.severity: must be one of info, warning, critical (got 'urgent')",
        ),
        (
            "alerts:\n  channels: {slack: {webhook_url: x}}\n  rules:\n    r:\n      condition: x > 1\n"
            "      channels: [slak]\n",
            "monitoring.yaml:6: alerts.rules.r.channels[0]: no channel named 'slak' in alerts.channels "
            '(did you mean "slack"?)',
        ),
        (
            "alerts:\n  channels:\n    pager: {url: x}\n",
            "monitoring.yaml:3: alerts.channels.pager: must be one of slack, email, webhook, alertmanager (got 'pager')",
        ),
        (
            "monitoring:\n  thresholds:\n    training:\n      straggler_ratio: 0.8\n",
            "monitoring.yaml:4: monitoring.thresholds.training.straggler_ratio: must be at least 1.01 (got 0.8)",
        ),
        ("monitorin: {}\n", 'monitoring.yaml:1: monitorin: unknown key (did you mean "monitoring"?)'),
        (
            "parsers:\n  - pattern: 'loss ([0-9.]+)'\n",
            "monitoring.yaml:2: parsers[0].pattern: needs named groups, e.g. (?P<loss>[0-9.e+-]+)",
        ),
        ("monitoring: [1, 2]\n", "monitoring.yaml:1: monitoring: expected a mapping (got [1, 2])"),
    ],
)
def test_mistakes_name_file_line_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected.replace("monitoring.yaml", str(path))


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "monitoring:\n  enabled: true\n   bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: YAML syntax error at column")


def test_env_vars_expand_and_unset_ones_wait_until_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK", "https://example.invalid/hook")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write(
        tmp_path,
        """
        alerts:
          channels:
            a: {type: webhook, url: "${HOOK}"}
            b: {type: webhook, url: "${NOT_SET_ANYWHERE}"}
            c: {type: webhook, url: "${NOT_SET_ANYWHERE:-http://127.0.0.1:9/x}"}
        """,
    )
    cfg = load_config(path)
    channels = cfg.alerts.channels
    assert channels["a"].options["url"] == "https://example.invalid/hook"
    assert channels["a"].unset_variables() == []
    assert channels["b"].unset_variables() == [("url", "NOT_SET_ANYWHERE")]
    assert channels["c"].options["url"] == "http://127.0.0.1:9/x"


def test_config_error_helper_points_at_the_line(tmp_path):
    path = write(tmp_path, "alerts:\n  rules:\n    r:\n      condition: 'x >'\n")
    cfg = load_config(path)
    err = cfg.error("alerts.rules.r.condition", "unexpected end")
    assert str(err) == f"{path}:4: alerts.rules.r.condition: unexpected end"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text):
    try:
        raw = parse_config_text(text, "fuzz.yaml")
    except ConfigError:
        return
    from llamamon.config import _defaults
    from llamamon.config.schema import build_config

    with contextlib.suppress(ConfigError):
        build_config(raw, _defaults())


def test_expand_vars_pure():
    env = {"A": "1", "E": ""}
    assert expand_vars("x${A}y", env) == "x1y"
    assert expand_vars("${E:-d}", env) == "d"
    value = expand_vars("${B}", env)
    assert isinstance(value, UnsetVariable)
    assert value.variable == "B"


def test_init_writes_example_and_refuses_to_overwrite(runner, tmp_path):
    result = runner.invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "monitoring.yaml").read_text() == example_config_path().read_text()
    again = runner.invoke(cli, ["init"])
    assert again.exit_code != 0
    forced = runner.invoke(cli, ["init", "--force"])
    assert forced.exit_code == 0


def test_init_refusal_is_one_line_exit_2(tmp_path):
    from conftest import run_llamamon

    (tmp_path / "monitoring.yaml").write_text("x")
    result = run_llamamon("init", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == "Error: monitoring.yaml already exists (use --force to overwrite it)"
    assert b"Traceback" not in result.stderr


def test_yaml_tag_the_safe_loader_refuses_is_a_config_error(tmp_path):
    path = write(tmp_path, "monitoring:\n  enabled: =\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:2: YAML error:")
