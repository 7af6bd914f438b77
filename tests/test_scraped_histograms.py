"""Issue 22 point 2 end to end: a scraped latency histogram is kept whole, and its quantiles are the server's.

A real prometheus_client server with vLLM's latency histogram is fed known latencies while `llamamon
record` scrapes it. Then: real Prometheus, scraping the server and llamamon's .prom file (through
node_exporter), gives the same ``histogram_quantile`` on both, equal to the quantile of the server's own
buckets; `alerts test` fires the p95 rule once (not once per quantile label); the report's p95 latency is
that quantile, not a p95 over time of per-interval p99s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamamon.prometheus.text import parse
from llamamon.report.dashboards.values import format_value, unit_of
from llamamon.rules.histogram import bucket_quantile
from tests.conftest import llamamon_env, run_llamamon
from tests.test_prometheus_tools import _stop, node_exporter, query, start_prometheus, wait_for  # noqa: F401

pytest.importorskip("prometheus_client", reason="prometheus_client is in the test extra")
pytestmark = pytest.mark.integration

BOUNDS = (0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)
APP = f"""
import sys
from prometheus_client import Gauge, Histogram, start_http_server

e2e = Histogram("vllm:e2e_request_latency_seconds", "latency", ["model_name"], buckets={BOUNDS!r})
waiting = Gauge("vllm:num_requests_waiting", "queued", ["model_name"])
server, thread = start_http_server(0, addr="127.0.0.1")
print(server.server_port, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "waiting":
        waiting.labels("m").set(float(args[0]))
    elif cmd == "observe":
        for _ in range(int(args[1])):
            e2e.labels("m").observe(float(args[0]))
    print("ok", flush=True)
"""
# 40 requests: a slow tail (the run had p95 14.55 s and a report saying 16.2 s)
LATENCIES = ((0.3, 20), (3.0, 10), (12.0, 6), (25.0, 4))
# The job: runs until the test is done with Prometheus (a finished run's file leaves the textfile folder).
JOB = "import os, time\nfor _ in range(600):\n    if os.path.exists('done'):\n        break\n    time.sleep(0.1)\n"


def expected(q: float) -> float:
    """histogram_quantile on the server's buckets, counted here from the latencies fed (seconds)."""
    cumulative = [(b, float(sum(n for v, n in LATENCIES if v <= b))) for b in (*BOUNDS, float("inf"))]
    return bucket_quantile(q, cumulative)


def send(app: subprocess.Popen[str], line: str) -> None:
    assert app.stdin is not None
    assert app.stdout is not None
    app.stdin.write(line + "\n")
    app.stdin.flush()
    assert app.stdout.readline().strip() == "ok"


def test_scraped_latency_quantiles_are_the_servers_in_prometheus_rules_and_report(tmp_path, node_exporter):  # noqa: F811
    ne_address, folder = node_exporter
    app = subprocess.Popen([sys.executable, "-c", APP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen] = [app]
    try:
        assert app.stdout is not None
        port = int(app.stdout.readline())
        send(app, "waiting 1")
        (tmp_path / "job.py").write_text(JOB)
        (tmp_path / "monitoring.yaml").write_text(
            f"""monitoring:
  update_frequency: 0.5
  textfile_dir: {folder}
scrape: ["http://127.0.0.1:{port}/metrics"]
alerts:
  builtin: {{memory_warning: false, memory_critical: false, gpu_underutilized: false, gpu_memory_high: false}}
  rules:
    inference_latency_high:
      condition: p95(inference_latency, 5m) > 10s
      for: 0s
"""
        )
        record = subprocess.Popen(
            [sys.executable, "-m", "llamamon", "record", "--no-gpu", "--", sys.executable, "job.py"],
            cwd=tmp_path,
            env=llamamon_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(record)

        def scraped() -> Path | None:  # the run's file once llamamon has scraped the server
            return next((p for p in folder.glob("*.prom") if "llamamon_batch_queue_size" in p.read_text()), None)

        prom = wait_for(scraped, "record's first scrape")
        (active,) = {f.name: f for f in parse(prom.read_text())}["llamamon_run_active"].points
        run = dict(active.labels)["run"]
        for value, n in LATENCIES:
            send(app, f"observe {value} {n}")

        config = (
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: vllm\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            f"  - job_name: node\n    static_configs:\n      - targets: ['{ne_address}']\n"
        )
        server, base = start_prometheus(tmp_path / "prometheus", config)
        ours = f'llamamon_inference_latency_seconds_bucket{{run="{run}"}}'
        # (the name as Prometheus has it: some prometheus_client versions write the colon as "_")
        theirs = '{__name__=~"vllm.e2e_request_latency_seconds_bucket", job="vllm"}'
        try:

            def both_counted() -> bool:
                counts = [
                    query(base, f'llamamon_inference_latency_seconds_count{{run="{run}"}}'),
                    query(base, '{__name__=~"vllm.e2e_request_latency_seconds_count", job="vllm"}'),
                ]
                return all(len(c) == 1 and float(c[0]["value"][1]) == 40 for c in counts)

            wait_for(both_counted, "Prometheus to see all 40 requests on both", timeout=30)
            for q in (0.5, 0.95, 0.99):
                (mine,) = query(base, f"histogram_quantile({q}, {ours})")
                (server_side,) = query(base, f"histogram_quantile({q}, {theirs})")
                assert float(mine["value"][1]) == pytest.approx(float(server_side["value"][1]), rel=1e-12)
                assert float(mine["value"][1]) == pytest.approx(expected(q), rel=1e-12)
            (total,) = query(base, f'llamamon_inference_latency_seconds_sum{{run="{run}"}}')
            assert float(total["value"][1]) == pytest.approx(sum(v * n for v, n in LATENCIES))
        finally:
            _stop(server)
        time.sleep(1.0)  # a few more scrapes into the store
        (tmp_path / "done").write_text("")
        _out, err = record.communicate(timeout=60)
        assert record.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    p95_ms = expected(0.95) * 1000
    assert p95_ms > 10_000  # the rule's threshold: it fires
    replay = run_llamamon("alerts", "test", "--json", "--fail-on", "critical", cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr.decode()
    alerts = [a for a in json.loads(replay.stdout) if a["rule"] == "inference_latency_high"]
    assert len(alerts) == 1, alerts  # one page per incident, not one per quantile label
    (alert,) = alerts
    assert "quantile" not in alert["labels"]
    assert "le" not in alert["labels"]
    assert alert["labels"]["model_name"] == "m"
    assert alert["peak"] == pytest.approx(p95_ms, rel=1e-9)  # histogram_quantile over the 5m window, in ms

    report = run_llamamon("report", "--markdown", "-o", "report.md", cwd=tmp_path)
    assert report.returncode == 0, report.stderr.decode()
    lines = [line for line in (tmp_path / "report.md").read_text().splitlines() if "p95 latency" in line]
    assert lines, (tmp_path / "report.md").read_text()
    assert format_value(p95_ms, unit_of("inference_latency")) in lines[0], lines
    # The HTML's latency histogram is the server's buckets, and its note says so (not the 1.5 x p95 cap).
    html = run_llamamon("report", "--html", "-o", "report.html", cwd=tmp_path)
    assert html.returncode == 0, html.stderr.decode()
    page = (tmp_path / "report.html").read_text()
    assert "Bars are the server&#39;s buckets" in page or "Bars are the server's buckets" in page
    assert "1.5 × p95" not in page
