"""Slack and webhook channels against a real HTTP server on loopback: payloads, retries, timeouts."""

from __future__ import annotations

import asyncio
import logging
import time

from alert_events import FIRED_AT, gpu_alert
from loopback import HttpSink, closed_port

from llamamon.channels.dispatch import Dispatcher
from llamamon.channels.registry import build_channel
from llamamon.samples import AlertEvent, make_labels

SECRET_PATH = "/services/T0SECRET/B0SECRET/xoxbTOPSECRETTOKEN"
FAST = {"timeout": "2s", "attempts": 3, "backoff": "10ms"}


def event(rule="gpu_memory_high", state="firing", severity="critical", **kw) -> AlertEvent:
    kw.setdefault("labels", make_labels(alertname=rule, severity=severity, gpu="0", host="box"))
    kw.setdefault("ended_at", FIRED_AT + 600 if state == "resolved" else None)
    return gpu_alert(rule, state, severity, **kw)


def send(channel, events):
    return asyncio.run(channel.send(events))


def test_slack_message_carries_severity_rule_summary_value_host_run(sink):
    channel = build_channel("team", "slack", {"webhook_url": sink.url(SECRET_PATH), "channel": "#ml-ops", **FAST})
    delivery = send(channel, [event(), event("disk_full", "resolved", "warning", value=0.5)])

    assert delivery.ok, delivery.error
    assert (delivery.attempts, delivery.events) == (1, 2)
    [request] = sink.requests
    assert request.path == SECRET_PATH
    assert request.headers["content-type"] == "application/json"
    body = request.json()
    assert body["channel"] == "#ml-ops"
    assert body["text"] == "1 firing, 1 resolved: gpu_memory_high, disk_full on box"
    firing, resolved = body["attachments"]
    assert firing["color"] == "#d62728"
    assert firing["title"] == "[FIRING] critical gpu_memory_high"
    assert firing["text"] == "gpu_memory_high on gpu 0"
    shown = {f["title"]: f["value"] for f in firing["fields"]}
    assert shown["Severity"] == "critical"
    assert shown["Rule"] == "gpu_memory_high"
    assert shown["Value"] == "0.97"
    assert shown["Host"] == "box"
    assert shown["Run"] == "20260901T101500Z-box-3f2a"
    assert shown["Labels"] == "gpu=0"
    assert resolved["color"] == "#2eb886"
    assert resolved["title"] == "[RESOLVED] warning disk_full"
    assert {f["title"]: f["value"] for f in resolved["fields"]}["Duration"] == "10m00s"


def test_slack_text_is_escaped(sink):
    channel = build_channel("team", "slack", {"webhook_url": sink.url(), **FAST})
    tricky = event(annotations=make_labels(summary="loss < 0.5 & <!channel> ping"))
    assert send(channel, [tricky]).ok
    attachment = sink.requests[0].json()["attachments"][0]
    assert attachment["text"] == "loss &lt; 0.5 &amp; &lt;!channel&gt; ping"


def test_webhook_posts_alertmanager_payload_with_headers(sink):
    channel = build_channel(
        "ops_hook",
        "webhook",
        {"url": sink.url("/alerts"), "headers": {"Authorization": "Bearer s3cr3t-token"}, **FAST},
    )
    firing = event()
    resolved = event(state="resolved", labels=make_labels(gpu="1"))
    delivery = send(channel, [firing, resolved])

    assert delivery.ok, delivery.error
    [request] = sink.requests
    assert request.headers["authorization"] == "Bearer s3cr3t-token"
    body = request.json()
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "ops_hook"
    assert body["groupLabels"] == {"alertname": "gpu_memory_high"}
    assert body["commonLabels"] == {
        "alertname": "gpu_memory_high",
        "severity": "critical",
        "host": "box",
        "run": "20260901T101500Z-box-3f2a",
    }
    assert body["commonAnnotations"] == {"summary": "gpu_memory_high on gpu 0", "value": "0.97"}
    assert body["externalURL"] == ""
    assert body["truncatedAlerts"] == 0
    first, second = body["alerts"]
    assert set(first) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert first["status"] == "firing"
    assert first["labels"]["gpu"] == "0"
    assert first["startsAt"] == "2026-09-21T14:13:20Z"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert second["status"] == "resolved"
    assert second["endsAt"] == "2026-09-21T14:23:20Z"
    assert len(first["fingerprint"]) == 16
    assert first["fingerprint"] != second["fingerprint"]


