"""The golden /metrics files (tests/goldens/metrics, one per engine and version) through llamamon.

Each golden is written from its engine's own metric definitions (its header names the file and commit).
A loopback server serves the golden's earlier self (counters and histograms at half) and then the golden;
every llamamon metric the engine feeds is checked against the golden's own numbers, and then end to end:
``record --scrape`` -> store -> the report's Inference dashboard -> ``export prometheus`` through promtool.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from llamamon.catalog import BY_NAME
from llamamon.collectors.scrape import ScrapeCollector
from llamamon.prometheus.text import parse
from tests.conftest import require_binary, run_llamamon
from tests.goldens_server import MetricsServer, earlier, golden, value

ELAPSED = 10.0  # seconds between the two scrapes (injected clock)
Expect = Callable[[str], float]  # the golden's text -> the expected value


def rate(sample: str, **labels: str) -> Expect:
    """A counter rate: half the golden's value arrived in ELAPSED seconds."""
    return lambda text: value(text, sample, **labels) * 0.5 / ELAPSED


def ratio(num: str, den: str, **labels: str) -> Expect:
    return lambda text: value(text, num, **labels) / value(text, den)


def half(sample: str) -> Expect:
    """A kept histogram's count or sum since the run's first scrape."""
    return lambda text: value(text, sample) * 0.5


def const(x: float) -> Expect:
    return lambda text: x


