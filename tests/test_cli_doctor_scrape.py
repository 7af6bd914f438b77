"""``llamamon doctor --scrape URL`` against the golden /metrics files served on loopback, and broken endpoints."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_llamamon
from tests.goldens_server import MetricsServer, golden
from tests.loopback import closed_port


@pytest.fixture
def serve():
    servers: list[MetricsServer] = []

    def start(body: str, status: int = 200) -> str:
        servers.append(MetricsServer([body], status))
        return servers[-1].url

    yield start
    for server in servers:
        server.close()


def doctor(url: str, tmp_path, *extra: str):
    result = run_llamamon("doctor", "--scrape", url, *extra, cwd=tmp_path)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        ("vllm-0.6", "vLLM 0.6-0.8 (V0 engine)"),
        ("vllm-0.8", "vLLM 0.8 (V1 engine)"),
        ("vllm-v1", "vLLM 0.11 or later (V1 engine)"),
        ("sglang", "SGLang"),
        ("llamacpp", "llama.cpp current (after #13660)"),
        ("tgi", "TGI"),
    ],
)
def test_each_golden_is_recognised(serve, tmp_path, name, engine):
    code, out, err = doctor(serve(golden(name)), tmp_path)
    assert (code, err) == (0, "")
    assert f"  Engine         {engine}" in out
    assert "Hint" not in out  # each serves enough for llamamon


def test_current_vllm_resolves_from_the_new_names_and_names_the_deprecated_one(serve, tmp_path):
    code, out, _ = doctor(serve(golden("vllm-v1")), tmp_path)
    assert code == 0
    lines = out.splitlines()
    assert any("cache_hit_rate" in x and "<- vllm:prefix_cache_hits / vllm:prefix_cache_queries" in x for x in lines)
    assert any("server_flops_per_gpu" in x and "<- vllm:estimated_flops_per_gpu (rate" in x for x in lines)
    itl = [x for x in lines if x.strip().startswith("inter_token_latency ")]
    assert len(itl) == 1, itl  # from one family, not also from its deprecated twin
    assert "vllm:inter_token_latency_seconds" in itl[0]
    assert (
        "  Deprecated     vllm:time_per_output_token_seconds: vLLM 0.11; use vllm:inter_token_latency_seconds" in lines
    )


def test_vllm_08_names_its_renamed_series(serve, tmp_path):
    code, out, _ = doctor(serve(golden("vllm-0.8")), tmp_path)
    assert code == 0
    assert "  Deprecated     vllm:gpu_cache_usage_perc: vLLM 0.9; use vllm:kv_cache_usage_perc" in out
    assert "  Deprecated     vllm:gpu_prefix_cache_queries: vLLM 0.9; use vllm:prefix_cache_queries" in out
    assert "<- vllm:gpu_prefix_cache_hits / vllm:gpu_prefix_cache_queries" in out


def test_an_old_llamacpp_build_is_told_its_kv_gauge_is_gone(serve, tmp_path):
    old = "# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.4\n"
    code, out, _ = doctor(serve(old + golden("llamacpp")), tmp_path)
    assert code == 0
    assert "llama.cpp a build before #13660" in out
    assert "  Deprecated     llamacpp:kv_cache_usage_ratio: removed in ggml-org/llama.cpp#13660; no replacement" in out


def test_nothing_served_gives_the_flags(serve, tmp_path):
    code, out, err = doctor(serve(""), tmp_path)
    assert (code, err) == (0, "")
    assert "Resolves       no llamamon metric" in out
    assert "SGLang serves metrics only with --enable-metrics" in out
    assert "llama-server only with --metrics" in out


def test_an_engine_serving_too_little_gets_its_own_flag(serve, tmp_path):
    code, out, _ = doctor(serve("# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 1\n"), tmp_path)
    assert code == 0
    assert "  Hint           SGLang metrics: start the server with --enable-metrics" in out


def test_json_has_the_same_facts(serve, tmp_path):
    code, out, _ = doctor(serve(golden("tgi")), tmp_path, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["engine"] == "TGI"
    metrics = {r["metric"] for r in report["resolved"]}
    assert {"inference_latency", "error_rate", "batch_queue_size"} <= metrics
    assert not metrics & {"time_to_first_token", "cache_hit_rate"}  # TGI has no such series


def test_unreachable_and_http_errors_are_one_line_exit_2(serve, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/metrics"
    code, out, err = doctor(url, tmp_path)
    assert (code, out) == (2, "")
    assert err.startswith(f"Error: --scrape: {url}: unreachable ("), err
    assert err.count("\n") == 1, err
    code, out, err = doctor(serve("no", status=500), tmp_path)
    assert (code, out) == (2, "")
    assert err.endswith(": HTTP 500\n"), err
    assert err.count("\n") == 1, err


def test_metrics_switched_off_is_told_the_flag(serve, tmp_path):
    # llama-server without --metrics answers 501 on /metrics (SGLang without --enable-metrics: 404).
    code, out, err = doctor(serve("This server does not support metrics endpoint.", status=501), tmp_path)
    assert (code, out) == (2, "")
    assert err.endswith(
        ": HTTP 501 (SGLang serves metrics only with --enable-metrics, llama.cpp's llama-server only with --metrics)\n"
    ), err
    assert err.count("\n") == 1, err
    code, _, err = doctor("ftp://example.invalid/metrics", tmp_path)
    assert code == 2
    assert err == "Error: --scrape: not an http(s) URL: 'ftp://example.invalid/metrics'\n"


def test_current_llamacpp_resolves_its_prompt_cache_share(serve, tmp_path):
    code, out, _ = doctor(serve(golden("llamacpp")), tmp_path)
    assert code == 0
    line = next(x for x in out.splitlines() if "cache_hit_rate" in x)
    assert "<- llamacpp:prompt_tokens_cached / (llamacpp:prompt_tokens_cached + llamacpp:prompt_tokens)" in line
    # A build before #26920 serves prompt_tokens_total alone: no share to give.
    older = "\n".join(x for x in golden("llamacpp").splitlines() if "prompt_tokens_cached" not in x) + "\n"
    code, out, _ = doctor(serve(older), tmp_path)
    assert code == 0
    assert "cache_hit_rate" not in out
