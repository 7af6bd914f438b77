"""Scraping a real prometheus_client HTTP server (in a subprocess) that speaks vLLM's metric names."""

from __future__ import annotations

import http.server
import logging
import math
import subprocess
import sys
import threading
import time

import pytest

from llamamon.catalog import BY_NAME
from llamamon.collectors import scrape as scrape_module
from llamamon.collectors.scrape import ScrapeCollector
from llamamon.rules.histogram import bucket_quantile

pytest.importorskip("prometheus_client", reason="prometheus_client is in the test extra")

APP = r"""
import sys
from prometheus_client import Counter, Gauge, Histogram, start_http_server

waiting = Gauge("vllm:num_requests_waiting", "queued", ["model_name"])
cache = Gauge("vllm:gpu_cache_usage_perc", "old name of kv_cache_usage_perc", ["model_name"])
tokens = Counter("vllm:generation_tokens", "generated tokens", ["model_name"])
success = Counter("vllm:request_success", "finished", ["model_name", "finished_reason"])
hits = Counter("vllm:prefix_cache_hits", "hits", ["model_name"])
queries = Counter("vllm:prefix_cache_queries", "queries", ["model_name"])
e2e = Histogram("vllm:e2e_request_latency_seconds", "latency", ["model_name"], buckets=(0.1, 0.25, 0.5, 1.0, 2.5))
itl = Histogram("vllm:time_per_output_token_seconds", "old ITL name", ["model_name"], buckets=(0.01, 0.05, 0.1))
jobs = Counter("app_jobs", "a plain app counter")
temp = Gauge("app_temperature_celsius", "a plain app gauge", ["room"])
m = "tiny-llm"
server, thread = start_http_server(int(sys.argv[1]), addr="127.0.0.1")
print(server.server_port, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "waiting":
        waiting.labels(m).set(float(args[0]))
    elif cmd == "cache":
        cache.labels(m).set(float(args[0]))
    elif cmd == "tokens":
        tokens.labels(m).inc(float(args[0]))
    elif cmd == "success":
        success.labels(m, args[0]).inc(float(args[1]))
    elif cmd == "prefix":
        hits.labels(m).inc(float(args[0])); queries.labels(m).inc(float(args[1]))
    elif cmd == "observe":
        for _ in range(int(args[1])):
            e2e.labels(m).observe(float(args[0]))
    elif cmd == "itl":
        itl.labels(m).observe(float(args[0]))
    elif cmd == "app":
        jobs.inc(); temp.labels("lab").set(21.5)
    print("ok", flush=True)
"""


class PromApp:
    def __init__(self, tmp_path) -> None:
        self.script = tmp_path / "prom_app.py"
        self.script.write_text(APP)
        self.start(0)

    def start(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.proc.stdout.readline())

    def send(self, *commands: str) -> None:
        for command in commands:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()

    def restart(self) -> None:
        self.stop()
        self.start(self.port)


@pytest.fixture
def app(tmp_path):
    started = PromApp(tmp_path)
    yield started
    started.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def by_metric(samples):
    out = {}
    for s in samples:
        out.setdefault(s.metric, []).append(s)
    return out


def buckets(samples, at=None):
    """le -> count of the kept histogram's bucket samples at ``at`` (default: the scrape's own, latest, time)."""
    kept = samples["inference_latency_bucket"]
    at = max(s.time for s in kept) if at is None else at
    return {dict(s.labels)["le"]: s.value for s in kept if s.time == at}


def latest(samples, metric):
    found = samples[metric]
    return [s for s in found if s.time == max(x.time for x in found)]


def test_every_mapping_target_is_in_the_catalog():
    targets = [
        *(m for m, _ in scrape_module.GAUGES.values()),
        *scrape_module.COUNTER_RATES.values(),
        *scrape_module.HISTOGRAMS_KEPT.values(),
        *scrape_module.HISTOGRAM_SUM_RATES.values(),
        *scrape_module.COUNTER_RATIOS,
    ]
    assert [t for t in targets if t not in BY_NAME] == []


def test_bucket_quantile_matches_prometheus():
    inf = float("inf")
    buckets = [(0.1, 0.0), (0.25, 10.0), (0.5, 10.0), (1.0, 20.0), (inf, 20.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.25)
    assert bucket_quantile(0.25, buckets) == pytest.approx(0.175)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9.8 / 10)
    assert bucket_quantile(0.99, [(1.0, 0.0), (inf, 5.0)]) == 1.0  # in +Inf: the highest finite bound
    assert math.isnan(bucket_quantile(0.5, [(1.0, 0.0), (inf, 0.0)]))  # no observations
    assert math.isnan(bucket_quantile(0.5, [(1.0, 3.0)]))  # no +Inf bucket
    assert bucket_quantile(0.5, [(inf, 4.0), (1.0, 4.0), (1.0, 0.0)]) == pytest.approx(0.5)  # coalesced, sorted
    assert bucket_quantile(0.5, [(1.0, 4.0), (2.0, 2.0), (inf, 4.0)]) == pytest.approx(0.5)  # forced monotonic


