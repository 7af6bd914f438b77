"""The issue's serving scenario end to end: `llamamon record` of a server that llamamon scrapes, whose queue
and latency break rules, and which crashes. Every alert it fired is resolved at the run's end on every
channel (a real webhook sink, a real SMTP server, a real Alertmanager), and `alerts test` agrees."""

from __future__ import annotations

import email
import json
import sys
import xml.etree.ElementTree as ET

import pytest
from loopback import HttpSink, SmtpServer, closed_port, wait_until

from tests.conftest import run_llamamon
from tests.test_channels_alertmanager import alertmanager, am_webhook_sink, listed  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

# A vLLM-named server: 10 requests finish between two scrapes, each taking 5 s; the queue jumps to 166 from
# the 3rd scrape on; it crashes once it has been scraped 10 times (counted, so a loaded machine changes nothing).
SERVER = """
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
scrapes = 0
crash = threading.Event()

def body():
    global scrapes
    scrapes += 1
    n = 10 * scrapes
    lines = ["# TYPE vllm:e2e_request_latency_seconds histogram"]
    for le, c in ((0.5, 0), (1.0, 0), (2.5, 0), (5.0, n), (10.0, n), ("+Inf", n)):
        lines.append(f'vllm:e2e_request_latency_seconds_bucket{{le="{le}",model_name="m"}} {c}')
    lines.append(f'vllm:e2e_request_latency_seconds_sum{{model_name="m"}} {5.0 * n}')
    lines.append(f'vllm:e2e_request_latency_seconds_count{{model_name="m"}} {n}')
    lines.append("# TYPE vllm:num_requests_waiting gauge")
    lines.append(f'vllm:num_requests_waiting{{model_name="m"}} {166 if scrapes >= 3 else 3}')
    if scrapes >= 10:
        crash.set()
    return ("\\n".join(lines) + "\\n").encode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        data = body()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
crash.wait(120)
time.sleep(0.2)  # the 10th answer goes out
sys.exit(3)
"""


def test_a_crashed_serving_run_resolves_every_alert_it_fired_on_every_channel(tmp_path, alertmanager):  # noqa: F811
    hook, mail = HttpSink(), SmtpServer()
    port = closed_port()
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "monitoring.yaml").write_text(
        f"""monitoring:
  update_frequency: 0.5
scrape: ["http://127.0.0.1:{port}/metrics"]
alerts:
  channels:
    hook: {{type: webhook, url: "{hook.url()}"}}
    mail: {{type: email, smtp_server: "127.0.0.1:{mail.port}", tls: "none", from_address: a@localhost,
            to_addresses: [b@localhost]}}
    am: {{type: alertmanager, url: "{alertmanager}"}}
  builtin:
    memory_warning: false
    memory_critical: false
    gpu_underutilized: false
    gpu_memory_high: false
  rules:
    queue_high:
      condition: batch_queue_size > 100
      for: 1s
      channels: [hook, mail, am]
    latency_high:
      condition: p95(inference_latency, 30s) > 1000
      channels: [hook, mail, am]
"""
    )
    try:
        done = run_llamamon(
            "record", "--no-gpu", "--interval", "0.5", "--", sys.executable, "server.py", str(port), cwd=tmp_path
        )
        assert done.returncode == 3, done.stderr.decode()  # the job's exit code
        run = json.loads(next((tmp_path / ".metrics" / "runs").glob("*.json")).read_text())["id"]

        sent = [(a["labels"]["alertname"], a["status"]) for r in hook.requests for a in r.json()["alerts"]]
        fired = {name for name, status in sent if status == "firing"}
        assert fired == {"queue_high", "latency_high"}, done.stderr.decode()
        for name in fired:  # each alert told once each way, the resolve last
            assert [s for n, s in sent if n == name][-1] == "resolved", sent

        subjects = [email.message_from_bytes(m.content)["Subject"] for m in mail.mails]
        for name in fired:
            told = [s for s in subjects if name in s]  # one mail may tell several alerts
            assert told, subjects
            assert " resolved: " in told[-1], subjects

        # Alertmanager lists only alerts that have not ended: nothing of the finished run is left.
        wait_until(lambda: not [a for a in listed(alertmanager) if a["labels"].get("run") == run], timeout=10)
    finally:
        hook.close()
        mail.close()

    junit = tmp_path / "alerts.xml"
    replay = run_llamamon("alerts", "test", "--latest", "--fail-on", "warning", "--junit", str(junit), cwd=tmp_path)
    assert replay.returncode == 1, replay.stderr.decode()  # the rules fired
    failures = [f.text or "" for f in ET.parse(junit).iter("failure")]
    assert len(failures) == 2
    assert all("resolved at -" not in text and "resolved at None" not in text for text in failures), failures


def test_a_failed_delivery_of_the_runs_last_alert_is_still_counted(tmp_path):
    """The job logs a bad loss and ends: the alert is evaluated after the last tick, its delivery fails, and
    notification_failures still reaches the store."""
    (tmp_path / "monitoring.yaml").write_text(
        f"""alerts:
  channels:
    hook: {{type: webhook, url: "http://127.0.0.1:{closed_port()}/hook", attempts: 1, timeout: 2s}}
  builtin: {{memory_warning: false, memory_critical: false, gpu_underutilized: false, gpu_memory_high: false}}
  rules:
    loss_exploded: {{condition: "loss > 100", channels: [hook]}}
"""
    )
    job = "import llamamon; llamamon.log({'loss': 1000.0}, step=1)"
    done = run_llamamon("record", "--no-gpu", "--", sys.executable, "-c", job, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert "FIRING" in done.stderr.decode()
    csv = run_llamamon("export", "csv", "--latest", cwd=tmp_path)
    assert csv.returncode == 0, csv.stderr.decode()
    failures = [line for line in csv.stdout.decode().splitlines() if ",notification_failures," in line]
    assert failures, csv.stdout.decode()
    assert float(failures[-1].split(",")[3]) >= 1.0, failures
