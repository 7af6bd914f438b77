"""Email channel over SMTP with aiosmtplib: one mail (text + HTML parts) per batch of events.

aiosmtplib is imported inside the functions that send, never at module level, so nothing on the
``llamamon --help`` or ``import llamamon`` path pays for it.

Options: ``smtp_server`` (required, ``host[:port]``; port 465 for ssl, 587 for starttls, else 25),
``from_address``, ``to_addresses`` (list or comma-separated), ``tls`` (auto: STARTTLS when offered;
starttls; ssl; none), ``username`` with ``password`` or ``password_env`` (secret), ``ca_file``, ``verify``
(true), ``subject_prefix`` ([llamamon]), ``send_resolved``, and the common ``timeout``, ``attempts``, ``backoff``.
"""

from __future__ import annotations

import asyncio
import functools
import html
import ssl
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from llamamon.channels.base import BaseChannel, DeliveryFailed, RetryPolicy
from llamamon.channels.options import OptionReader
from llamamon.channels.render import colour, fields, headline, title
from llamamon.samples import AlertEvent

TLS_MODES = ("auto", "starttls", "ssl", "none")
_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "auto": 25, "none": 25}


def parse_server(text: str, tls: str) -> tuple[str, int]:
    """``smtp.example.com:587`` -> (host, port); ``[::1]:25`` for IPv6; the port defaults from the TLS mode."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise ValueError(f"expected host or host:port (got {text!r})")
    return host, int(port) if port else _DEFAULT_PORTS[tls]


def text_body(events: Sequence[AlertEvent]) -> str:
    lines = [headline(events), ""]
    for event in events:
        lines.append(title(event))
        lines.extend(f"  {name + ':':<12} {value}" for name, value in fields(event))
        lines.append("")
    lines.append("-- sent by llamamon")
    return "\n".join(lines) + "\n"


def html_body(events: Sequence[AlertEvent]) -> str:
    parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif">',
        f"<p><strong>{html.escape(headline(events))}</strong></p>",
    ]
    for event in events:
        rows = "".join(
            f'<tr><th align="left" style="padding-right:1em">{html.escape(n)}</th><td>{html.escape(v)}</td></tr>'
            for n, v in fields(event)
        )
        parts.append(
            f'<div style="border-left:6px solid {colour(event)};padding-left:8px;margin:12px 0">'
            f'<h3 style="margin:0 0 4px">{html.escape(title(event))}</h3><table>{rows}</table></div>'
        )
    parts.append('<p style="color:#888">sent by llamamon</p></body></html>')
    return "".join(parts)


def build_message(
    events: Sequence[AlertEvent], *, sender: str, recipients: Sequence[str], subject_prefix: str = "[llamamon]"
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"{subject_prefix} {headline(events)}".strip()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(time.time(), usegmt=True)
    message["Message-ID"] = make_msgid(domain="llamamon")
    message.set_content(text_body(events))
    message.add_alternative(html_body(events), subtype="html")
    return message


class EmailChannel(BaseChannel):
    type = "email"

    def __init__(self, name: str, options: OptionReader) -> None:
        self.tls: str = options.choice("tls", TLS_MODES, "auto")
        server = options.text("smtp_server")
        try:
            self.host, self.port = parse_server(server, self.tls)
        except ValueError as exc:
            raise options.error("smtp_server", str(exc)) from None
        self.sender: str = options.text("from_address")
        self.recipients: list[str] = options.text_list("to_addresses")
        for key, address in [("from_address", self.sender)] + [("to_addresses", a) for a in self.recipients]:
            if "@" not in address or any(c.isspace() for c in address):
                raise options.error(key, f"not an email address: {address!r}")
        self.username: str | None = options.text("username", None)
        password = options.text("password", None)
        from_env = options.env("password_env")
        if password is not None and from_env is not None:
            raise options.error("password_env", "set password or password_env, not both")
        self.password: str | None = password if password is not None else from_env
        if self.username and not self.password:
            raise options.error("password", "is required when username is set (or set password_env)")
        if self.password and not self.username:
            raise options.error("username", "is required when a password is set")
        self.ca_file: str | None = options.text("ca_file", None)
        self.verify: bool = options.flag("verify", True)
        self.subject_prefix: str = options.text("subject_prefix", "[llamamon]")
        self._context: ssl.SSLContext | None = None
        super().__init__(name, RetryPolicy.from_options(options), send_resolved=options.flag("send_resolved", True))

    def target(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"smtp {user}{self.host}:{self.port} ({self.tls}) -> {', '.join(self.recipients)}"

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.tls == "none":
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connection(self) -> dict[str, Any]:
        if self._context is None and self.tls != "none":
            # Why a thread, once: loading the system CA store takes ~0.2 s and would stall the event loop.
            self._context = await asyncio.to_thread(self._tls_context)
        return {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "use_tls": self.tls == "ssl",
            # None lets aiosmtplib upgrade with STARTTLS exactly when the server offers it.
            "start_tls": {"auto": None, "starttls": True, "ssl": False, "none": False}[self.tls],
            "tls_context": self._context,
            "timeout": self.policy.timeout,
        }

    async def _attempt(self, events: Sequence[AlertEvent]) -> None:
        import aiosmtplib  # why: heavy-ish and only needed when mail is actually sent

        message = build_message(
            events, sender=self.sender, recipients=self.recipients, subject_prefix=self.subject_prefix
        )
        where = f"{self.host}:{self.port}"
        try:
            client = _client_type()(**(await self._connection()))
            try:
                async with client:
                    await client.send_message(message, sender=self.sender, recipients=self.recipients)
            finally:
                # Why: aiosmtplib.send leaves the socket open when STARTTLS fails (an untrusted certificate);
                # close() is a no-op on a client that already quit.
                client.close()
                await client.wait_closed(self.policy.timeout)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed(
                f"SMTP authentication failed for user {self.username!r} at {where}: "
                f"{exc.code} {_one_line(exc.message)}",
                retry=False,
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(f"{r.recipient} ({r.code} {_one_line(r.message)})" for r in exc.recipients)
            raise DeliveryFailed(f"{where} refused recipients: {refused}", retry=False) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(
                f"{where} answered {exc.code} {_one_line(exc.message)}", retry=400 <= exc.code < 500
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryFailed(f"TLS certificate of {where} not trusted: {exc.verify_message}", retry=False) from None
        except aiosmtplib.SMTPTimeoutError:
            raise DeliveryFailed(f"no answer from {where} within {self.policy.timeout:g}s") from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            raise DeliveryFailed(f"cannot reach {where}: {_one_line(str(exc)) or type(exc).__name__}") from None
        except aiosmtplib.SMTPException as exc:
            # STARTTLS or AUTH not offered, and similar: a configuration mismatch that a retry cannot fix.
            raise DeliveryFailed(f"{where}: {_one_line(exc.message)}", retry=False) from None


@functools.cache
def _client_type() -> type:
    """aiosmtplib's client, made to wait until the sockets it closes are really closed.

    Why: closing a TLS connection is a close_notify exchange that aiosmtplib starts and does not wait for
    (it closes inside connect() when login fails after STARTTLS). If the event loop ends a moment later, as
    asyncio.run() does after one delivery, the socket is left open: one leaked descriptor per failed send.
    """
    import aiosmtplib

    class ClosingSMTP(aiosmtplib.SMTP):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self._closing: list[tuple[asyncio.BaseTransport, Any]] = []

        def close(self) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self._closing.append((self.transport, self.transport.get_extra_info("socket")))
            super().close()

        async def wait_closed(self, timeout: float) -> None:
            """Wait for the closing handshakes, then cut any connection whose peer did not answer in time."""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while any(sock is not None and sock.fileno() != -1 for _, sock in self._closing):
                if loop.time() >= deadline:
                    for transport, _ in self._closing:
                        transport.abort()
                    await asyncio.sleep(0)  # the abort closes the socket on the loop's next pass
                    break
                await asyncio.sleep(0.005)
            self._closing.clear()

    return ClosingSMTP


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