def test_vllm_series_map_onto_the_catalog_with_restart(tmp_path, app):
    clock = Clock()
    collector = ScrapeCollector(f"http://127.0.0.1:{app.port}/metrics", timeout=5, clock=clock)
    app.send("waiting 3", "cache 0.25", "app")
    first = by_metric(collector.scrape())
    assert first["batch_queue_size"][0].value == 3.0
    assert dict(first["batch_queue_size"][0].labels) == {"instance": f"127.0.0.1:{app.port}", "model_name": "tiny-llm"}
    assert first["kv_cache_usage"][0].value == 0.25  # renamed gpu_cache_usage_perc -> kv_cache_usage
    assert first["app_temperature_celsius"][0].labels == (("instance", f"127.0.0.1:{app.port}"), ("room", "lab"))
    assert first["app_jobs_total"][0].value == 1.0
    assert "token_throughput" not in first  # a rate needs two scrapes

    app.send(
        "tokens 500",
        "success stop 8",
        "success length 2",
        "prefix 30 100",
        "observe 0.2 10",
        "observe 0.8 10",
        "itl 0.02",
        "itl 0.04",
        "waiting 7",
    )
    clock.now += 10
    second = by_metric(collector.scrape())
    assert second["token_throughput"][0].value == pytest.approx(50.0)
    (throughput,) = second["batch_throughput"]  # finished_reason summed
    assert throughput.value == pytest.approx(1.0)
    assert second["cache_hit_rate"][0].value == pytest.approx(0.3)
    assert second["batch_queue_size"][0].value == 7.0
    # The latency histogram is kept whole: cumulative buckets (le as the server wrote it), sum and count,
    # in seconds, counted from the run's first scrape (this labelled series appeared since: all of it).
    assert "inference_latency" not in second  # no per-interval quantiles
    assert buckets(second) == {"0.1": 0, "0.25": 10, "0.5": 10, "1.0": 20, "2.5": 20, "+Inf": 20}
    # It was 0 at the last scrape, which zeros there say, so a window's increase counts its first requests.
    assert set(buckets(second, at=clock.now - 10).values()) == {0.0}
    (total,), (count,) = latest(second, "inference_latency_sum"), latest(second, "inference_latency_count")
    assert (total.value, count.value) == (pytest.approx(10.0), 20.0)
    assert dict(count.labels) == {"instance": f"127.0.0.1:{app.port}", "model_name": "tiny-llm"}
    assert {dict(s.labels)["le"] for s in second["inference_latency_bucket"]} == set(buckets(second))
    # Inter-token latency (the old vLLM name alone) is an upstream histogram too: kept whole, in seconds.
    assert "inter_token_latency" not in second
    (itl_sum,), (itl_count,) = latest(second, "inter_token_latency_sum"), latest(second, "inter_token_latency_count")
    assert (itl_sum.value, itl_count.value) == (pytest.approx(0.06), 2.0)  # 20 ms and 40 ms
    itl_buckets = {dict(s.labels)["le"]: s.value for s in latest(second, "inter_token_latency_bucket")}
    assert itl_buckets == {"0.01": 0, "0.05": 2, "0.1": 2, "+Inf": 2}

    # Next interval: only new observations count.
    app.send("observe 2.0 4")
    clock.now += 10
    third = by_metric(collector.scrape())
    assert buckets(third) == {"0.1": 0, "0.25": 10, "0.5": 10, "1.0": 20, "2.5": 24, "+Inf": 24}
    assert third["token_throughput"][0].value == 0.0

    # The server restarts on the same port: counters start again from zero.
    app.restart()
    app.send("tokens 20", "observe 0.2 5")
    clock.now += 10
    fourth = by_metric(collector.scrape())
    assert fourth["token_throughput"][0].value == pytest.approx(2.0)
    # ... and the histogram's per-run counts go on from where they were: a restart adds all the new values.
    assert buckets(fourth) == {"0.1": 0, "0.25": 15, "0.5": 15, "1.0": 25, "2.5": 29, "+Inf": 29}
    assert latest(fourth, "inference_latency_count")[0].value == 29.0
    assert latest(fourth, "inference_latency_sum")[0].value == pytest.approx(10.0 + 8.0 + 1.0)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    delay = 0.0

    def do_GET(self):
        if self.delay:
            time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_server():
    servers = []

    def start(body: bytes, delay: float = 0.0) -> str:
        handler = type("H", (_Handler,), {"body": body, "delay": delay})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("garbage", "not Prometheus text"), ("slow", "timed out"), ("down", "unreachable")],
)
def test_bad_endpoints_warn_once_and_recording_goes_on(odd_server, caplog, kind, expected):
    if kind == "garbage":
        url = odd_server(b"this {is not prometheus\n")
    elif kind == "slow":
        url = odd_server(b"up 1\n", delay=1.0)
    else:
        server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        server.server_close()  # nothing listens there now
    collector = ScrapeCollector(url, timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="llamamon.collectors"):
        assert collector.scrape() == []
        assert collector.scrape() == []
    warnings = [m for m in caplog.messages if url in m]
    assert len(warnings) == 1
    assert expected in warnings[0]


