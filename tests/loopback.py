"""Real servers on 127.0.0.1 port 0 for channel tests: an HTTP sink and an SMTP server, in threads.

Like httpx's tests/conftest.py TestServer: the code under test talks to a real socket; the sink
records what arrived and answers from a script (a status code, or "hang" until the test ends).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpSink:
    """Records every POST; answers each with the next scripted behaviour (int status or "hang"), else 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: deque[int | str] = deque()
        self.release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                action = sink.script.popleft() if sink.script else 200
                if action == "hang":
                    # Why: hold the request open until the test ends, so the client's timeout must fire.
                    sink.release.wait(30)
                    self.close_connection = True
                    return
                payload = b"ok" if action < 400 else b"server says no"
                self.send_response(int(action))
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="http-sink", daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _LoopbackController(Controller):
    """aiosmtpd's Controller bound to port 0 (it otherwise needs a fixed port to reach itself), counting
    open connections so that ``stop`` can wait for TLS shutdowns instead of leaving transports unclosed."""

    opened = 0
    closed = 0

    async def _bind(self) -> Any:
        server = await self.loop.create_server(self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _create_server(self) -> Any:
        return self._bind()

    def factory(self) -> SMTP:
        self.opened += 1
        controller = self

        class _Tracked(SMTP):
            def connection_lost(self, error: Exception | None) -> None:
                super().connection_lost(error)
                controller.closed += 1

        return _Tracked(self.handler, **self.SMTP_kwargs)


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str | None


class SmtpServer:
    """A real SMTP server; ``mails`` collects what was accepted, ``logins`` who authenticated."""

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        stall_after_refusal: float = 0.0,
    ) -> None:
        self.stall_after_refusal = stall_after_refusal
        self.mails: list[Mail] = []
        self.logins: list[str] = []
        kwargs: dict[str, Any] = {}
        if users is not None:
            kwargs.update(authenticator=self._authenticator(users), auth_required=True)
        if tls is not None and implicit_tls:
            # Why: aiosmtpd only counts STARTTLS as TLS for auth_require_tls; an implicit-TLS socket is TLS too.
            # (auth_required stays off here: aiosmtpd warns about AUTH without its notion of TLS.)
            kwargs.update(ssl_context=tls, auth_require_tls=False, auth_required=False)
        elif tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        self.controller = _LoopbackController(self, hostname="127.0.0.1", **kwargs)
        self.controller.start()
        self.port = self.controller.port

    def _authenticator(self, users: dict[str, str]) -> Callable[..., AuthResult]:
        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            if isinstance(data, LoginPassword) and users.get(data.login.decode()) == data.password.decode():
                self.logins.append(data.login.decode())
                return AuthResult(success=True, auth_data=data)
            if self.stall_after_refusal:
                # Stands for a busy or distant server: the server's loop freezes just after its 535, so
                # the client's TLS close (a close_notify exchange) waits that long for an answer.
                asyncio.get_running_loop().call_soon(time.sleep, self.stall_after_refusal)
            return AuthResult(success=False, handled=False)

        return check

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        # session.ssl is set by STARTTLS; an implicit-TLS connection shows on the transport instead.
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, tls, login))
        return "250 Message accepted for delivery"

    def close(self) -> None:
        deadline = time.monotonic() + 5
        while self.controller.closed < self.controller.opened and time.monotonic() < deadline:
            time.sleep(0.01)
        self.controller.stop()


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key: `cryptography` if installed, else `openssl req`."""
    try:
        from cryptography import x509
    except ImportError:
        return _openssl_cert(folder)

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llamamon test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _openssl_cert(folder: Path) -> tuple[Path, Path]:
    from conftest import require_binary

    openssl = require_binary("openssl")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key_path),
            "-out",
            str(cert_path),
            "-days",
            "1",
            "-subj",
            "/CN=llamamon test",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