def test_webhook_all_resolved_batch_has_status_resolved(sink):
    channel = build_channel("hook", "webhook", {"url": sink.url(), **FAST})
    assert send(channel, [event(state="resolved")]).ok
    assert sink.requests[0].json()["status"] == "resolved"


def test_server_error_then_success_is_retried(sink):
    sink.script.extend([500, 200])
    channel = build_channel("team", "slack", {"webhook_url": sink.url(SECRET_PATH), **FAST})
    delivery = send(channel, [event()])
    assert delivery.ok, delivery.error
    assert delivery.attempts == 2
    assert len(sink.requests) == 2
    assert sink.requests[0].body == sink.requests[1].body


def test_server_errors_exhaust_attempts(sink):
    sink.script.extend([503, 503, 503, 200])
    channel = build_channel("hook", "webhook", {"url": sink.url(), **FAST})
    delivery = send(channel, [event()])
    assert not delivery.ok
    assert delivery.attempts == 3
    assert len(sink.requests) == 3
    assert "HTTP 503" in delivery.error


def test_client_error_is_not_retried(sink):
    sink.script.append(404)
    channel = build_channel("team", "slack", {"webhook_url": sink.url(SECRET_PATH), **FAST})
    delivery = send(channel, [event()])
    assert not delivery.ok
    assert delivery.attempts == 1
    assert len(sink.requests) == 1
    assert delivery.error == (f"HTTP 404 Not Found from http://127.0.0.1:{sink.port}/services/T0…/***: server says no")


def test_hanging_server_hits_the_timeout(sink):
    sink.script.extend(["hang", "hang"])
    channel = build_channel("hook", "webhook", {"url": sink.url(), "timeout": "300ms", "attempts": 2, "backoff": 0})
    started = time.monotonic()
    delivery = send(channel, [event()])
    elapsed = time.monotonic() - started
    assert not delivery.ok
    assert delivery.attempts == 2
    assert "no answer" in delivery.error
    assert "within 300ms" in delivery.error or "within 0.3s" in delivery.error
    # Bounded: two 0.3 s attempts, not the 30 s the sink would hold the request.
    assert elapsed < 10


def test_refused_channel_is_counted_and_others_still_deliver(sink, caplog):
    broken = build_channel("broken", "webhook", {"url": f"http://127.0.0.1:{closed_port()}/x", **FAST})
    working = build_channel("team", "slack", {"webhook_url": sink.url(SECRET_PATH), **FAST})
    dispatcher = Dispatcher({"broken": broken, "team": working})

    with caplog.at_level(logging.INFO, logger="llamamon"):
        deliveries = asyncio.run(dispatcher.dispatch([event()]))

    outcome = {d.channel: d for d in deliveries}
    assert outcome["team"].ok
    assert not outcome["broken"].ok
    assert outcome["broken"].attempts == 3
    assert outcome["broken"].error.startswith("connection refused by http://127.0.0.1:")
    assert len(sink.requests) == 1
    assert dispatcher.failures == {"broken": 1, "team": 0}
    samples = {dict(s.labels)["channel"]: s for s in dispatcher.failure_samples()}
    assert samples["broken"].metric == "notification_failures"
    assert (samples["broken"].value, samples["team"].value) == (1.0, 0.0)
    assert "webhook channel 'broken': delivery failed after 3 attempt(s): connection refused" in caplog.text


def test_hanging_channel_does_not_delay_the_others(sink):
    slow_sink = HttpSink()
    try:
        slow_sink.script.append("hang")
        slow = build_channel("slow", "webhook", {"url": slow_sink.url(), "timeout": "1s", "attempts": 1})
        fast = build_channel("fast", "webhook", {"url": sink.url(), **FAST})
        deliveries = asyncio.run(Dispatcher({"slow": slow, "fast": fast}).dispatch([event()]))
    finally:
        slow_sink.close()
    outcome = {d.channel: d for d in deliveries}
    assert not outcome["slow"].ok
    assert outcome["slow"].elapsed >= 0.9
    assert outcome["fast"].ok
    assert outcome["fast"].elapsed < outcome["slow"].elapsed


