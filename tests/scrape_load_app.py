"""A stand-in vLLM v1 server under a bounded load generator, for tests/test_scrape_load.py (run as a script).

One process: a prometheus_client registry with vLLM v1's metric names, labels and bucket bounds
(vllm/v1/metrics/loggers.py), served on loopback, and a load generator whose requests wait in a queue
for one of a few workers, get a first token, then decode in chunks. What each request took is measured
here, from its arrival, and is what the server's histograms observe (as vLLM's engine does), so the
generator's own figures are the truth the recorded ones are checked against.

Before serving, the server "ran for days": a history of slow requests and tokens that the run must not
count. The generator starts once every scraper has seen that history and stops after ``duration``
seconds; the script then waits for two more scrapes by each, writes what it measured (JSON) and creates
the ``done`` file that ends the recorded job. argv: results path, done path, duration, scrapers
("llamamon" or "llamamon,prometheus").
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LABELS = ("model_name", "engine")
MODEL = ("tiny-llm", "0")
WORKERS = 4  # requests decoded at once; the rest wait (vllm:num_requests_waiting)
HISTORY = 300  # requests served before the run, each 45 s

registry = CollectorRegistry()
e2e = Histogram("vllm:e2e_request_latency_seconds", "E2E latency", LABELS, buckets=E2E_BUCKETS, registry=registry)
ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", LABELS, buckets=TTFT_BUCKETS, registry=registry)
generated = Counter("vllm:generation_tokens", "Generation tokens", LABELS, registry=registry)
success = Counter("vllm:request_success", "Finished requests", (*LABELS, "finished_reason"), registry=registry)
waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", LABELS, registry=registry)
running = Gauge("vllm:num_requests_running", "Requests running", LABELS, registry=registry)

scrapes = {"llamamon": 0, "prometheus": 0}
first_scrape: dict[str, float] = {}  # time.time() as each scraper's first scrape was answered
seen = threading.Condition()


class Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        answered = time.time()
        body = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        who = "prometheus" if self.headers.get("User-Agent", "").startswith("Prometheus/") else "llamamon"
        with seen:
            scrapes[who] += 1
            first_scrape.setdefault(who, answered)
            seen.notify_all()

    def log_message(self, *args: object) -> None:
        pass


def wait_scrapes(wanted: dict[str, int], timeout: float = 60.0) -> None:
    with seen:
        if not seen.wait_for(lambda: all(scrapes[who] >= n for who, n in wanted.items()), timeout):
            sys.exit(f"load app: scrapes {scrapes} after {timeout:.0f} s, wanted {wanted}")


class Load:
    """Arrivals in bursts (a queue builds, then drains) served by WORKERS threads; everything measured."""

    def __init__(self, duration: float, seed: int = 19) -> None:
        self.duration = duration
        self.rng = random.Random(seed)
        self.queue: deque[tuple[float, int]] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.tokens = 0
        self.queue_trace: list[tuple[float, int]] = []  # (time.time(), waiting) at every change

    def _set_waiting(self) -> None:
        waiting.labels(*MODEL).set(len(self.queue))
        self.queue_trace.append((time.time(), len(self.queue)))

    def run(self) -> None:
        workers = [threading.Thread(target=self._work) for _ in range(WORKERS)]
        for w in workers:
            w.start()
        end = time.monotonic() + self.duration
        while (now := time.monotonic()) < end:
            busy = int(now * 0.5) % 2 == 0  # 2 s bursts, 2 s lulls
            time.sleep(self.rng.expovariate(16.0 if busy else 2.0))
            with self.cond:
                self.queue.append((time.monotonic(), self.rng.randint(20, 120)))
                self._set_waiting()
                self.cond.notify()
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for w in workers:
            w.join()

    def _work(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.closed)
                if not self.queue:
                    return
                arrived, n_tokens = self.queue.popleft()
                self._set_waiting()
                running.labels(*MODEL).inc()
            time.sleep(self.rng.uniform(0.02, 0.15))  # prefill
            first = time.monotonic() - arrived
            ttft.labels(*MODEL).observe(first)
            done = 0
            while done < n_tokens:  # decode, counted as it goes (vLLM counts tokens per engine step)
                chunk = min(10, n_tokens - done)
                time.sleep(chunk * 0.004)
                generated.labels(*MODEL).inc(chunk)
                done += chunk
            latency = time.monotonic() - arrived
            e2e.labels(*MODEL).observe(latency)
            success.labels(*MODEL, "stop").inc()
            with self.cond:
                running.labels(*MODEL).dec()
                self.latencies.append(latency)
                self.ttfts.append(first)
                self.tokens += n_tokens


def main() -> None:
    results, done, duration, who = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(",")
    for _ in range(HISTORY):  # the days before the run
        e2e.labels(*MODEL).observe(45.0)
        ttft.labels(*MODEL).observe(9.0)
        success.labels(*MODEL, "stop").inc()
    generated.labels(*MODEL).inc(HISTORY * 500)
    waiting.labels(*MODEL).set(0)
    running.labels(*MODEL).set(0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_port, flush=True)
    try:
        wait_scrapes({w: 1 for w in who})
        load = Load(duration)
        start = time.time()
        load.run()
        end = time.time()
        with seen:
            after = {w: scrapes[w] + 2 for w in who}
        wait_scrapes(after)
        figures = {
            "start": start,
            "end": end,
            "first_scrape": first_scrape,
            "latencies": load.latencies,
            "ttfts": load.ttfts,
            "tokens": load.tokens,
        }
        results.write_text(json.dumps({**figures, "queue": load.queue_trace}))
    finally:
        done.write_text("")  # the recorded job ends, with or without figures
    sys.stdin.read()  # serve until the test is done with the server


if __name__ == "__main__":
    main()
