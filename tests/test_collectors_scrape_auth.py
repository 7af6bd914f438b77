"""``scrape:`` entries with headers, bearer or basic auth and a timeout, against a loopback server that checks them.

The secrets come from ``${VAR}``s and must reach the server and nothing else: no warning, no file of a
recorded run. A value whose variable is unset is not sent (said once), never sent as ``${VAR}``.
"""

from __future__ import annotations

import base64
import http.server
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamamon.collectors.scrape import ScrapeCollector
from llamamon.config import load_config
from llamamon.errors import ConfigError
from tests.conftest import REPO, llamamon_env, run_llamamon

TOKEN = "tok-s3cr3t-BEARER"
PASSWORD = "pw-s3cr3t-BASIC"
BODY = b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 4\n"


class _AuthServer:
    """Answers /metrics only with the expected Authorization (and X-Scope-OrgID, when asked); remembers requests."""

    def __init__(self, authorization: str, org: str | None = None, delay: float = 0.0) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append({k.lower(): v for k, v in self.headers.items()})  # names are case-blind
                if delay:
                    time.sleep(delay)
                ok = self.headers.get("Authorization") == authorization
                ok = ok and (org is None or self.headers.get("X-Scope-OrgID") == org)
                try:
                    self.send_response(200 if ok else 401)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(BODY if ok else b"unauthorized\n")
                except BrokenPipeError:
                    pass  # the client timed out first (test_per_target_timeout)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_server() -> Iterator[type[_AuthServer]]:
    started: list[_AuthServer] = []

    def start(*args: object, **kw: object) -> _AuthServer:
        server = _AuthServer(*args, **kw)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.close()