def test_events_go_to_the_channels_their_rule_names(sink, caplog):
    a = build_channel("a", "webhook", {"url": sink.url("/a"), **FAST})
    b = build_channel("b", "webhook", {"url": sink.url("/b"), "send_resolved": False, **FAST})
    dispatcher = Dispatcher({"a": a, "b": b})
    events = [
        event("only_a", channels=("a",)),
        event("everywhere"),
        event("resolved_everywhere", state="resolved"),
        event("nowhere", channels=("missing",)),
        event("nowhere_again", channels=("missing",)),
    ]
    with caplog.at_level(logging.WARNING, logger="llamamon"):
        deliveries = asyncio.run(dispatcher.dispatch(events))
    assert sorted(d.channel for d in deliveries) == ["a", "b"]
    by_path = {r.path: [al["labels"]["alertname"] for al in r.json()["alerts"]] for r in sink.requests}
    assert by_path == {"/a": ["only_a", "everywhere", "resolved_everywhere"], "/b": ["everywhere"]}
    assert caplog.text.count("names channel 'missing', which is not configured") == 1


def test_no_secret_in_logs_errors_or_reprs(sink, caplog):
    token = "Bearer s3cr3t-token-value"
    sink.script.extend([500, 500, 500])
    slack = build_channel("team", "slack", {"webhook_url": sink.url(SECRET_PATH), **FAST})
    hook = build_channel(
        "hook",
        "webhook",
        {"url": f"http://user:pa55word@127.0.0.1:{closed_port()}{SECRET_PATH}", "headers": {"X-Token": token}, **FAST},
    )
    with caplog.at_level(logging.DEBUG, logger="llamamon"):
        deliveries = asyncio.run(Dispatcher({"team": slack, "hook": hook}).dispatch([event()]))

    assert not any(d.ok for d in deliveries)
    visible = caplog.text + "".join(f"{d!r}{d.error}" for d in deliveries) + repr(slack) + str(slack) + repr(hook)
    for secret in ("T0SECRET/B0SECRET", "B0SECRET", "xoxbTOPSECRETTOKEN", "pa55word", "s3cr3t"):
        assert secret not in visible
    assert "/services/T0…/***" in caplog.text


def test_credentials_in_the_url_become_basic_auth(sink):
    channel = build_channel("hook", "webhook", {"url": f"http://bot:pa%3Ass@127.0.0.1:{sink.port}/in", **FAST})
    assert send(channel, [event()]).ok
    [request] = sink.requests
    assert request.path == "/in"
    assert request.headers["authorization"] == "Basic Ym90OnBhOnNz"  # bot:pa:ss


def test_background_batches_keep_their_order_per_channel(sink):
    sink.script.extend([500, 200])
    channel = build_channel("hook", "webhook", {"url": sink.url(), **FAST})
    dispatcher = Dispatcher({"hook": channel})

    async def scenario():
        first = dispatcher.submit([event()])
        second = dispatcher.submit([event(state="resolved")])
        assert not first.done()  # the caller goes on while delivery happens
        assert await dispatcher.drain(timeout=10) == 0
        return first.result(), second.result()

    (first,), (second,) = asyncio.run(scenario())
    assert (first.ok, first.attempts, second.ok, second.attempts) == (True, 2, True, 1)
    assert [r.json()["status"] for r in sink.requests] == ["firing", "firing", "resolved"]


def test_drain_cancels_deliveries_that_outlast_it(sink):
    sink.script.append("hang")
    channel = build_channel("hook", "webhook", {"url": sink.url(), "timeout": "1s", "attempts": 1})
    dispatcher = Dispatcher({"hook": channel})

    async def scenario():
        task = dispatcher.submit([event()])
        left = await dispatcher.drain(timeout=0.2)
        return left, task.cancelled()

    assert asyncio.run(scenario()) == (1, True)


def test_a_dispatcher_serves_several_event_loops(sink):
    sink.script.extend([500, 200, 500, 200])
    dispatcher = Dispatcher({"hook": build_channel("hook", "webhook", {"url": sink.url(), **FAST})})

    async def two_batches():
        return await asyncio.gather(dispatcher.dispatch([event()]), dispatcher.dispatch([event(state="resolved")]))

    for _ in range(2):  # the second run would hit a lock bound to the first, closed loop
        results = asyncio.run(two_batches())
        assert all(d.ok for batch in results for d in batch)
    assert len(sink.requests) == 6
