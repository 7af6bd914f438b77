"""Building channels from configuration: validation errors, secret masking, light imports."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from dataclasses import dataclass

import pytest
from conftest import llamamon_env

from llamamon.channels.alertmanager import alertmanager_alerts
from llamamon.channels.base import BaseChannel, RetryPolicy
from llamamon.channels.dispatch import Dispatcher
from llamamon.channels.email import parse_server
from llamamon.channels.registry import build_channel, build_channels
from llamamon.config.loader import UnsetVariable
from llamamon.errors import ConfigError
from llamamon.masking import mask_secret, mask_url, masked_options, scrub
from llamamon.samples import AlertEvent, make_labels

SLACK_URL = "https://hooks.slack.com/services/T0ABCDEF/B0GHIJKL/abcdefSECRETxyz"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SLACK_URL, "https://hooks.slack.com/services/T0…/***"),
        ("https://user:pw@example.org/hook?token=abc", "https://example.org/***"),
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("http://127.0.0.1:9093/", "http://127.0.0.1:9093"),
        ("http://[::1]:8080/a/b", "http://[::1]:8080/a/b…/***"),
        ("not a url", "***"),
        ("http://host:notaport/x", "***"),
    ],
)
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_masked_options_hides_secrets_and_keeps_the_rest():
    options = {
        "webhook_url": SLACK_URL,
        "channel": "#ops",
        "password": "hunter22",
        "api_token": "tok",
        "headers": {"Authorization": "Bearer abc"},
        "timeout": "5s",
        "username": "alice",
    }
    assert masked_options(options) == {
        "webhook_url": "https://hooks.slack.com/services/T0…/***",
        "channel": "#ops",
        "password": "***",
        "api_token": "***",
        "headers": {"Authorization": "***"},
        "timeout": "5s",
        "username": "alice",
    }
    assert mask_secret("") == ""


def test_scrub_replaces_secrets_and_url_credentials():
    text = f"failed posting to {SLACK_URL} with password hunter22 via https://bob:pw99@proxy.example/x"
    cleaned = scrub(text, [SLACK_URL, "hunter22"])
    assert "SECRET" not in cleaned
    assert "hunter22" not in cleaned
    assert "pw99" not in cleaned
    assert "https://hooks.slack.com/services/T0…/***" in cleaned


def test_channel_reprs_never_show_secrets():
    channels = [
        build_channel("team", "slack", {"webhook_url": SLACK_URL}),
        build_channel("hook", "webhook", {"url": SLACK_URL, "headers": {"X-Key": "k3y-value"}}),
        build_channel("am", "alertmanager", {"url": "http://u:am-pass@127.0.0.1:9093"}),
        build_channel(
            "mail",
            "email",
            {
                "smtp_server": "smtp.example.org",
                "from_address": "a@b.c",
                "to_addresses": "d@e.f",
                "username": "alice",
                "password": "hunter22",
            },
        ),
    ]
    shown = " ".join(f"{c!r} {c}" for c in channels)
    for secret in ("SECRET", "B0GHIJKL", "k3y-value", "am-pass", "hunter22"):
        assert secret not in shown
    assert "https://hooks.slack.com/services/T0…/***" in shown
    assert "alice@smtp.example.org:25" in shown


@pytest.mark.parametrize(
    ("name", "type_", "options", "message"),
    [
        ("pagerduty", None, {}, "alerts.channels.pagerduty: unknown channel type 'pagerduty': name the channel"),
        ("ops", "slak", {}, "alerts.channels.ops.type: unknown channel type 'slak' (did you mean \"slack\"?)"),
        ("slack", None, {}, "alerts.channels.slack.webhook_url: is required"),
        ("slack", None, {"webhook_url": "hooks.slack.com/x"}, "alerts.channels.slack.webhook_url: expected an http"),
        (
            "slack",
            None,
            {"webhook_url": SLACK_URL, "webhook_ulr": 1},
            'alerts.channels.slack.webhook_ulr: unknown option (did you mean "webhook_url"?)',
        ),
        (
            "slack",
            None,
            {"webhook_url": SLACK_URL, "timeout": "soon"},
            "alerts.channels.slack.timeout: expected a duration such as 30s or 2m (got 'soon')",
        ),
        (
            "slack",
            None,
            {"webhook_url": SLACK_URL, "attempts": 0},
            "alerts.channels.slack.attempts: expected a whole number >= 1 (got 0)",
        ),
        ("webhook", None, {"url": "http://x", "headers": ["a"]}, "alerts.channels.webhook.headers: expected a mapping"),
        (
            "email",
            None,
            {"from_address": "a@b", "to_addresses": "c@d"},
            "alerts.channels.email.smtp_server: is required",
        ),
        (
            "email",
            None,
            {"smtp_server": "h:99999", "from_address": "a@b", "to_addresses": "c@d"},
            "alerts.channels.email.smtp_server: expected host or host:port (got 'h:99999')",
        ),
        (
            "email",
            None,
            {"smtp_server": "h", "from_address": "a@b", "to_addresses": "c@d", "tls": "yes"},
            "alerts.channels.email.tls: expected one of auto, starttls, ssl, none (got 'yes')",
        ),
        (
            "email",
            None,
            {"smtp_server": "h", "from_address": "nobody", "to_addresses": "c@d"},
            "alerts.channels.email.from_address: not an email address: 'nobody'",
        ),
        (
            "email",
            None,
            {"smtp_server": "h", "from_address": "a@b", "to_addresses": []},
            "alerts.channels.email.to_addresses: must name at least one entry",
        ),
        (
            "email",
            None,
            {"smtp_server": "h", "from_address": "a@b", "to_addresses": "c@d", "username": "u"},
            "alerts.channels.email.password: is required when username is set",
        ),
        (
            "email",
            None,
            {
                "smtp_server": "h",
                "from_address": "a@b",
                "to_addresses": "c@d",
                "username": "u",
                "password_env": "LLAMAMON_TEST_UNSET_VARIABLE",
            },
            "alerts.channels.email.password_env: environment variable LLAMAMON_TEST_UNSET_VARIABLE is not set",
        ),
    ],
)
def test_bad_options_name_the_key(name, type_, options, message):
    with pytest.raises(ConfigError) as caught:
        build_channel(name, type_, options)
    assert str(caught.value).startswith(message)


def test_malformed_secret_url_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        build_channel("slack", None, {"webhook_url": "htps://hooks.slack.com/services/T0/B0/VERYSECRET"})
    assert "VERYSECRET" not in str(caught.value)


def test_several_channels_of_one_type_and_type_in_options():
    built = build_channel("ops_hook", None, {"type": "webhook", "url": "http://127.0.0.1:1/a"})
    assert (built.name, built.type) == ("ops_hook", "webhook")
    assert build_channel("dev_hook", "webhook", {"url": "http://127.0.0.1:1/b"}).type == "webhook"


@dataclass
class ChannelEntry:
    name: str
    type: str
    options: dict
    line: int | None


def test_build_channels_adds_file_and_line():
    configs = {
        "team": ChannelEntry("team", "slack", {"webhook_url": SLACK_URL}, 12),
        "mail": ChannelEntry("mail", "email", {"smtp_server": "h"}, 20),
    }
    with pytest.raises(ConfigError) as caught:
        build_channels(configs, source="monitoring.yaml")
    assert str(caught.value) == "monitoring.yaml:20: alerts.channels.mail.from_address: is required"
    assert list(build_channels({"team": configs["team"]}, source="monitoring.yaml")) == ["team"]


@pytest.mark.parametrize(
    ("text", "tls", "expected"),
    [
        ("smtp.example.org", "auto", ("smtp.example.org", 25)),
        ("smtp.example.org", "starttls", ("smtp.example.org", 587)),
        ("smtp.example.org", "ssl", ("smtp.example.org", 465)),
        ("smtp.example.org:2525", "ssl", ("smtp.example.org", 2525)),
        ("[::1]:2525", "none", ("::1", 2525)),
        ("[::1]", "none", ("::1", 25)),
    ],
)
def test_parse_server(text, tls, expected):
    assert parse_server(text, tls) == expected


def test_alertmanager_firing_expires_after_the_repeat_gap_and_resolve_ends_it():
    firing = AlertEvent("r", "firing", "warning", make_labels(a="1"), (), 1.0, started_at=1000.0)
    resolved = AlertEvent("r", "resolved", "warning", make_labels(a="1"), (), 1.0, started_at=1000.0, ended_at=1500.0)
    [up] = alertmanager_alerts([firing], expire_after=3600, now=2000.0)
    [down] = alertmanager_alerts([resolved], now=2000.0)
    assert (up["startsAt"], up["endsAt"]) == ("1970-01-01T00:16:40Z", "1970-01-01T01:33:20Z")
    assert down["endsAt"] == "1970-01-01T00:25:00Z"
    assert "generatorURL" not in up


def test_building_channels_does_not_import_aiosmtplib():
    code = (
        "import sys\n"
        "from llamamon.channels.registry import build_channel\n"
        "from llamamon.channels.dispatch import Dispatcher\n"
        "build_channel('mail', 'email', {'smtp_server': 'h', 'from_address': 'a@b', 'to_addresses': 'c@d'})\n"
        "print('aiosmtplib' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=llamamon_env(), capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_unset_environment_variable_gives_a_channel_that_fails_with_the_reason(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("llamamon"), "propagate", True)
    options = {"webhook_url": UnsetVariable("${SLACK_HOOK}", "SLACK_HOOK"), "timeout": "bogus"}
    channel = build_channel("team", "slack", options)
    event = AlertEvent("r", "firing", "warning", (), (), 1.0, started_at=1000.0)
    with caplog.at_level(logging.WARNING, logger="llamamon"):
        first = asyncio.run(channel.send([event]))
        second = asyncio.run(channel.send([event]))
    reason = "alerts.channels.team.webhook_url: environment variable SLACK_HOOK is not set"
    assert (first.ok, first.attempts, first.error) == (False, 0, f"not configured: {reason}")
    assert not second.ok
    assert caplog.text.count(reason) == 1
    nested = build_channel("hook", "webhook", {"url": "http://x", "headers": {"A": UnsetVariable("${T}", "T")}})
    assert "alerts.channels.hook.headers.A: environment variable T is not set" in repr(nested)


class _Exploding(BaseChannel):
    type = "exploding"

    def secrets(self):
        return ("t0ps3cret",)

    async def _attempt(self, events):
        raise RuntimeError("library bug while sending with t0ps3cret\nsecond line")


def test_an_unexpected_exception_becomes_a_failed_delivery_on_one_line():
    channel = _Exploding("odd", RetryPolicy(timeout=1, attempts=2, backoff=0))
    event = AlertEvent("r", "firing", "warning", (), (), 1.0, started_at=1000.0)
    delivery = asyncio.run(Dispatcher({"odd": channel}).dispatch([event]))[0]
    assert (delivery.ok, delivery.attempts) == (False, 2)
    assert delivery.error == "RuntimeError: library bug while sending with *** second line"
