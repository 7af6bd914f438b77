"""Email channel against a real SMTP server (aiosmtpd) on loopback: plain, STARTTLS, TLS, auth."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging

import psutil
import pytest
from alert_events import FIRED_AT, gpu_alert
from loopback import SmtpServer, closed_port, self_signed_cert, server_tls_context

from llamamon.channels.registry import build_channel
from llamamon.samples import AlertEvent, make_labels

PASSWORD = "c0rrect-h0rse"
FAST = {"timeout": "5s", "attempts": 2, "backoff": "10ms"}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def starttls_smtp(certificate):
    server = SmtpServer(users={"alice": PASSWORD}, tls=server_tls_context(*certificate))
    yield server
    server.close()


def event(rule="gpu_memory_high", state="firing", severity="critical") -> AlertEvent:
    summary = make_labels(summary=f"{rule} <b>on</b> gpu 0")
    return gpu_alert(
        rule, state, severity, annotations=summary, ended_at=FIRED_AT + 60 if state == "resolved" else None
    )


def mail_channel(port, **options):
    settings = {
        "smtp_server": f"127.0.0.1:{port}",
        "from_address": "llamamon@box.example",
        "to_addresses": ["ops@example.org", "oncall@example.org"],
        **FAST,
    }
    settings.update(options)
    return build_channel("mail", "email", settings)


def send(channel, events):
    return asyncio.run(channel.send(events))


def parts(mail):
    message = email.message_from_bytes(mail.content, policy=email.policy.default)
    return message, message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()


def test_one_mail_per_batch_with_text_and_html_parts(smtp):
    channel = mail_channel(smtp.port, tls="none")
    delivery = send(channel, [event(), event("disk_full", "resolved", "warning")])

    assert delivery.ok, delivery.error
    [mail] = smtp.mails
    assert mail.mail_from == "llamamon@box.example"
    assert mail.rcpt_tos == ["ops@example.org", "oncall@example.org"]
    message, text, html = parts(mail)
    assert message["Subject"] == "[llamamon] 1 firing, 1 resolved: gpu_memory_high, disk_full on box"
    assert message["To"] == "ops@example.org, oncall@example.org"
    assert "[FIRING] critical gpu_memory_high" in text
    assert "[RESOLVED] warning disk_full" in text
    assert "Value:       0.97" in text
    assert "Run:         20260901T101500Z-box-3f2a" in text
    assert "Duration:    1m00s" in text
    assert "gpu_memory_high &lt;b&gt;on&lt;/b&gt; gpu 0" in html
    assert "#d62728" in html
    assert "#2eb886" in html


def test_auto_mode_uses_plain_smtp_when_no_starttls_is_offered(smtp):
    assert send(mail_channel(smtp.port), [event()]).ok
    assert smtp.mails[0].tls is False


def test_starttls_with_authentication(starttls_smtp, certificate):
    cert, _ = certificate
    channel = mail_channel(starttls_smtp.port, tls="starttls", ca_file=str(cert), username="alice", password=PASSWORD)
    delivery = send(channel, [event()])
    assert delivery.ok, delivery.error
    [mail] = starttls_smtp.mails
    assert mail.tls is True
    assert mail.login == "alice"
    assert starttls_smtp.logins == ["alice"]


def test_auto_mode_upgrades_when_the_server_offers_starttls(starttls_smtp, certificate, monkeypatch):
    monkeypatch.setenv("LLAMAMON_TEST_SMTP_PASSWORD", PASSWORD)
    channel = mail_channel(
        starttls_smtp.port,
        ca_file=str(certificate[0]),
        username="alice",
        password_env="LLAMAMON_TEST_SMTP_PASSWORD",
    )
    delivery = send(channel, [event()])
    assert delivery.ok, delivery.error
    assert starttls_smtp.mails[0].tls is True


def test_implicit_tls(certificate):
    server = SmtpServer(users={"alice": PASSWORD}, tls=server_tls_context(*certificate), implicit_tls=True)
    try:
        channel = mail_channel(server.port, tls="ssl", ca_file=str(certificate[0]), username="alice", password=PASSWORD)
        delivery = send(channel, [event()])
    finally:
        server.close()
    assert delivery.ok, delivery.error
    assert server.mails[0].tls is True
    assert server.logins == ["alice"]


def test_wrong_password_is_one_clear_line_without_the_password(starttls_smtp, certificate, caplog):
    wrong = "wr0ng-passw0rd"
    channel = mail_channel(
        starttls_smtp.port, tls="starttls", ca_file=str(certificate[0]), username="alice", password=wrong
    )
    with caplog.at_level(logging.DEBUG, logger="llamamon"):
        delivery = send(channel, [event()])
    assert not delivery.ok
    assert delivery.attempts == 1  # a wrong password does not get better by retrying
    assert delivery.error.startswith(
        f"SMTP authentication failed for user 'alice' at 127.0.0.1:{starttls_smtp.port}: 535"
    )
    assert "\n" not in delivery.error
    assert starttls_smtp.mails == []
    assert wrong not in caplog.text + delivery.error + repr(channel) + str(channel)
    assert "delivery failed after 1 attempt(s): SMTP authentication failed" in caplog.text


def test_a_failed_send_leaves_no_connection_open_when_the_server_is_slow_to_close(certificate):
    server = SmtpServer(users={"alice": PASSWORD}, tls=server_tls_context(*certificate), stall_after_refusal=0.5)
    try:
        channel = mail_channel(
            server.port, tls="starttls", ca_file=str(certificate[0]), username="alice", password="wr0ng"
        )
        delivery = send(channel, [event()])
        still_open = [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == server.port]
    finally:
        server.close()
    assert not delivery.ok
    # Why: an open socket here is one leaked descriptor per failed delivery for as long as `watch` runs.
    assert still_open == []


def test_untrusted_certificate_is_reported_and_not_retried(starttls_smtp):
    channel = mail_channel(starttls_smtp.port, tls="starttls", username="alice", password=PASSWORD)
    delivery = send(channel, [event()])
    assert not delivery.ok
    assert delivery.attempts == 1
    assert "certificate" in delivery.error
    assert PASSWORD not in delivery.error


def test_starttls_required_but_not_offered(smtp):
    delivery = send(mail_channel(smtp.port, tls="starttls"), [event()])
    assert not delivery.ok
    assert delivery.attempts == 1
    assert "STARTTLS" in delivery.error


def test_refused_connection_is_retried_then_reported():
    port = closed_port()
    delivery = send(mail_channel(port), [event()])
    assert not delivery.ok
    assert delivery.attempts == 2
    assert delivery.error.startswith(f"cannot reach 127.0.0.1:{port}")


def test_value_is_in_the_unit_of_the_rules_templates_with_its_unit(smtp):
    # A latency rule: stored in ms, $value in seconds (as Prometheus); the mail's Value says the same.
    from llamamon.rules import lang
    from llamamon.rules.model import Rule
    from llamamon.rules.states import AlertStates

    rule = Rule(
        "latency_high",
        lang.parse("p95(inference_latency, 5m) > 500ms"),
        annotations={"summary": "p95 latency {{ $value }}s", "description": "{{ $value | humanizeDuration }}"},
    )
    states = AlertStates()
    labels = make_labels(host="box", run="20260901T101500Z-box-3f2a")
    [fired] = states.step(rule, 1_790_000_000.0, {labels: 97840.0})
    [resolved] = states.step(rule, 1_790_000_060.0, {})
    assert send(mail_channel(smtp.port, tls="none"), [fired, resolved]).ok
    _message, text, html = parts(smtp.mails[0])
    assert text.count("Value:       97.84 s (1m38s)") == 2
    assert "Summary:     p95 latency 97.84s" in text
    assert "Description: 1m 37s" in text
    assert "9.784e+04" not in text
    assert "<td>97.84 s (1m38s)</td>" in html
