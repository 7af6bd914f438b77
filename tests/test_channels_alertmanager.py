"""The Alertmanager channel against a real Alertmanager (Debian prometheus-alertmanager) on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request

import pytest
from alert_events import gpu_alert
from conftest import require_binary
from loopback import HttpSink, closed_port, wait_until

from llamamon.channels.registry import build_channel
from llamamon.channels.webhook import webhook_payload
from llamamon.samples import AlertEvent, make_labels

pytestmark = pytest.mark.integration

CONFIG = """\
route:
  receiver: sink
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
receivers:
  - name: sink
    webhook_configs:
      - url: {url}
"""


@pytest.fixture(scope="module")
def am_webhook_sink():
    # What Alertmanager itself sends to a webhook receiver: the reference for llamamon's webhook channel.
    server = HttpSink()
    yield server
    server.close()


def _get(url: str):
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory, am_webhook_sink):
    binary = require_binary("prometheus-alertmanager", "alertmanager")
    folder = tmp_path_factory.mktemp("alertmanager")
    (folder / "alertmanager.yml").write_text(CONFIG.format(url=am_webhook_sink.url("/from-alertmanager")))
    port = closed_port()
    with open(folder / "alertmanager.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'alertmanager.yml'}",
                f"--storage.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # empty: no gossip port, a single standalone instance
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready():
        if process.poll() is not None:
            raise AssertionError(f"alertmanager exited: {(folder / 'alertmanager.log').read_text()[-2000:]}")
        try:
            return _get(f"{url}/-/ready")[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, timeout=30, interval=0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def listed(url: str) -> list[dict]:
    return json.loads(_get(f"{url}/api/v2/alerts")[1])


def event(state: str, started: float, ended: float | None = None) -> AlertEvent:
    summary = make_labels(summary="GPU 0 memory above 95%")
    return gpu_alert(state=state, annotations=summary, started_at=started, ended_at=ended)


def find(alerts: list[dict], run: str) -> dict | None:
    return next(
        (a for a in alerts if a["labels"].get("alertname") == "gpu_memory_high" and a["labels"].get("run") == run), None
    )


def test_firing_is_listed_and_resolve_ends_it(alertmanager):
    channel = build_channel(
        "am", "alertmanager", {"url": alertmanager, "generator_url": "http://box:9000/report", "timeout": "5s"}
    )
    started = time.time() - 30
    firing = event("firing", started)
    delivery = asyncio.run(channel.send([firing]))
    assert delivery.ok, delivery.error

    alert = wait_until(lambda: find(listed(alertmanager), firing.run))
    assert alert["status"]["state"] == "active"
    assert alert["labels"] == {
        "alertname": "gpu_memory_high",
        "severity": "critical",
        "gpu": "0",
        "host": "box",
        "run": "20260901T101500Z-box-3f2a",
    }
    assert alert["annotations"] == {"summary": "GPU 0 memory above 95%", "value": "0.97"}
    assert alert["generatorURL"] == "http://box:9000/report"

    resolved = event("resolved", started, ended=time.time() - 1)
    delivery = asyncio.run(channel.send([resolved]))
    assert delivery.ok, delivery.error
    # The v2 API lists only alerts that have not ended: the resolve took it off the list.
    wait_until(lambda: find(listed(alertmanager), firing.run) is None)


def test_generator_url_links_each_alert_to_its_run(alertmanager):
    # The "Source" link Alertmanager shows: the run's dashboard, with the run and host of this alert.
    source = "http://grafana.local:3000/d/llamamon?var-run={run}&var-host={host}&rule={rule}"
    channel = build_channel("am", "alertmanager", {"url": alertmanager, "generator_url": source, "timeout": "5s"})
    firing = AlertEvent(
        **{
            **{f: getattr(event("firing", time.time()), f) for f in AlertEvent.__dataclass_fields__},
            "run": "20260901T101500Z-box-link",
            "host": "box one",
        }
    )
    assert asyncio.run(channel.send([firing])).ok
    alert = wait_until(lambda: find(listed(alertmanager), firing.run))
    assert alert["generatorURL"] == (
        "http://grafana.local:3000/d/llamamon?var-run=20260901T101500Z-box-link&var-host=box%20one&rule=gpu_memory_high"
    )
    # The webhook channel links the same way.
    (hooked,) = webhook_payload([firing], receiver="sink", generator_url=source)["alerts"]
    assert hooked["generatorURL"] == alert["generatorURL"]


def test_alert_alertmanager_rejects_is_a_failed_delivery_without_retry(alertmanager):
    channel = build_channel("am", "alertmanager", {"url": alertmanager, "attempts": 3, "backoff": "10ms"})
    # "bad-name" is not a valid Prometheus label name: Alertmanager answers 400, which no retry can fix.
    bad = AlertEvent(
        **{
            **{f: getattr(event("firing", time.time()), f) for f in AlertEvent.__dataclass_fields__},
            "labels": make_labels({"bad-name": "x"}),
        }
    )
    delivery = asyncio.run(channel.send([bad]))
    assert not delivery.ok
    assert delivery.attempts == 1
    assert delivery.error.startswith(f"HTTP 400 Bad Request from {alertmanager}/api/v2")
    assert "bad-name" in delivery.error


def test_webhook_payload_has_the_shape_alertmanager_itself_sends(alertmanager, am_webhook_sink):
    channel = build_channel("am", "alertmanager", {"url": alertmanager, "timeout": "5s"})
    firing = AlertEvent(
        **{
            **{f: getattr(event("firing", time.time()), f) for f in AlertEvent.__dataclass_fields__},
            "rule": "shape_check",
            "run": "shape-run",
        }
    )
    assert asyncio.run(channel.send([firing])).ok
    theirs = wait_until(
        lambda: next(
            (r.json() for r in am_webhook_sink.requests if r.json()["commonLabels"].get("alertname") == "shape_check"),
            None,
        ),
        timeout=20,
    )
    ours = webhook_payload([firing], receiver="sink")
    assert set(ours) == set(theirs)
    assert set(ours["alerts"][0]) == set(theirs["alerts"][0])
    assert ours["version"] == theirs["version"] == "4"
    assert ours["status"] == theirs["status"] == "firing"
    assert ours["alerts"][0]["labels"] == theirs["alerts"][0]["labels"]
    assert ours["alerts"][0]["annotations"] == theirs["alerts"][0]["annotations"]
    assert ours["groupLabels"] == theirs["groupLabels"] == {"alertname": "shape_check"}
    assert ours["commonLabels"] == theirs["commonLabels"]
    assert ours["groupKey"].endswith(theirs["groupKey"].split(":", 1)[1])
