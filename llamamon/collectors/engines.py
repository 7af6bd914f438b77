"""What an inference server's /metrics says about it: which engine and version, which llamamon metrics its
series resolve to, which of its names upstream deprecated, and the flag that turns its metrics on.

Pure: families in, facts out (``llamamon doctor --scrape`` fetches and prints). The engines' names move
(vLLM deprecates in X.Y, hides in X.Y+1, removes in X.Y+2), so the version guess is read from which series
a server serves, never from a version string: none of these engines exports one. Mapping facts come from
the tables in ``scrape.py``, so this module cannot disagree with what ``record --scrape`` stores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llamamon.collectors import scrape
from llamamon.prometheus.text import Family


@dataclass(frozen=True, slots=True)
class Guess:
    engine: str  # "vLLM", "SGLang", "llama.cpp", "TGI" or "unknown"
    version: str  # what the served series say, e.g. "0.8 (V1 engine)"
    why: str  # the series that decided it


@dataclass(frozen=True, slots=True)
class Resolved:
    metric: str  # the llamamon catalog name
    series: str  # the engine's family it comes from
    how: str  # "gauge", "rate of the counter", ...


# Engine -> how to make it serve /metrics. vLLM and TGI serve it by default.
FLAGS: dict[str, str] = {
    "vLLM": "served by default on the API port (/metrics); MFU counters need --enable-mfu-metrics",
    "SGLang": "start the server with --enable-metrics",
    "llama.cpp": "start llama-server with --metrics",
    "TGI": "served by default on the router port (/metrics)",
}

# Upstream-deprecated or removed family -> (its replacement or None, since when).
DEPRECATED: dict[str, tuple[str | None, str]] = {
    "vllm:gpu_cache_usage_perc": ("vllm:kv_cache_usage_perc", "vLLM 0.9"),
    "vllm:gpu_prefix_cache_queries": ("vllm:prefix_cache_queries", "vLLM 0.9"),
    "vllm:gpu_prefix_cache_hits": ("vllm:prefix_cache_hits", "vLLM 0.9"),
    "vllm:time_per_output_token_seconds": ("vllm:inter_token_latency_seconds", "vLLM 0.11"),
    "vllm:gpu_prefix_cache_hit_rate": ("vllm:prefix_cache_hits / vllm:prefix_cache_queries", "V0 engine only"),
    "vllm:avg_generation_throughput_toks_per_s": ("vllm:generation_tokens_total", "vLLM 0.6 (V0 only)"),
    "vllm:avg_prompt_throughput_toks_per_s": ("vllm:prompt_tokens_total", "vLLM 0.6 (V0 only)"),
    "vllm:num_requests_swapped": (None, "V0 engine only; V1 does not swap"),
    "vllm:cpu_cache_usage_perc": (None, "V0 engine only"),
    "llamacpp:kv_cache_usage_ratio": (None, "removed in ggml-org/llama.cpp#13660"),
    "llamacpp:kv_cache_tokens": (None, "removed in ggml-org/llama.cpp#13660"),
}

_PREFIXES = (("vllm:", "vLLM"), ("sglang:", "SGLang"), ("llamacpp:", "llama.cpp"), ("tgi_", "TGI"))


def served_names(families: Iterable[Family]) -> set[str]:
    """Family names without a counter's ``_total`` (prometheus_client's family name for a counter)."""
    return {scrape._base(f.name) for f in families}


def engine_of(names: set[str]) -> str:
    """The engine whose prefix most served families carry; "unknown" for none of them."""
    counts = {engine: sum(n.startswith(prefix) for n in names) for prefix, engine in _PREFIXES}
    best = max(counts, key=lambda e: counts[e])
    return best if counts[best] else "unknown"


def guess(families: Iterable[Family]) -> Guess:
    """Engine and version range, from the series only some versions serve."""
    names = served_names(families)
    engine = engine_of(names)
    if engine == "vLLM":
        return _vllm(names)
    if engine == "llama.cpp":
        if "llamacpp:kv_cache_usage_ratio" in names:
            return Guess(engine, "a build before #13660 (mid-2025)", "serves llamacpp:kv_cache_usage_ratio")
        if "llamacpp:n_tokens_max" in names or "llamacpp:n_decode_total" in names:
            return Guess(engine, "current (after #13660)", "serves llamacpp:n_decode_total / n_tokens_max")
        return Guess(engine, "unknown build", "serves llamacpp: series only")
    if engine == "unknown":
        return Guess(engine, "", "no vllm:, sglang:, llamacpp: or tgi_ series")
    prefix = next(p for p, e in _PREFIXES if e == engine)
    return Guess(engine, "any recent release", f"serves {prefix} series")


def _vllm(names: set[str]) -> Guess:
    if "vllm:inter_token_latency_seconds" in names:
        return Guess("vLLM", "0.11 or later (V1 engine)", "serves vllm:inter_token_latency_seconds")
    if "vllm:kv_cache_usage_perc" in names or "vllm:prefix_cache_queries" in names:
        why = "serves vllm:kv_cache_usage_perc"
        if "vllm:gpu_cache_usage_perc" in names:
            return Guess("vLLM", "0.9-0.10 (V1 engine)", why + " beside the deprecated vllm:gpu_cache_usage_perc")
        return Guess("vLLM", "0.10 or later (V1 engine)", why)
    if "vllm:gpu_prefix_cache_queries" in names:
        return Guess("vLLM", "0.8 (V1 engine)", "serves vllm:gpu_prefix_cache_queries, not the 0.9 names")
    if "vllm:num_requests_swapped" in names or "vllm:cpu_cache_usage_perc" in names:
        return Guess("vLLM", "0.6-0.8 (V0 engine)", "serves vllm:num_requests_swapped (V0 only)")
    return Guess("vLLM", "unknown release", "serves vllm: series only")


def resolved(families: Iterable[Family]) -> list[Resolved]:
    """The llamamon metrics this server's series feed, as ``record --scrape`` maps them (new names first)."""
    names = served_names(families)
    superseded = {old for old, new in scrape.RENAMED.items() if new in names}
    out: list[Resolved] = []
    tables: list[tuple[dict[str, str], str]] = [
        ({k: m for k, (m, _) in scrape.GAUGES.items()}, "gauge"),
        (scrape.COUNTER_RATES, "rate of the counter"),
        (scrape.HISTOGRAMS_KEPT, "histogram, kept whole: buckets, sum, count"),
        (scrape.HISTOGRAM_SUM_RATES, "rate of the histogram's sum"),
    ]
    for table, how in tables:
        out += [Resolved(m, s, how) for s, m in table.items() if s in names and s not in superseded]
    for metric, pairs in scrape.COUNTER_RATIOS.items():
        pair = scrape.ratio_pair(pairs, names)
        if pair is not None:
            hits, queries = pair
            over = queries[0] if len(queries) == 1 else f"({' + '.join(queries)})"
            out.append(Resolved(metric, f"{hits} / {over}", "ratio of the counters' increases"))
    for total, failures in scrape.ERROR_RATIOS.items():
        if total in names and (failures is None or failures in names):
            source = f"{failures} / {total}" if failures else f"{total}{{finished_reason=abort}} / {total}"
            out.append(Resolved("error_rate", source, "ratio of the counters' increases"))
    return sorted(out, key=lambda r: r.metric)


def deprecated(families: Iterable[Family]) -> list[tuple[str, str | None, str]]:
    """(served name, replacement or None, since when) for each upstream-deprecated family served."""
    names = served_names(families)
    return [(name, *DEPRECATED[name]) for name in sorted(names) if name in DEPRECATED]