VLLM_COMMON: dict[str, Expect] = {
    "requests_running": const(14),
    "batch_queue_size": const(3),
    "kv_cache_usage": const(0.6184),
    "token_throughput": rate("vllm:generation_tokens_total"),
    "batch_throughput": rate("vllm:request_success_total"),
    "error_rate": ratio("vllm:request_success_total", "vllm:request_success_total", finished_reason="abort"),
    "preemption_rate": rate("vllm:num_preemptions_total"),
    "inference_latency_count": half("vllm:e2e_request_latency_seconds_count"),
    "inference_latency_sum": half("vllm:e2e_request_latency_seconds_sum"),
    "time_to_first_token_count": half("vllm:time_to_first_token_seconds_count"),
    "time_to_first_token_sum": half("vllm:time_to_first_token_seconds_sum"),
}
EXPECTED: dict[str, dict[str, Expect]] = {
    "vllm-0.6": {
        **VLLM_COMMON,
        "cache_hit_rate": const(0.4217),  # the V0 gauge
        "inter_token_latency_count": half("vllm:time_per_output_token_seconds_count"),
        "inter_token_latency_sum": half("vllm:time_per_output_token_seconds_sum"),
    },
    "vllm-0.8": {
        **VLLM_COMMON,
        "cache_hit_rate": ratio("vllm:gpu_prefix_cache_hits_total", "vllm:gpu_prefix_cache_queries_total"),
        "inter_token_latency_count": half("vllm:time_per_output_token_seconds_count"),
        "inter_token_latency_sum": half("vllm:time_per_output_token_seconds_sum"),
    },
    "vllm-v1": {
        **VLLM_COMMON,
        "cache_hit_rate": ratio("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
        "inter_token_latency_count": half("vllm:inter_token_latency_seconds_count"),
        "inter_token_latency_sum": half("vllm:inter_token_latency_seconds_sum"),
        "request_time_per_output_token_count": half("vllm:request_time_per_output_token_seconds_count"),
        "request_time_per_output_token_sum": half("vllm:request_time_per_output_token_seconds_sum"),
        "server_flops_per_gpu": rate("vllm:estimated_flops_per_gpu_total"),
        "server_read_bytes_per_gpu": rate("vllm:estimated_read_bytes_per_gpu_total"),
        "server_write_bytes_per_gpu": rate("vllm:estimated_write_bytes_per_gpu_total"),
    },
    "sglang": {
        "requests_running": const(22),
        "batch_queue_size": const(5),
        "kv_cache_usage": const(0.71),
        "cache_hit_rate": const(0.38),
        "token_throughput": const(1843.6),
        "batch_throughput": rate("sglang:num_requests_total"),
        "inter_token_latency_count": half("sglang:inter_token_latency_seconds_count"),
        "inter_token_latency_sum": half("sglang:inter_token_latency_seconds_sum"),
        "inference_latency_count": half("sglang:e2e_request_latency_seconds_count"),
        "inference_latency_sum": half("sglang:e2e_request_latency_seconds_sum"),
        "time_to_first_token_count": half("sglang:time_to_first_token_seconds_count"),
        "time_to_first_token_sum": half("sglang:time_to_first_token_seconds_sum"),
    },
    "llamacpp": {
        "requests_running": const(3),
        "batch_queue_size": const(1),
        "token_throughput": rate("llamacpp:tokens_predicted_total"),
        # reused / (reused + processed) prompt tokens: the counters count the two apart
        "cache_hit_rate": lambda text: (
            value(text, "llamacpp:prompt_tokens_cached_total")
            / (value(text, "llamacpp:prompt_tokens_cached_total") + value(text, "llamacpp:prompt_tokens_total"))
        ),
    },
    "tgi": {
        "requests_running": const(16),
        "batch_queue_size": const(4),
        "batch_throughput": rate("tgi_request_success"),
        "error_rate": ratio("tgi_request_failure", "tgi_request_count"),
        "token_throughput": lambda text: value(text, "tgi_request_generated_tokens_sum") * 0.5 / ELAPSED,
        # TGI's per-request mean (inference time / generated tokens), not an inter-token latency.
        "request_time_per_output_token_count": half("tgi_request_mean_time_per_token_duration_count"),
        "request_time_per_output_token_sum": half("tgi_request_mean_time_per_token_duration_sum"),
        "inference_latency_count": half("tgi_request_duration_count"),
        "inference_latency_sum": half("tgi_request_duration_sum"),
    },
}
# What each engine does not provide, so that a mapping gained by accident shows up here too.
ABSENT = {
    "tgi": ("time_to_first_token_count", "cache_hit_rate", "kv_cache_usage", "inter_token_latency_count"),
    "llamacpp": (
        "kv_cache_usage",
        "inference_latency_count",
        "time_to_first_token_count",
        "inter_token_latency_count",
    ),
}
GOLDENS = sorted(EXPECTED)


@pytest.fixture
def served(request):
    text = golden(request.param)
    server = MetricsServer([earlier(text), text])
    yield request.param, text, server.url
    server.close()


def catalog_values(samples) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for s in samples:
        base = s.metric.removesuffix("_count").removesuffix("_sum")
        if base in BY_NAME:
            found.setdefault(s.metric, []).append(s.value)
    return found


@pytest.mark.parametrize("served", GOLDENS, indirect=True)
def test_every_mapped_metric_comes_from_the_goldens_series(served):
    name, text, url = served
    clock = iter([1000.0, 1000.0 + ELAPSED])
    collector = ScrapeCollector(url, timeout=5, clock=lambda: next(clock))
    collector.scrape()
    got = catalog_values(collector.scrape())
    expected = {metric: want(text) for metric, want in EXPECTED[name].items()}
    # One series per metric (a renamed family and its new name are not both mapped), equal to the golden's.
    assert {m: got.get(m) for m in expected} == {m: [pytest.approx(v, rel=1e-9)] for m, v in expected.items()}
    assert [m for m in ABSENT.get(name, ()) if m in got] == []


JOB = "import time; time.sleep(2.2)"
PANELS = {
    "inference_latency": "Request latency",
    "time_to_first_token": "Time to first token",
    "inter_token_latency": "Inter-token latency",
    "request_time_per_output_token": "Time per output token, per request",
}


@pytest.mark.integration
@pytest.mark.parametrize("served", GOLDENS, indirect=True)
def test_record_scrape_to_report_and_promtool_checked_export(served, tmp_path):
    name, _text, url = served
    promtool = require_binary("promtool")
    (tmp_path / "monitoring.yaml").write_text("monitoring:\n  update_frequency: 0.5\n")
    recorded = run_llamamon("record", "--no-gpu", "--scrape", url, "--", sys.executable, "-c", JOB, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr.decode()

    metrics = sorted({m.removesuffix("_count").removesuffix("_sum") for m in EXPECTED[name]})
    html = run_llamamon("report", "--html", "-o", "report.html", cwd=tmp_path)
    assert html.returncode == 0, html.stderr.decode()
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    summary = page[page.index("Inference summary") :]
    summary = summary[: summary.index("</table>")]
    gauges = [m for m in metrics if m not in PANELS]
    assert [m for m in gauges if f">{m}<" not in summary] == []
    # Histograms are panels with the server's quantiles, not summary rows.
    assert [m for m in metrics if m in PANELS and f'alt="{PANELS[m]}: p50 ' not in page] == []

    exported = run_llamamon("export", "prometheus", "-o", "run.prom", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()
    prom = (tmp_path / "run.prom").read_text(encoding="utf-8")
    families = {f.name for f in parse(prom)}
    assert [m for m in metrics if BY_NAME[m].prometheus_name not in families] == []
    with (tmp_path / "run.prom").open("rb") as fh:
        check = subprocess.run([promtool, "check", "metrics"], stdin=fh, capture_output=True, text=True, check=False)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


def test_vllm_v0_without_prefix_caching_has_no_hit_rate():
    # vLLM V0 serves -1 as the prefix-cache hit rate when prefix caching is off.
    text = golden("vllm-0.6").replace(
        'vllm:gpu_prefix_cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4217',
        'vllm:gpu_prefix_cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} -1.0',
    )
    assert "} -1.0\n# HELP vllm:avg_prompt" in text
    server = MetricsServer([text])
    try:
        samples = ScrapeCollector(server.url, timeout=5, clock=lambda: 1000.0).scrape()
    finally:
        server.close()
    assert [s for s in samples if s.metric == "cache_hit_rate"] == []
    assert [s.value for s in samples if s.metric == "vllm_gpu_prefix_cache_hit_rate"] == [-1.0]  # stored raw
