"""Issue 19: a vLLM v1 server under ~20 s of load, recorded by `llamamon record --scrape` and by real Prometheus.

The server (tests/scrape_load_app.py) served 300 slow requests before the run. What llamamon stores of
the run must be the run's own requests: latency and TTFT buckets counted from the first scrape, whose
quantiles are the generator's measured ones within the bucket they fall in, and equal (float for float)
to Prometheus' ``histogram_quantile`` over the same server's bucket increases in the run; tokens/s and
requests/s that add up to what the generator produced; a queue size the generator had; a ``.prom``
export whose ``_count`` counts requests (not ticks) and passes ``promtool check metrics``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from bisect import bisect_left
from pathlib import Path

import polars as pl
import pytest

from llamamon.prometheus.text import parse
from llamamon.report.dashboards.values import format_value, unit_of
from llamamon.rules.histogram import bucket_quantile
from llamamon.store.reader import scan
from tests.conftest import llamamon_env, require_binary, run_llamamon
from tests.test_prometheus_tools import _stop, query, start_prometheus

pytest.importorskip("prometheus_client", reason="prometheus_client is in the test extra")
# (after the skip: the app module defines its metrics with prometheus_client)
from tests.scrape_load_app import E2E_BUCKETS, TTFT_BUCKETS

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("scrape_load_app.py")
DURATION = 20.0
INTERVAL = 0.5
JOB = "import os, time\nfor _ in range(2400):\n    if os.path.exists('done'):\n        break\n    time.sleep(0.05)\n"
QUANTILES = (0.5, 0.95)
# (llamamon histogram, server family, its bounds, what the generator measured)
HISTOGRAMS = (
    ("inference_latency", "vllm.e2e_request_latency_seconds", E2E_BUCKETS, "latencies"),
    ("time_to_first_token", "vllm.time_to_first_token_seconds", TTFT_BUCKETS, "ttfts"),
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Run the load once under `llamamon record` and Prometheus: (folder, metrics dir, generator figures, Prometheus URL)."""
    require_binary("prometheus")
    home = tmp_path_factory.mktemp("load")
    metrics = home / "metrics"
    (home / "job.py").write_text(JOB)
    (home / "monitoring.yaml").write_text(f"monitoring:\n  update_frequency: {INTERVAL}\n")
    results, done = home / "generator.json", home / "done"
    args = [sys.executable, str(APP), str(results), str(done), str(DURATION), "llamamon,prometheus"]
    app = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=llamamon_env())
    procs: list[subprocess.Popen] = [app]
    try:
        assert app.stdout is not None
        port = int(app.stdout.readline())
        config = (
            "global:\n  scrape_interval: 1s\nscrape_configs:\n"
            f"  - job_name: vllm\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
        prometheus, base = start_prometheus(home / "prometheus", config)
        procs.append(prometheus)
        url = f"http://127.0.0.1:{port}/metrics"
        command = ["record", "--no-gpu", "--metrics-dir", str(metrics), "--scrape", url, "--", sys.executable, "job.py"]
        record = subprocess.run(
            [sys.executable, "-m", "llamamon", *command],
            cwd=home,
            env=llamamon_env(),
            capture_output=True,
            timeout=DURATION + 120,
            check=False,
        )
        assert record.returncode == 0, record.stderr.decode()
        assert results.exists(), f"the load app gave no figures (exit {app.poll()}); record said: {record.stderr!r}"
        yield home, metrics, json.loads(results.read_text()), base
    finally:
        for proc in reversed(procs):
            if proc is app:
                proc.kill()
                proc.wait(timeout=10)
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        pipe.close()
            else:
                _stop(proc)


def stored(metrics: Path):
    return scan(metrics).collect().sort("time").with_columns(t=pl.col("time").dt.epoch("us") / 1e6)


def run_buckets(rows, metric: str) -> list[tuple[float, float]]:
    """(le, the run's requests at or under it), from the stored cumulative buckets: last minus first, per series."""

    parts = rows.filter(pl.col("metric") == f"{metric}_bucket")
    parts = parts.with_columns(le=pl.col("labels").str.json_path_match("$.le").cast(pl.Float64))
    series = parts.group_by("labels").agg(pl.col("le").first(), (pl.col("value").last() - pl.col("value").first()))
    totals = series.group_by("le").agg(pl.col("value").sum()).sort("le")
    return list(zip(totals["le"].to_list(), totals["value"].to_list(), strict=True))


def true_quantile(values: list[float], q: float) -> float:
    """The q-quantile of what was measured: the value at rank ceil(q * n), as a bucket count reaches it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def test_recorded_latency_quantiles_are_the_generators_and_prometheus(recorded):
    _home, metrics, gen, base = recorded
    rows = stored(metrics)

    # The store keeps the histograms whole: no per-interval quantile series, no quantile label.
    assert rows.filter(pl.col("metric").is_in(["inference_latency", "time_to_first_token"])).height == 0
    assert rows.filter(pl.col("labels").str.contains('"quantile"')).height == 0
    for metric, family, bounds, measured in HISTOGRAMS:
        values = gen[measured]
        buckets = run_buckets(rows, metric)
        assert [le for le, _ in buckets] == [*bounds, math.inf]
        assert buckets[-1][1] == len(values) > 100  # the run's requests only, not the 300 before it
        count = rows.filter(pl.col("metric") == f"{metric}_count")["value"]
        assert (count[0], count[-1]) == (0, len(values))  # counted from the run's first scrape
        server = f'{{__name__=~"{family}_bucket", job="vllm"}}'
        for q in QUANTILES:
            ours = bucket_quantile(q, buckets)
            truth = true_quantile(values, q)
            # Within the bucket resolution: the estimate and the measured quantile are in the same bucket.
            edges = (*bounds, math.inf)
            assert bisect_left(edges, ours) == bisect_left(edges, truth), (metric, q, ours, truth)
            # Prometheus over the same server: its buckets' increase since its first scrape (answered before
            # the load began, as llamamon's first was), the same interpolation.
            run = f"{server} - {server} @ {gen['first_scrape']['prometheus']}"
            (theirs,) = query(base, f"histogram_quantile({q}, {run})")
            assert ours == pytest.approx(float(theirs["value"][1]), rel=1e-12), (metric, q)
    latency_sum = rows.filter(pl.col("metric") == "inference_latency_sum")["value"]
    assert latency_sum[0] == 0
    assert latency_sum[-1] == pytest.approx(sum(gen["latencies"]), rel=1e-9)


def test_recorded_throughput_adds_up_to_what_was_generated(recorded):
    _home, metrics, gen, _base = recorded
    rows = stored(metrics)

    scrapes = rows.filter(pl.col("metric") == "batch_queue_size")["t"].to_list()  # one a scrape
    for metric, produced in (("token_throughput", gen["tokens"]), ("batch_throughput", len(gen["latencies"]))):
        rates = rows.filter(pl.col("metric") == metric)
        # Each rate covers the interval since the scrape before it: rate x interval adds up to the total.
        counted = sum(
            v * (t - scrapes[bisect_left(scrapes, t) - 1]) for v, t in zip(rates["value"], rates["t"], strict=True)
        )
        assert counted == pytest.approx(produced, rel=1e-4), metric
    peak = rows.filter(pl.col("metric") == "token_throughput")["value"].max()
    assert gen["tokens"] / (gen["end"] - gen["start"]) <= peak  # a mean under its peak: the rates are per second


def test_recorded_queue_size_is_one_the_generator_had(recorded):
    _home, metrics, gen, _base = recorded
    rows = stored(metrics)

    trace = [(-math.inf, 0), *((t, n) for t, n in gen["queue"])]
    queue = rows.filter(pl.col("metric") == "batch_queue_size")
    assert queue.height > DURATION / INTERVAL / 2
    for value, t in zip(queue["value"], queue["t"], strict=True):
        # What the queue held from the scrape's time on: a scrape reads the clock, then asks, and waits at most
        # the interval for the answer; a second of slack for a busy machine.
        start = bisect_left([u for u, _ in trace], t)
        held = {n for u, n in trace[max(start - 1, 0) :] if u <= t + INTERVAL + 1.0}
        assert value in held, (t, value, held)
    assert queue["value"].max() > 0  # the bursts were seen


def test_export_counts_requests_and_passes_promtool(recorded):
    home, metrics, gen, _base = recorded
    out = home / "run.prom"
    export = run_llamamon("export", "prometheus", "--metrics-dir", str(metrics), "--latest", "-o", str(out), cwd=home)
    assert export.returncode == 0, export.stderr.decode()
    with out.open("rb") as fh:
        check = subprocess.run(
            [require_binary("promtool"), "check", "metrics"], stdin=fh, capture_output=True, text=True, check=False
        )
    assert (check.returncode, check.stdout + check.stderr) == (0, "")
    families = {f.name: f for f in parse(out.read_text())}
    for name, measured in (
        ("llamamon_inference_latency_seconds", "latencies"),
        ("llamamon_time_to_first_token_seconds", "ttfts"),
    ):
        family = families[name]
        assert family.type == "histogram"
        (count,) = [p for p in family.points if p.name.endswith("_count")]
        assert count.value == len(gen[measured])  # requests of the run, not ticks
        (inf,) = [p for p in family.points if dict(p.labels).get("le") == "+Inf"]
        assert inf.value == len(gen[measured])

    report = run_llamamon("report", "--metrics-dir", str(metrics), "--markdown", "-o", "report.md", cwd=home)
    assert report.returncode == 0, report.stderr.decode()
    p95_ms = bucket_quantile(0.95, run_buckets(stored(metrics), "inference_latency")) * 1000
    lines = [line for line in (home / "report.md").read_text().splitlines() if "p95 latency" in line]
    assert lines, (home / "report.md").read_text()
    assert format_value(p95_ms, unit_of("inference_latency")) in lines[0], lines