def test_endpoint_that_recovers_is_scraped_again(odd_server, caplog):
    url = odd_server(b"# TYPE up gauge\nup 1\n")
    collector = ScrapeCollector(url, timeout=2)
    (sample,) = collector.scrape()
    assert (sample.metric, sample.value) == ("up", 1.0)


def test_rejects_non_http_urls():
    with pytest.raises(ValueError, match="http"):
        ScrapeCollector("file:///etc/passwd")


def test_kept_histogram_counts_from_the_runs_first_scrape():
    from llamamon.collectors.scrape import ScrapeState
    from llamamon.prometheus.text import parse

    def text(low: int, total: int, seconds: float) -> str:
        return (
            "# TYPE vllm:e2e_request_latency_seconds histogram\n"
            f'vllm:e2e_request_latency_seconds_bucket{{le="1.0"}} {low}\n'
            f'vllm:e2e_request_latency_seconds_bucket{{le="+Inf"}} {total}\n'
            f"vllm:e2e_request_latency_seconds_sum {seconds}\n"
            f"vllm:e2e_request_latency_seconds_count {total}\n"
        )

    state = ScrapeState()
    first = by_metric(state.convert(parse(text(100, 150, 90.5)), 10.0))  # a server that served before the run
    assert buckets(first) == {"1.0": 0, "+Inf": 0}
    assert (first["inference_latency_sum"][0].value, first["inference_latency_count"][0].value) == (0.0, 0.0)
    later = by_metric(state.convert(parse(text(103, 155, 96.0)), 20.0))
    assert buckets(later) == {"1.0": 3, "+Inf": 5}
    assert later["inference_latency_sum"][0].value == pytest.approx(5.5)


def test_kept_histogram_restart_seen_after_a_scrape_without_the_series():
    """A restarted server serves a labelled histogram again only from its first request on (prometheus_client
    creates a labelled series on first use), so the scrape right after the restart has none: the restart
    must still be seen when the series comes back with lower counts, and the run's counts go on."""
    from llamamon.collectors.scrape import ScrapeState
    from llamamon.prometheus.text import parse

    def text(low: int, total: int, seconds: float) -> str:
        if total == 0:
            return "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        name = "vllm:e2e_request_latency_seconds"
        return (
            f"# TYPE {name} histogram\n"
            f'{name}_bucket{{model_name="m",le="1.0"}} {low}\n'
            f'{name}_bucket{{model_name="m",le="+Inf"}} {total}\n'
            f'{name}_sum{{model_name="m"}} {seconds}\n'
            f'{name}_count{{model_name="m"}} {total}\n'
        )

    state = ScrapeState()
    state.convert(parse(text(100, 150, 90.5)), 10.0)  # served before the run
    state.convert(parse(text(103, 155, 96.0)), 20.0)  # the run: 3 fast, 2 slow
    assert "inference_latency_count" not in by_metric(state.convert(parse(text(0, 0, 0.0)), 30.0))  # restarted
    back = by_metric(state.convert(parse(text(2, 4, 4.0)), 40.0))  # its first 4 requests
    assert buckets(back) == {"1.0": 5, "+Inf": 9}
    assert back["inference_latency_count"][0].value == 9
    assert back["inference_latency_sum"][0].value == pytest.approx(5.5 + 4.0)
    more = by_metric(state.convert(parse(text(3, 6, 7.0)), 50.0))
    assert buckets(more) == {"1.0": 6, "+Inf": 11}
