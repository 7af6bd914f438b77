"""The report says what the channels were told: a finished run's alerts resolved at its end, not "still firing"."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from conftest import llamamon_env, run_llamamon
from loopback import wait_until

JOB = """
import time, llamamon
for i in range(8):  # the queue is long until the job ends: a windowed condition still holds at its end
    llamamon.log(batch_queue_size=50.0 + i)
    time.sleep(0.25)
"""

CONFIG = """
alerts:
  channels:
    hook:
      type: webhook
      url: {url}
  builtin:
    batch_queue_high: false
  rules:
    queue_long:
      condition: max(batch_queue_size, 5m) > 10
      channels: [hook]
"""


def test_report_shows_resolved_at_the_run_end_what_the_channels_heard_resolve(tmp_path, sink):
    (tmp_path / "monitoring.yaml").write_text(CONFIG.format(url=sink.url()))
    (tmp_path / "job.py").write_text(JOB)
    env = llamamon_env(TZ="UTC")
    done = run_llamamon(
        "record", "--no-gpu", "--interval", "0.5", "--", sys.executable, "job.py", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr.decode()

    def alerts(status):
        return [a for r in sink.requests for a in r.json()["alerts"] if a["status"] == status]

    wait_until(lambda: alerts("resolved"))
    [told] = alerts("resolved")
    assert told["labels"]["alertname"] == "queue_long"
    [entry] = json.loads((tmp_path / ".metrics" / "alerts" / "state.json").read_text())["alerts"].values()
    assert entry["state"] == "resolved"
    run = json.loads(run_llamamon("runs", "--json", cwd=tmp_path, env=env).stdout)[0]

    report = run_llamamon("report", "--latest", "--markdown", "-o", "r.md", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr.decode()
    text = (tmp_path / "r.md").read_text()
    assert "still firing" not in text
    [row] = [line for line in text.splitlines() if "queue" in line and line.startswith("|")]
    resolved = datetime.fromtimestamp(entry["resolved_at"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"| {resolved} |" in row, (row, entry, run)
    assert told["endsAt"].startswith(resolved.replace(" ", "T", 1).removesuffix(" UTC"))
