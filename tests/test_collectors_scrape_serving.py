"""Scraping serving metrics from a real prometheus_client HTTP server: renamed vLLM families and errors."""

from __future__ import annotations

import pytest

from llamamon.collectors.scrape import ScrapeCollector

prometheus_client = pytest.importorskip("prometheus_client", reason="prometheus_client is in the test extra")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry():
    """A fresh registry served over HTTP on loopback; yields (registry, url)."""
    reg = prometheus_client.CollectorRegistry()
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=reg)
    yield reg, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(10)


def catalog_samples(samples, metric):
    return [s for s in samples if s.metric == metric]


def test_vllm_serving_old_and_new_names_is_stored_once_from_the_new(registry):
    reg, url = registry
    Gauge, Histogram = prometheus_client.Gauge, prometheus_client.Histogram
    old_kv = Gauge("vllm:gpu_cache_usage_perc", "old", ["model_name"], registry=reg)
    new_kv = Gauge("vllm:kv_cache_usage_perc", "new", ["model_name"], registry=reg)
    buckets = (0.01, 0.05, 0.1)
    old_itl = Histogram("vllm:time_per_output_token_seconds", "old", ["model_name"], buckets=buckets, registry=reg)
    new_itl = Histogram("vllm:inter_token_latency_seconds", "new", ["model_name"], buckets=buckets, registry=reg)
    # Different values under the two names so the test can tell which one was kept.
    old_kv.labels("m").set(0.5)
    new_kv.labels("m").set(0.25)
    clock = Clock()
    collector = ScrapeCollector(url, timeout=5, clock=clock)
    first = collector.scrape()
    for _ in range(4):
        old_itl.labels("m").observe(0.08)
        new_itl.labels("m").observe(0.02)
    clock.now += 10
    second = collector.scrape()

    for samples in (first, second):
        assert [s.value for s in catalog_samples(samples, "kv_cache_usage")] == [0.25]
        # Both raw families are still stored under their own names.
        assert {"vllm_gpu_cache_usage_perc", "vllm_kv_cache_usage_perc"} <= {s.metric for s in samples}
    # Kept whole from the new name only (the old one's 80 ms observations would make the sum 0.32 s).
    assert not catalog_samples(second, "inter_token_latency")
    now = [s for s in second if s.time == clock.now]
    assert [round(s.value, 6) for s in catalog_samples(now, "inter_token_latency_sum")] == [0.08]
    assert [s.value for s in catalog_samples(now, "inter_token_latency_count")] == [4.0]


def test_old_vllm_names_alone_still_map(registry):
    reg, url = registry
    prometheus_client.Gauge("vllm:gpu_cache_usage_perc", "old", registry=reg).set(0.5)
    itl = prometheus_client.Histogram("vllm:time_per_output_token_seconds", "old", buckets=(0.1,), registry=reg)
    clock = Clock()
    collector = ScrapeCollector(url, timeout=5, clock=clock)
    collector.scrape()
    itl.observe(0.03)
    clock.now += 10
    second = collector.scrape()
    assert [s.value for s in catalog_samples(second, "kv_cache_usage")] == [0.5]
    now = [s for s in second if s.time == clock.now]
    assert [round(s.value, 6) for s in catalog_samples(now, "inter_token_latency_sum")] == [0.03]
    assert {dict(s.labels)["le"]: s.value for s in catalog_samples(now, "inter_token_latency_bucket")} == {
        "0.1": 1.0,
        "+Inf": 1.0,
    }


def test_tgi_failures_feed_error_rate(registry):
    reg, url = registry
    Counter = prometheus_client.Counter
    count = Counter("tgi_request_count", "all requests", registry=reg)
    success = Counter("tgi_request_success", "succeeded", registry=reg)
    failure = Counter("tgi_request_failure", "failed", ["err"], registry=reg)
    clock = Clock()
    collector = ScrapeCollector(url, timeout=5, clock=clock)
    count.inc(5)
    success.inc(5)
    assert catalog_samples(collector.scrape(), "error_rate") == []  # no interval yet

    count.inc(10)
    success.inc(7)
    failure.labels("validation").inc(2)
    failure.labels("overloaded").inc(1)
    clock.now += 10
    rates = catalog_samples(collector.scrape(), "error_rate")
    assert [s.value for s in rates] == [pytest.approx(3 / 10)]
    assert dict(rates[0].labels)["instance"].startswith("127.0.0.1:")

    count.inc(4)
    success.inc(4)
    clock.now += 10
    assert [s.value for s in catalog_samples(collector.scrape(), "error_rate")] == [0.0]

    clock.now += 10  # no request in the interval: no rate, rather than 0/0
    assert catalog_samples(collector.scrape(), "error_rate") == []


def test_vllm_aborts_feed_error_rate(registry):
    reg, url = registry
    success = prometheus_client.Counter(
        "vllm:request_success", "finished", ["model_name", "finished_reason"], registry=reg
    )
    clock = Clock()
    collector = ScrapeCollector(url, timeout=5, clock=clock)
    success.labels("m", "stop").inc(3)
    collector.scrape()
    success.labels("m", "stop").inc(6)
    success.labels("m", "length").inc(2)
    success.labels("m", "abort").inc(2)  # a series that appears in the interval: counted from zero
    clock.now += 10
    samples = collector.scrape()
    rates = catalog_samples(samples, "error_rate")
    assert [s.value for s in rates] == [pytest.approx(2 / 10)]
    assert dict(rates[0].labels)["model_name"] == "m"
    assert "finished_reason" not in dict(rates[0].labels)
    assert [s.value for s in catalog_samples(samples, "batch_throughput")] == [pytest.approx(10 / 10)]