def _targets(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "monitoring.yaml"
    path.write_text(body)
    return load_config(path).scrape


def _queue(samples) -> list[float]:
    return [s.value for s in samples if s.metric == "batch_queue_size"]


def test_bearer_token_from_the_environment(tmp_path, monkeypatch, auth_server, caplog):
    server = auth_server(f"Bearer {TOKEN}")
    body = f"scrape:\n  - url: {server.url}\n    bearer_token: ${{VLLM_TOKEN}}\n    timeout: 2s\n"
    (target,) = _targets(tmp_path, body, monkeypatch, VLLM_TOKEN=TOKEN)
    assert target.timeout == 2.0
    with caplog.at_level(logging.INFO, logger="llamamon.collectors"):
        assert _queue(ScrapeCollector.from_target(target, default_timeout=5.0).scrape()) == [4.0]
        # Without the token the server says 401: one warning that names the endpoint, never the token.
        assert ScrapeCollector(server.url, timeout=2.0).scrape() == []
    assert server.seen[0]["authorization"] == f"Bearer {TOKEN}"
    (warning,) = [m for m in caplog.messages if "HTTP 401" in m]
    assert warning.startswith(f"scrape {server.url}: HTTP 401 (check the entry's headers, bearer_token or basic_auth)")
    assert TOKEN not in caplog.text


def test_basic_auth_and_headers(tmp_path, monkeypatch, auth_server):
    expected = "Basic " + base64.b64encode(f"scraper:{PASSWORD}".encode()).decode()
    server = auth_server(expected, org="team-ml")
    body = (
        f"scrape:\n  - url: {server.url}\n    headers: {{X-Scope-OrgID: team-ml}}\n"
        "    basic_auth:\n      username: scraper\n      password: ${SCRAPE_PASSWORD}\n"
    )
    (target,) = _targets(tmp_path, body, monkeypatch, SCRAPE_PASSWORD=PASSWORD)
    assert _queue(ScrapeCollector.from_target(target, default_timeout=5.0).scrape()) == [4.0]
    assert server.seen[-1]["x-scope-orgid"] == "team-ml"


def test_an_unset_variable_is_not_sent_and_said_once(tmp_path, monkeypatch, auth_server, caplog):
    server = auth_server(f"Bearer {TOKEN}")
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    (target,) = _targets(
        tmp_path, f"scrape:\n  - {{url: {server.url}, bearer_token: '${{NO_SUCH_TOKEN}}'}}\n", monkeypatch
    )
    with caplog.at_level(logging.WARNING, logger="llamamon.collectors"):
        collector = ScrapeCollector.from_target(target, default_timeout=5.0)
        assert collector.scrape() == []
    assert "authorization" not in server.seen[0]  # not "Bearer ${NO_SUCH_TOKEN}"
    assert caplog.messages[0] == (
        f"scrape {server.url}: not sending Authorization (${{NO_SUCH_TOKEN}} is not set); "
        "the endpoint is scraped without it"
    )


def test_per_target_timeout(tmp_path, monkeypatch, auth_server, caplog):
    server = auth_server(f"Bearer {TOKEN}", delay=3.0)
    body = f"scrape:\n  - {{url: {server.url}, bearer_token: {TOKEN}, timeout: 200ms}}\n"
    (target,) = _targets(tmp_path, body, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="llamamon.collectors"):
        assert ScrapeCollector.from_target(target, default_timeout=10.0).scrape() == []
    assert "timed out" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("entry", "line", "message"),
    [
        ("{url: 'http://x/metrics', bearer: t}", 2, 'scrape[0].bearer: unknown key (did you mean "bearer_token"?)'),
        ("{url: 'http://x/metrics', timeout: 0s}", 2, "scrape[0].timeout: must be more than 0 (got '0s')"),
        ("{bearer_token: t}", 2, "scrape[0]: missing key url"),
        (
            "{url: 'http://x/metrics', bearer_token: t, basic_auth: {username: u, password: p}}",
            2,
            "scrape[0]: bearer_token and basic_auth both set an Authorization header; keep one",
        ),
        ("{url: 'http://x/metrics', basic_auth: {username: u}}", 2, "scrape[0].basic_auth: missing key password"),
    ],
)
def test_bad_entries_name_file_line_and_key(tmp_path, entry, line, message):
    path = tmp_path / "monitoring.yaml"
    path.write_text(f"scrape:\n  - {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines()[0] == f"{path}:{line}: {message}"


def test_record_scrapes_with_the_token_and_writes_it_nowhere(tmp_path, auth_server):
    server = auth_server(f"Bearer {TOKEN}")
    (tmp_path / "monitoring.yaml").write_text(f"scrape:\n  - url: {server.url}\n    bearer_token: ${{VLLM_TOKEN}}\n")
    job = "import time; time.sleep(1.5)"
    result = run_llamamon(
        "record", "--interval", "0.3", "--no-gpu", "--", sys.executable, "-c", job,
        cwd=tmp_path, env=llamamon_env(VLLM_TOKEN=TOKEN), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert len(server.seen) >= 2
    assert all(seen["authorization"] == f"Bearer {TOKEN}" for seen in server.seen)
    assert TOKEN.encode() not in result.stdout + result.stderr
    files = [p for p in (tmp_path / ".metrics").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    assert not [p for p in files if TOKEN.encode() in p.read_bytes()]
    exported = run_llamamon("export", "prometheus", "--latest", cwd=tmp_path)
    assert b"llamamon_batch_queue_size{" in exported.stdout  # the scraped value made it through


def test_the_commented_example_in_monitoring_yaml_is_valid(tmp_path, monkeypatch):
    lines = (REPO / "monitoring.yaml").read_text().splitlines()
    start = lines.index("# scrape:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    first, second = _targets(tmp_path, "\n".join(block) + "\n", monkeypatch, VLLM_TOKEN=TOKEN)
    assert first.url == "http://127.0.0.1:8000/metrics"
    assert (second.bearer_token, second.headers, second.timeout) == (TOKEN, {"X-Scope-OrgID": "team-ml"}, 3.0)
