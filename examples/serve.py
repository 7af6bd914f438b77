"""A small real inference workload measured with ``llamamon.InferenceMonitor``.

A character n-gram language model is trained on the text below, then serves a stream of generation
requests from a queue with two worker threads. Each generated character costs a fixed decode time (like
a GPU's time per output token), so the workers serve about 30 requests/s while 40 arrive: the queue
grows for the ~10 s requests keep coming (to some 90), then drains. Repeated prompts are answered
from an LRU cache (cache hits, no decoding); prompts the model has never seen a character of fail
(errors). Every request's latency is stored; throughput, token rate, cache hit rate, error and timeout
rates and the queue size are written once per interval. About 13 s:

    python examples/serve.py
    llamamon record -- python examples/serve.py
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import queue
import random
import threading
import time
from functools import lru_cache

from llamamon import InferenceMonitor

CORPUS = """
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light,
it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had
everything before us, we had nothing before us, we were all going direct to Heaven, we were all going
direct the other way. There were a king with a large jaw and a queen with a plain face, on the throne
of England; there were a king with a large jaw and a queen with a fair face, on the throne of France.
In both countries it was clearer than crystal to the lords of the State preserves of loaves and fishes,
that things in general were settled for ever. Call me Ishmael. Some years ago, never mind how long
precisely, having little or no money in my purse, and nothing particular to interest me on shore, I
thought I would sail about a little and see the watery part of the world. It is a way I have of driving
off the spleen and regulating the circulation.
"""


class NGramModel:
    """Counts of the next character after every context of ``order`` characters."""

    def __init__(self, text: str, order: int = 5) -> None:
        self.order = order
        self.text = " ".join(text.split())
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for i in range(len(self.text) - order):
            self.counts[self.text[i : i + order]][self.text[i + order]] += 1
        self.alphabet = set(self.text)

    def generate(self, prompt: str, n_chars: int, seed: int) -> str:
        unknown = set(prompt) - self.alphabet
        if unknown:
            raise ValueError(f"prompt has characters the model never saw: {sorted(unknown)}")
        rng = random.Random(seed)
        out = prompt
        for _ in range(n_chars):
            context = out[-self.order :]
            nxt = self.counts.get(context)
            while not nxt and context:  # back off to shorter contexts
                context = context[1:]
                nxt = collections.Counter(
                    c for k, counter in self.counts.items() if k.endswith(context) for c in counter.elements()
                )
            if not nxt:
                out += rng.choice(sorted(self.alphabet))
                continue
            chars, weights = zip(*nxt.items(), strict=True)
            out += rng.choices(chars, weights)[0]
        return out[len(prompt) :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between derived metrics")
    parser.add_argument("--rate", type=float, default=40.0, help="requests arriving per second")
    parser.add_argument("--decode-ms", type=float, default=0.1, help="decode time per generated character")
    args = parser.parse_args()

    model = NGramModel(CORPUS)
    monitor = InferenceMonitor(interval=args.interval)

    @lru_cache(maxsize=64)
    def cached_generate(prompt: str, n_chars: int) -> str:
        started = time.perf_counter()
        text = model.generate(prompt, n_chars, seed=len(prompt))
        # Decoding is paced, as on an accelerator: what the n-gram lookups did not use of it is slept.
        time.sleep(max(0.0, len(text) * args.decode_ms / 1000 - (time.perf_counter() - started)))
        return text

    rng = random.Random(7)
    words = model.text.split()
    popular = [" ".join(words[i : i + 2]) for i in range(0, 40, 4)]
    requests: queue.Queue[tuple[str, int] | None] = queue.Queue()

    def next_request() -> tuple[str, int]:
        if rng.random() < 0.3:
            return rng.choice(popular), 400  # repeated prompts: cache hits
        if rng.random() < 0.05:
            return "Zyzzyva 42", 100  # characters the model never saw: an error
        start = rng.randrange(len(words) - 3)
        return " ".join(words[start : start + rng.randint(1, 3)]), rng.randint(500, 1500)

    def producer() -> None:
        # Arrivals on a schedule (``rate`` per second from the start), not a sleep after each: they keep
        # their pace however busy the workers or the machine are.
        start = time.perf_counter()
        for sent in range(args.requests):
            time.sleep(max(0.0, start + sent / args.rate - time.perf_counter()))
            requests.put(next_request())
            monitor.set_queue_size(requests.qsize())
        for _ in range(args.workers):
            requests.put(None)

    def worker() -> None:
        while (item := requests.get()) is not None:
            prompt, n_chars = item
            monitor.set_queue_size(requests.qsize())
            try:
                with monitor.track(tokens_in=len(prompt)) as req:
                    hits_before = cached_generate.cache_info().hits
                    text = cached_generate(prompt, n_chars)
                    req.cache_hit = cached_generate.cache_info().hits > hits_before
                    req.tokens_out = len(text)
            except ValueError:
                pass  # counted as an error by the monitor; a real server would answer 400

    threads = [threading.Thread(target=producer)] + [threading.Thread(target=worker) for _ in range(args.workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latency = asyncio.run(monitor.get_latency_metrics(window=3600))
    monitor.close()
    totals = monitor.totals
    print(
        f"served {totals['requests']} requests in {time.perf_counter() - started:.1f}s: "
        f"{totals['cache_hits']} cache hits, {totals['errors']} errors, {totals['tokens_out']} tokens; "
        f"latency p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms, max {latency['max']:.1f} ms",
        flush=True,
    )


if __name__ == "__main__":
    main()
