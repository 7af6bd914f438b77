"""``llamamon alerts notify-test`` against real loopback servers (HTTP sink and SMTP)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from loopback import closed_port, wait_until

from llamamon.cli.notify import notify_test_command
from llamamon.errors import ChannelError, ConfigError

TOKEN_PATH = "/services/T0NOTIFY/B0NOTIFY/n0tifyS3CRET"


@pytest.fixture(autouse=True)
def _no_env_channels(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("SMTP_SERVER", raising=False)
    # Why: another test's CLI run may have set propagate=False on the llamamon logger.
    monkeypatch.setattr(logging.getLogger("llamamon"), "propagate", True)


def write_config(tmp_path, sink, smtp, refused_port=None):
    broken = (
        f"""
    broken_hook:
      type: webhook
      url: http://127.0.0.1:{refused_port}/x
      attempts: 2
      backoff: 10ms
"""
        if refused_port
        else ""
    )
    path = tmp_path / "monitoring.yaml"
    path.write_text(
        f"""\
alerts:
  channels:
    slack:
      webhook_url: http://127.0.0.1:{sink.port}{TOKEN_PATH}
      channel: "#ops"
    ops_hook:
      type: webhook
      url: http://127.0.0.1:{sink.port}/ops
    email:
      smtp_server: 127.0.0.1:{smtp.port}
      from_address: llamamon@box.example
      to_addresses: [ops@example.org]
{broken}"""
    )
    return path


def test_every_channel_gets_a_marked_test_notification(runner, tmp_path, sink, smtp):
    config = write_config(tmp_path, sink, smtp)
    result = runner.invoke(notify_test_command, ["--config", str(config)])

    assert result.exit_code == 0, result.output + str(result.exception)
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert any(line.startswith("ok     slack (slack) http://127.0.0.1:") for line in lines)
    assert any(line.startswith("ok     ops_hook (webhook)") for line in lines)
    assert any(line.startswith("ok     email (email) smtp 127.0.0.1:") for line in lines)
    assert "S3CRET" not in result.output

    by_path = {r.path: r.json() for r in sink.requests}
    slack = by_path[TOKEN_PATH]
    assert slack["text"].startswith("TEST notification: 1 firing: llamamon_test_notification")
    assert slack["attachments"][0]["title"] == "[TEST] [FIRING] info llamamon_test_notification"
    hook = by_path["/ops"]
    assert hook["alerts"][0]["labels"]["llamamon_test"] == "true"
    [mail] = smtp.mails
    assert b"TEST notification" in mail.content


def test_failed_channel_is_named_and_exits_1(runner, tmp_path, sink, smtp):
    config = write_config(tmp_path, sink, smtp, refused_port=closed_port())
    result = runner.invoke(notify_test_command, ["--config", str(config)])

    assert result.exit_code == 1
    assert isinstance(result.exception, ChannelError)
    assert str(result.exception) == "1 of 4 channel(s) failed: broken_hook"
    [failed] = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert re.fullmatch(
        r"FAILED broken_hook \(webhook\) http://127\.0\.0\.1:\d+/\*\*\*: "
        r"connection refused by http://127\.0\.0\.1:\d+/\*\*\* \(2 attempts\)",
        failed,
    )
    assert "delivery failed after 2 attempt(s)" in result.stderr
    assert len(sink.requests) == 2


def test_channel_option_selects_and_unknown_name_is_a_config_error(runner, tmp_path, sink, smtp):
    config = write_config(tmp_path, sink, smtp)
    result = runner.invoke(notify_test_command, ["--config", str(config), "--channel", "ops_hook", "--json"])
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)
    assert (report["channel"], report["ok"], report["attempts"]) == ("ops_hook", True, 1)
    assert [r.path for r in sink.requests] == ["/ops"]
    assert smtp.mails == []

    result = runner.invoke(notify_test_command, ["--config", str(config), "--channel", "ops_hok"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith(
        f"--channel: no channel named 'ops_hok' in {config} (did you mean \"ops_hook\"? configured: slack, ops_hook"
    )


def test_unset_variables_fail_with_the_reason(runner):
    # No monitoring.yaml here: the built-in defaults reference ${SLACK_WEBHOOK_URL} and ${SMTP_SERVER}.
    result = runner.invoke(notify_test_command, [])
    assert isinstance(result.exception, ChannelError)
    assert (
        "FAILED slack (slack) (not configured): not configured: alerts.channels.slack.webhook_url: "
        "environment variable SLACK_WEBHOOK_URL is not set" in result.stdout
    )
    assert "environment variable SMTP_SERVER is not set" in result.stdout


def test_notify_test_through_the_installed_cli(tmp_path, sink, smtp):
    """`llamamon alerts notify-test` as a user runs it: a real process, exit code from main()."""
    from conftest import run_llamamon

    write_config(tmp_path, sink, smtp)
    result = run_llamamon("alerts", "notify-test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    wait_until(lambda: len(sink.requests) >= 2)
    assert {r.path for r in sink.requests} >= {TOKEN_PATH, "/ops"}
    assert b"n0tifyS3CRET" not in result.stdout + result.stderr

    refused = write_config(tmp_path, sink, smtp, refused_port=closed_port())
    failed = run_llamamon("alerts", "notify-test", "--channel", "broken_hook", "--config", str(refused), cwd=tmp_path)
    assert failed.returncode == 1
    assert b"Traceback" not in failed.stderr


def test_alerts_check_reports_a_bad_channel_option_with_its_line(tmp_path):
    from conftest import run_llamamon

    (tmp_path / "monitoring.yaml").write_text(
        "alerts:\n  channels:\n    hook:\n      type: webhook\n      url: http://127.0.0.1:9/x\n      headerz: {}\n"
    )
    result = run_llamamon("alerts", "check", cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.decode().strip()
    assert line.startswith("Error: monitoring.yaml:6: alerts.channels.hook.headerz: "), line
    assert 'did you mean "headers"' in line
    assert "\n" not in line
