"""A loopback /metrics server for the golden files, and the golden's "earlier" self.

A golden is one moment of a server; rates, ratios and histogram deltas need two. The earlier moment is
the same file with every counter and histogram series at half its value (buckets stay cumulative and
monotonic, ratios and means stay the same), so each mapped metric's expected value follows from the
golden's own numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llamamon.prometheus.text import parse

GOLDENS = Path(__file__).parent / "goldens" / "metrics"


def golden(name: str) -> str:
    return (GOLDENS / f"{name}.prom").read_text(encoding="utf-8")


def cumulative_series(text: str) -> set[str]:
    """Sample names of the counters and histograms in ``text`` (the series that only grow)."""
    names = set()
    for family in parse(text):
        if family.type in ("counter", "histogram"):
            names.update(p.name for p in family.points if not p.name.endswith("_created"))
    return names


def earlier(text: str, factor: float = 0.5) -> str:
    """``text`` with every counter and histogram sample's value times ``factor``."""
    grow = cumulative_series(text)
    out = []
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if line and not line.startswith("#") and name in grow:
            head, value = line.rsplit(" ", 1)
            line = f"{head} {float(value) * factor!r}"
        out.append(line)
    return "\n".join(out) + "\n"


def value(text: str, sample: str, **labels: str) -> float:
    """Sum of ``sample``'s points in ``text`` whose labels include ``labels``."""
    total = 0.0
    for family in parse(text):
        for point in family.points:
            if point.name == sample and labels.items() <= dict(point.labels).items():
                total += point.value
    return total


class MetricsServer:
    """Serves ``bodies`` in turn on GET (the last one from then on), with ``status`` as the HTTP code."""

    def __init__(self, bodies: Sequence[str], status: int = 200) -> None:
        self.bodies = list(bodies)
        self.served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.bodies[min(server.served, len(server.bodies) - 1)].encode()
                server.served += 1
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(5)
