"""Scrape a Prometheus text endpoint (vLLM, TGI, llama.cpp server, any prometheus_client app) every tick.

Fetching is urllib with a timeout; parsing is ``llamamon.prometheus.text.parse``. Every series is stored
as it is (name made store-safe, labels kept, plus ``instance``); well-known serving series are also
mapped onto the catalog: gauges directly, counters as per-second rates, prefix-cache counters as a hit
ratio, failed or aborted requests as an error rate, and latency histograms kept whole, as Prometheus
keeps them: ``inference_latency_bucket{le}``, ``_sum`` and ``_count`` (``catalog.histogram_parts``),
cumulative, in seconds, counted from the run's first scrape, so that rules, report and export compute
quantiles over any window from them (never quantiles of per-interval quantiles). A counter that goes
down means the server restarted: its new value is the increase. An endpoint that is down, slow or
serves garbage is reported once per kind of trouble and the recording goes on.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llamamon import catalog
from llamamon.catalog import sanitize_name
from llamamon.collectors.base import MetricsCollector
from llamamon.config.loader import UnsetVariable
from llamamon.config.schema import ScrapeTarget
from llamamon.errors import ConfigError
from llamamon.masking import scrub
from llamamon.prometheus.text import ExpositionError, Family, Point, parse
from llamamon.samples import Labels, Sample

if TYPE_CHECKING:
    from llamamon.config import Config

log = logging.getLogger("llamamon.collectors")

MAX_BODY = 32 << 20

# Wire family name (counters without "_total") -> catalog metric. vLLM renames map to the same name.
GAUGES: dict[str, tuple[str, float]] = {
    "vllm:num_requests_waiting": ("batch_queue_size", 1.0),
    "vllm:num_requests_running": ("requests_running", 1.0),
    "vllm:kv_cache_usage_perc": ("kv_cache_usage", 1.0),
    "vllm:gpu_cache_usage_perc": ("kv_cache_usage", 1.0),  # before vllm-project/vllm#18354
    "vllm:gpu_prefix_cache_hit_rate": ("cache_hit_rate", 1.0),  # V0 gauge, before the counters
    "tgi_queue_size": ("batch_queue_size", 1.0),
    "tgi_batch_current_size": ("requests_running", 1.0),
    "llamacpp:requests_processing": ("requests_running", 1.0),
    "llamacpp:requests_deferred": ("batch_queue_size", 1.0),
    "llamacpp:kv_cache_usage_ratio": ("kv_cache_usage", 1.0),  # removed upstream (ggml-org/llama.cpp#13660)
    "sglang:num_running_reqs": ("requests_running", 1.0),
    "sglang:num_queue_reqs": ("batch_queue_size", 1.0),
    "sglang:token_usage": ("kv_cache_usage", 1.0),
    "sglang:cache_hit_rate": ("cache_hit_rate", 1.0),
    "sglang:gen_throughput": ("token_throughput", 1.0),
}
COUNTER_RATES: dict[str, str] = {
    "vllm:generation_tokens": "token_throughput",
    "vllm:request_success": "batch_throughput",
    "tgi_request_success": "batch_throughput",
    "llamacpp:tokens_predicted": "token_throughput",
    "sglang:num_requests": "batch_throughput",
    "vllm:num_preemptions": "preemption_rate",
    "vllm:estimated_flops_per_gpu": "server_flops_per_gpu",  # --enable-mfu-metrics
    "vllm:estimated_read_bytes_per_gpu": "server_read_bytes_per_gpu",
    "vllm:estimated_write_bytes_per_gpu": "server_write_bytes_per_gpu",
}
# Histograms (seconds) -> kept whole as the catalog histogram's parts (<metric>_bucket/_sum/_count).
HISTOGRAMS_KEPT: dict[str, str] = {
    "vllm:e2e_request_latency_seconds": "inference_latency",
    "tgi_request_duration": "inference_latency",
    "vllm:time_to_first_token_seconds": "time_to_first_token",
    "sglang:e2e_request_latency_seconds": "inference_latency",
    "sglang:time_to_first_token_seconds": "time_to_first_token",
    "vllm:inter_token_latency_seconds": "inter_token_latency",
    "vllm:time_per_output_token_seconds": "inter_token_latency",  # older vLLM name
    "sglang:inter_token_latency_seconds": "inter_token_latency",
    "vllm:request_time_per_output_token_seconds": "request_time_per_output_token",
    # One observation per request: its inference time (prefill included) / its generated tokens, so a
    # per-request mean like vLLM's, not an inter-token latency (router/src/server.rs, TGI 3.x).
    "tgi_request_mean_time_per_token_duration": "request_time_per_output_token",
}
# Histograms whose _sum counts things -> rate of the sum.
HISTOGRAM_SUM_RATES: dict[str, str] = {"tgi_request_generated_tokens": "token_throughput"}
# (hits, counters whose sum is the queries) -> hits' increase over the sum of theirs; the first pair the server
# serves every counter of wins (vLLM 0.9-0.10 serve both names; 0.8 only the gpu_ ones): ``ratio_pair``, for
# record and doctor alike. llama.cpp counts the prompt tokens it reused and those it processed apart.
COUNTER_RATIOS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "cache_hit_rate": (
        ("vllm:prefix_cache_hits", ("vllm:prefix_cache_queries",)),
        ("vllm:gpu_prefix_cache_hits", ("vllm:gpu_prefix_cache_queries",)),  # deprecated in 0.9
        ("llamacpp:prompt_tokens_cached", ("llamacpp:prompt_tokens_cached", "llamacpp:prompt_tokens")),  # #26920
    ),
}
# All-requests counter -> the counter of the failed ones among them; None: the requests counter's own
# finished_reason abort/error part (vLLM counts aborts as finished requests). error_rate = failed / all.
ERROR_RATIOS: dict[str, str | None] = {"tgi_request_count": "tgi_request_failure", "vllm:request_success": None}
FAILED_REASONS = frozenset({"abort", "error"})
# Old family -> its new name: a server serving both (vLLM during a deprecation) is mapped once, from the new.
RENAMED: dict[str, str] = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
}
SUMMED_LABELS = frozenset({"finished_reason", "err"})  # folded together when mapping onto the catalog


def ratio_pair(
    pairs: Sequence[tuple[str, tuple[str, ...]]], served: Iterable[str]
) -> tuple[str, tuple[str, ...]] | None:
    """The first (hits, queries) pair all of whose counters are served, or None."""
    names = set(served)
    return next(((h, q) for h, q in pairs if h in names and names.issuperset(q)), None)


def _base(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") else name


def _without(labels: Labels, drop: Iterable[str]) -> Labels:
    dropped = set(drop)
    return tuple((k, v) for k, v in labels if k not in dropped)


def _increase(now: float, before: float) -> float:
    """Counter increase since the last scrape; a lower value means a restart, so all of it is new."""
    return now - before if now >= before else now


@dataclass(slots=True)
class _Histogram:
    buckets: dict[float, float]
    count: float
    total: float
    les: dict[float, str] = field(default_factory=dict)  # each bound as the server spelled it


def _restarted(cur: _Histogram, prev: _Histogram) -> bool:
    return cur.count < prev.count or any(v < prev.buckets.get(le, 0.0) for le, v in cur.buckets.items())


class ScrapeState:
    """What one endpoint looked like at the last scrape: counters and histograms, for deltas."""

    def __init__(self) -> None:
        self.time: float | None = None
        self.counters: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], _Histogram] = {}
        # Per kept histogram: what to add to the server's values to count from the run's first scrape
        # (minus that scrape's values, plus each restart's last values).
        self.offsets: dict[tuple[str, Labels], _Histogram] = {}
        # Per kept histogram: its values at the last scrape that served it. Kept through scrapes that lack
        # it: a restarted server serves a labelled series again only from its first request on, and the
        # lower counts it comes back with are that restart.
        self.kept_last: dict[tuple[str, Labels], _Histogram] = {}

    def convert(self, families: list[Family], now: float, extra: Labels = ()) -> list[Sample]:
        """Raw series plus catalog metrics; updates the state for the next interval."""
        elapsed = now - self.time if self.time is not None else None
        counters: dict[tuple[str, Labels], float] = {}
        histograms: dict[tuple[str, Labels], _Histogram] = {}
        out: list[Sample] = []

        def label(labels: Labels) -> Labels:
            return tuple(sorted({**dict(labels), **dict(extra)}.items()))

        served = {_base(family.name) for family in families}
        superseded = {old for old, new in RENAMED.items() if new in served}
        for family in families:
            name = _base(family.name)
            mapped = name not in superseded  # its raw series are still stored, under their own name
            if family.type == "histogram" and mapped:
                self._collect_histogram(name, family.points, histograms)
            for point in family.points:
                if point.name.endswith(("_created", "_bucket")):
                    continue
                out.append(Sample(sanitize_name(point.name), point.value, label(point.labels), now))
                if family.type == "counter" or point.name.endswith("_total"):
                    counters[(_base(point.name), point.labels)] = point.value
                # (a negative serving gauge means "off": vLLM V0 serves -1 as its hit rate without prefix caching)
                if family.type in ("gauge", "untyped") and name in GAUGES and mapped and point.value >= 0:
                    metric, factor = GAUGES[name]
                    out.append(Sample(metric, point.value * factor, label(point.labels), now))

        out.extend(self._kept(histograms, now, label))
        if elapsed is not None and elapsed > 0:
            out.extend(self._rates(counters, elapsed, now, label))
            out.extend(self._histogram_metrics(histograms, elapsed, now, label))
        self.time, self.counters, self.histograms = now, counters, histograms
        return out

    @staticmethod
    def _collect_histogram(name: str, points: Iterable[Point], into: dict[tuple[str, Labels], _Histogram]) -> None:
        for point in points:
            labels = _without(point.labels, ("le",))
            h = into.setdefault((name, labels), _Histogram({}, 0.0, 0.0))
            if point.name.endswith("_bucket"):
                le = dict(point.labels).get("le")
                if le is not None:
                    try:
                        bound = float(le)
                    except ValueError:
                        continue
                    h.buckets[bound] = point.value
                    h.les[bound] = le
            elif point.name.endswith("_count"):
                h.count = point.value
            elif point.name.endswith("_sum"):
                h.total = point.value

    def _rates(
        self, counters: dict[tuple[str, Labels], float], elapsed: float, now: float, label: Callable[[Labels], Labels]
    ) -> list[Sample]:
        increases: dict[tuple[str, Labels], float] = defaultdict(float)
        failed: dict[tuple[str, Labels], float] = defaultdict(float)
        for (name, labels), value in counters.items():
            # A series new since the last scrape was created in between (labelled counters appear on first
            # use), so it started from zero.
            inc = _increase(value, self.counters.get((name, labels), 0.0))
            key = (name, _without(labels, SUMMED_LABELS))
            increases[key] += inc
            if dict(labels).get("finished_reason") in FAILED_REASONS:
                failed[key] += inc
        out = []
        for (name, labels), inc in increases.items():
            if name in COUNTER_RATES:
                out.append(Sample(COUNTER_RATES[name], inc / elapsed, label(labels), now))
            if name in ERROR_RATIOS and inc > 0:
                failures = ERROR_RATIOS[name]
                errors = failed[(name, labels)] if failures is None else increases.get((failures, labels), 0.0)
                out.append(Sample("error_rate", min(errors / inc, 1.0), label(labels), now))
        for metric, pairs in COUNTER_RATIOS.items():
            pair = ratio_pair(pairs, (name for name, _ in increases))
            if pair is None:
                continue
            hits, queries = pair
            for (name, labels), found in increases.items():
                if name != hits or any((q, labels) not in increases for q in queries):
                    continue
                asked = sum(increases[(q, labels)] for q in queries)
                if asked > 0:
                    out.append(Sample(metric, found / asked, label(labels), now))
        return out

    def _kept(
        self, histograms: dict[tuple[str, Labels], _Histogram], now: float, label: Callable[[Labels], Labels]
    ) -> list[Sample]:
        """The mapped histograms' cumulative buckets, sum and count since the run's first scrape (seconds).

        Why cumulative and not per interval: quantiles over a window need the counts in it, which the
        increase of cumulative buckets gives (``histogram_quantile(q, rate(x_bucket[w]))``); a restart is
        an increase of all the new values, as for counters.
        """
        out = []
        for key, cur in histograms.items():
            name, labels = key
            if name not in HISTOGRAMS_KEPT:
                continue
            offset = self.offsets.get(key)
            prev = self.kept_last.get(key)
            self.kept_last[key] = cur
            bucket, total, count = catalog.histogram_parts(HISTOGRAMS_KEPT[name])
            if offset is None:
                # At the first scrape: counted from here. A series new since then started from zero: it
                # was 0 at the last scrape, which a zero there says, so a window's increase sees its first
                # requests (a server creates a labelled series on its first observation).
                first = self.time is None
                offset = _Histogram({le: -v if first else 0.0 for le, v in cur.buckets.items()}, 0.0, 0.0)
                offset.count, offset.total = (-cur.count, -cur.total) if first else (0.0, 0.0)
                self.offsets[key] = offset
                if self.time is not None:
                    for le in sorted(cur.buckets):
                        out.append(Sample(bucket, 0.0, label((*labels, ("le", cur.les[le]))), self.time))
                    out += [Sample(total, 0.0, label(labels), self.time), Sample(count, 0.0, label(labels), self.time)]
            elif prev is not None and _restarted(cur, prev):
                for le, v in prev.buckets.items():
                    offset.buckets[le] = offset.buckets.get(le, 0.0) + v
                offset.count += prev.count
                offset.total += prev.total
            for le in sorted(cur.buckets):
                value = cur.buckets[le] + offset.buckets.get(le, 0.0)
                out.append(Sample(bucket, value, label((*labels, ("le", cur.les[le]))), now))
            out.append(Sample(total, cur.total + offset.total, label(labels), now))
            out.append(Sample(count, cur.count + offset.count, label(labels), now))
        return out

    def _histogram_metrics(
        self,
        histograms: dict[tuple[str, Labels], _Histogram],
        elapsed: float,
        now: float,
        label: Callable[[Labels], Labels],
    ) -> list[Sample]:
        out = []
        for (name, labels), cur in histograms.items():
            prev = self.histograms.get((name, labels)) or _Histogram({}, 0.0, 0.0)  # new series: from zero
            base = _Histogram({}, 0.0, 0.0) if _restarted(cur, prev) else prev
            d_sum = cur.total - base.total
            if name in HISTOGRAM_SUM_RATES:
                out.append(Sample(HISTOGRAM_SUM_RATES[name], d_sum / elapsed, label(labels), now))
        return out


def fetch(url: str, timeout: float, headers: Mapping[str, str] | None = None) -> str:
    """The endpoint's text; raises OSError (down, timeout, HTTP error) or ValueError (not text)."""
    wanted = {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1", **(headers or {})}
    request = urllib.request.Request(url, headers=wanted)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ValueError(f"response larger than {MAX_BODY >> 20} MiB")
    return body.decode("utf-8")


def _trouble(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    if isinstance(exc, ExpositionError):
        return f"not Prometheus text ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"{type(exc).__name__}: {exc}"


class ScrapeCollector(MetricsCollector):
    """One endpoint, scraped once per tick (``record --scrape URL`` / ``scrape:`` in monitoring.yaml)."""

    group = "custom"
    may_stall = True

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        *,
        headers: Mapping[str, str] | None = None,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {scrub(url, ())!r}")
        self.url = url
        self.timeout = timeout
        self._headers, self._secrets, missing = _request_headers(headers or {}, bearer_token, basic_auth)
        # Why scrub: a URL may carry user:password@; warnings and the instance label name the endpoint only.
        self.shown = scrub(url, ())
        if missing:
            log.warning("scrape %s: not sending %s; the endpoint is scraped without it", self.shown, ", ".join(missing))
        self.name = f"scrape {self.shown}"  # type: ignore[misc]  # per instance: warnings name the endpoint
        self.instance = parts.netloc.rpartition("@")[2]
        self.state = ScrapeState()
        self._clock = clock
        self._reported: set[str] = set()
        self._failing = False

    @classmethod
    def from_target(cls, target: ScrapeTarget, default_timeout: float) -> ScrapeCollector:
        """The collector for one ``scrape:`` entry; ``default_timeout`` where it names none."""
        timeout = target.timeout if target.timeout is not None else default_timeout
        return cls(
            target.url, timeout, headers=target.headers, bearer_token=target.bearer_token, basic_auth=target.basic_auth
        )

    async def collect(self) -> list[Sample]:
        return await asyncio.to_thread(self.scrape)

    def scrape(self) -> list[Sample]:
        """One scrape: samples, or [] (and one warning per kind of trouble) when the endpoint fails."""
        now = self._clock()
        try:
            families = parse(fetch(self.url, self.timeout, self._headers))
        except (OSError, ValueError) as exc:
            self._failing = True
            kind = scrub(_trouble(exc), self._secrets)
            key = kind.split(" (")[0]
            if key not in self._reported:
                self._reported.add(key)
                hint = " (check the entry's headers, bearer_token or basic_auth)" if key in _AUTH_TROUBLE else ""
                log.warning(
                    "scrape %s: %s%s; recording goes on and the endpoint is tried every tick", self.shown, kind, hint
                )
            return []
        if self._failing:
            self._failing = False
            log.info("scrape %s: answering again", self.shown)
        return self.state.convert(families, now, (("instance", self.instance),))


_AUTH_TROUBLE = frozenset({"HTTP 401", "HTTP 403"})


def scrapers_for(config: Config, urls: Sequence[str], interval: float) -> list[ScrapeCollector]:
    """One collector per endpoint (monitoring.yaml's scrape: and record's --scrape), each URL checked now: a bad
    one is a ConfigError naming its entry. A scrape waits at most the interval, and never over 10 s."""
    entries = [(target, f"scrape[{i}]", True) for i, target in enumerate(config.scrape)]
    entries += [(ScrapeTarget(url), "--scrape", False) for url in urls]
    found: dict[str, ScrapeCollector] = {}
    for target, path, in_config in entries:
        if target.url in found:
            continue
        try:
            found[target.url] = ScrapeCollector.from_target(target, default_timeout=min(interval, 10.0))
        except ValueError as exc:
            raise (config.error(path, str(exc)) if in_config else ConfigError(str(exc), path=path)) from None
    return list(found.values())


def _request_headers(
    headers: Mapping[str, str], bearer_token: str | None, basic_auth: tuple[str, str] | None
) -> tuple[dict[str, str], tuple[str, ...], list[str]]:
    """(headers to send, raw secrets to scrub from messages, headers left out as their ${VAR} is unset)."""
    wanted: dict[str, str] = dict(headers)
    if bearer_token is not None:
        wanted["Authorization"] = bearer_token if _unset(bearer_token) else f"Bearer {bearer_token}"
    if basic_auth is not None:
        user, password = basic_auth
        unset = next((v for v in basic_auth if _unset(v)), None)
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        wanted["Authorization"] = unset if unset is not None else f"Basic {token}"
    out = {name: value for name, value in wanted.items() if not _unset(value)}
    missing = [f"{name} ({_unset(value)})" for name, value in wanted.items() if _unset(value)]
    secrets = (*out.values(), *(basic_auth or ()), *((bearer_token,) if bearer_token else ()))
    return out, tuple(str(v) for v in secrets), missing


def _unset(value: str) -> str | None:
    """``"${VAR} is not set"`` for a value from an unset environment variable, else None."""
    return f"${{{value.variable}}} is not set" if isinstance(value, UnsetVariable) else None
