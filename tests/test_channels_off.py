"""A channel whose ``${VAR}``s are unset is off: ``record`` says so once at the start and sends nothing to
it (no "cannot send" per alert, no failed deliveries counted); llamamon's own notification_failures, when a
channel is on and does fail, are not shown in the report as a metric the job logged; validation results
(``eval_accuracy``) sit with the validation loss, not under "Other metrics".

All through a real ``llamamon record`` subprocess and the real report.
"""

from __future__ import annotations

import re
import sys

import polars as pl
from loopback import closed_port

from llamamon.store.reader import scan
from tests.conftest import llamamon_env, run_llamamon

# Validation over the built-in validation_loss_max (2.0) from the first evaluation: validation_loss_high
# fires and resolves at the end; eval_accuracy and a metric of the job's own ride along.
JOB = """
import json, time
for step in range(1, 13):
    print(json.dumps({"step": step, "loss": 5.0 - step / 10, "my_queue_depth": step % 4}), flush=True)
    if step % 3 == 0:
        print(json.dumps({"step": step, "eval_loss": 4.5, "eval_accuracy": step / 20}), flush=True)
    time.sleep(0.25)
"""

UNSET = ("SLACK_WEBHOOK_URL", "SMTP_SERVER")


def record(tmp_path, *options: str):
    env = llamamon_env()
    for name in UNSET:
        env.pop(name, None)
    (tmp_path / "job.py").write_text(JOB)
    result = run_llamamon(
        "record", "--interval", "0.2", "--no-gpu", *options, "--", sys.executable, "job.py", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stderr.decode(), scan(tmp_path / ".metrics").collect()


def report(tmp_path) -> str:
    env = llamamon_env()
    done = run_llamamon("report", "--latest", "-o", "r.html", cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return (tmp_path / "r.html").read_text()


def table(html: str, title: str) -> str | None:
    start = html.find(f"<h3>{title}</h3>")
    return None if start < 0 else html[start : html.index("</table>", start)]


def test_the_builtin_configs_unset_channels_are_off_said_once_and_nothing_is_counted_as_failed(tmp_path):
    stderr, rows = record(tmp_path)
    assert re.search(r"alert FIRING warning validation_loss_high", stderr)  # there was something to send
    assert "cannot send" not in stderr
    off = [line for line in stderr.splitlines() if " is off: " in line]
    assert off == [
        "llamamon: email channel 'email' is off: SMTP_SERVER is not set (alerts.channels.email.smtp_server);"
        " nothing is sent to it",
        "llamamon: slack channel 'slack' is off: SLACK_WEBHOOK_URL is not set (alerts.channels.slack.webhook_url);"
        " nothing is sent to it",
    ]
    assert stderr.index(" is off: ") < stderr.index("recording to")  # at the start, before the job runs
    assert rows.filter(pl.col("metric") == "notification_failures").height == 0

    html = report(tmp_path)
    validation = table(html, "Validation metrics")
    assert validation is not None
    assert "eval_accuracy" in validation
    assert "validation_loss" in validation
    other = table(html, "Other metrics the job logged")
    assert other is not None
    assert "my_queue_depth" in other
    assert "eval_accuracy" not in other
    assert rows.filter(pl.col("metric") == "eval_accuracy")["group"].unique().to_list() == ["training"]


def test_failed_deliveries_are_llamamons_not_the_jobs(tmp_path):
    (tmp_path / "monitoring.yaml").write_text(
        "alerts:\n"
        "  channels:\n"
        f"    hook: {{type: webhook, url: 'http://127.0.0.1:{closed_port()}/x', attempts: 1, timeout: 1}}\n"
    )
    stderr, rows = record(tmp_path)
    assert " is off: " not in stderr, stderr
    assert "alert FIRING" in stderr, stderr
    failures = rows.filter(pl.col("metric") == "notification_failures")
    # The channel is on: its counter is stored for llamamon's own use (the alert fires at the job's end, so the
    # failed delivery itself comes after the last tick), zeros included, in the store's custom group.
    assert failures.height > 0
    assert failures["group"].unique().to_list() == ["custom"]
    html = report(tmp_path)
    other = table(html, "Other metrics the job logged")
    assert other is not None
    assert "my_queue_depth" in other
    assert "notification_failures" not in other
    assert "notification_failures" not in html  # nor charted or tabled anywhere else as a metric of the run
