"""Hostile and broken configs, from the reproducers of the hostile-input report: each gets its one-line
``file:line`` errors and exit 2 at once through the real CLI (a subprocess: a hang or a memory blow-up
is a timeout here, not a frozen suite), never a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from llamamon.config import load_config
from llamamon.errors import ConfigError
from tests.conftest import llamamon_env, run_llamamon


def check(tmp_path: Path, text: str | bytes, *options: str, env: dict[str, str] | None = None):
    path = tmp_path / "f.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    result = run_llamamon("alerts", "check", "--config", str(path), *options, cwd=tmp_path, timeout=60, env=env)
    return result.returncode, result.stderr.decode(), path


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["a: &a [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    code, err, path = check(tmp_path, billion_laughs())  # 9**9 values when expanded
    assert code == 2
    assert err.startswith(f"Error: {path}:")
    assert "more than 50000 values" in err
    assert "aliases" in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_a_recursive_alias_is_refused(tmp_path):
    code, err, path = check(tmp_path, "a: &a [*a]\n")
    assert code == 2
    assert (
        err
        == f"Error: {path}:1: the config nests deeper than 64 levels (YAML aliases like *a repeat what they refer to); refusing to read it\n"
    )


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(
        textwrap.dedent(
            """
            x-channels: &ch [slack]
            alerts:
              channels:
                slack: {webhook_url: "http://127.0.0.1:9/x"}
              rules:
                a: {condition: "loss > 1", channels: *ch}
                b: {condition: "loss > 2", channels: *ch}
            """
        )
    )
    with pytest.raises(ConfigError, match="unknown key"):  # x- keys are not a thing; the aliases themselves are fine
        load_config(path)
    path.write_text(path.read_text().replace("x-channels: &ch [slack]\n", "").replace("*ch", "[slack]"))
    assert load_config(path).alerts.rules["b"].channels == ("slack",)


def test_a_non_utf8_config_names_line_and_column(tmp_path):
    code, err, path = check(tmp_path, b"monitoring:\n  update_frequency: 5\n  metrics_path: caf\xe9\n")
    assert code == 2
    assert err == f"Error: {path}:3: not UTF-8 text: byte 0xe9 at column 20 (save the file as UTF-8)\n"


def test_an_empty_config_says_the_defaults_apply_and_names_them_as_the_source(tmp_path):
    code, err, path = check(tmp_path, "")
    assert code == 0
    assert f"{path} (empty: the built-in defaults apply): OK" in err
    cfg = load_config(path)
    rule = cfg.alerts.rules["memory_usage"]  # an example rule of the shipped file
    assert cfg.where("alerts.rules.memory_usage.condition")[0] == "built-in defaults"
    assert rule.line
    assert cfg.where("alerts.rules.memory_usage") == ("built-in defaults", rule.line)


def test_rules_from_the_defaults_are_located_in_them_not_in_the_users_file(tmp_path):
    result = run_llamamon("alerts", "check", "--config", str(write_monitoring_only(tmp_path)), cwd=tmp_path)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert "built-in defaults:" in out
    assert "f.yaml:" not in out
    assert "no alerts: section" in result.stderr.decode()


def write_monitoring_only(tmp_path: Path) -> Path:
    path = tmp_path / "f.yaml"
    path.write_text("monitoring:\n  update_frequency: 5\n")
    return path


def test_every_mistake_is_reported_in_one_pass_in_file_order(tmp_path):
    code, err, path = check(
        tmp_path,
        """
        monitoring:
          update_frequency: -1
          thresholdz: 1
        alerts:
          channels:
            x: {type: slak}
          rules:
            r:
              condition: "loss > 1"
              severity: 3
              for: 5m
              channels: [y]
        """,
    )
    assert code == 2
    lines = err.removeprefix("Error: ").splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:3", "monitoring.update_frequency"],
        [f"{path}:4", "monitoring.thresholdz"],
        [f"{path}:7", "alerts.channels.x.type"],
        [f"{path}:11", "alerts.rules.r.severity"],
        [f"{path}:13", "alerts.rules.r.channels[0]"],
    ]


def test_every_bad_condition_is_reported(tmp_path):
    code, err, path = check(
        tmp_path,
        """
        alerts:
          rules:
            a: {condition: "loss >"}
            b: {condition: "los > 1"}
            c: {condition: "loss > 1"}
        """,
    )
    assert code == 2
    assert f"{path}:4: alerts.rules.a.condition: unexpected end" in err
    assert f"{path}:5: alerts.rules.b.condition: unknown metric 'los'" in err


def test_the_list_of_mistakes_is_bounded(tmp_path):
    rules = "".join(f"    r{i}: {{condition: 'loss > 1', severity: {i}}}\n" for i in range(30))
    code, err, _ = check(tmp_path, "alerts:\n  rules:\n" + rules)
    assert code == 2
    assert len(err.splitlines()) == 21
    assert err.splitlines()[-1] == "... and 10 more mistakes"


def test_an_unset_variable_in_a_channel_a_rule_uses_is_a_warning_and_strict_fails(tmp_path):
    text = """
    alerts:
      channels:
        x: {type: slack, webhook_url: "${LLAMAMON_TEST_UNSET_URL}"}
        y: {type: slack, webhook_url: "${LLAMAMON_TEST_UNSET_URL}"}
      rules:
        c: {condition: "loss > 1", channels: [x]}
      builtin: {memory_warning: false, memory_critical: false, gpu_underutilized: false, gpu_memory_high: false, gpu_xid_error: false,
        validation_loss_high: false, learning_rate_low: false, loss_plateau: false, train_loss_plateau: false,
        inference_latency_high: false,
        inference_timeouts: false, batch_queue_high: false, loss_not_finite: false, training_straggler: false}
    """
    env = {k: v for k, v in llamamon_env().items() if k != "LLAMAMON_TEST_UNSET_URL"}
    code, err, path = check(tmp_path, text, env=env)
    assert code == 0
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning == [
        f"warning: {path}:4: alerts.channels.x.webhook_url: ${{LLAMAMON_TEST_UNSET_URL}} is not set: "
        "x is off, so c cannot notify through it"
    ]  # y is used by no rule: nothing to say
    assert check(tmp_path, text, "--strict", env=env)[0] == 1
    env["LLAMAMON_TEST_UNSET_URL"] = "http://127.0.0.1:9/hook"
    code, err, _ = check(tmp_path, text, "--strict", env=env)
    assert code == 0
    assert "warning:" not in err
