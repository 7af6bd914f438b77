"""A real S3 API on loopback for the object-storage tests: moto's server mode as a subprocess, and a TCP proxy.

Why moto: a pure-Python S3-compatible server that installs from PyPI (the ``test`` extra), started here as a
real process on a free port; llamamon talks to it through pyarrow's S3 client exactly as it would to AWS or
MinIO. No in-process mocks. The proxy sits between llamamon and the server so a test can cut the network
(stop it), slow it down, and bring it back on the same port while moto keeps the bucket in memory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import missing_integration

ACCESS_KEY = "AKIAIOSFODNN7LLAMAMON"
SECRET_KEY = "s3cr3t-never-printed-anywhere"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MotoServer:
    """``python -m moto.server`` on a free port; ``auth_after`` starts moto's IAM checks after that many
    requests (its INITIAL_NO_AUTH_ACTION_COUNT), None leaves every request allowed."""

    def __init__(self, workdir: Path, auth_after: int | None = None) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            missing_integration("moto[server] is not installed (pip install -e '.[test]')")
        self.port = free_port()
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        if auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
        self.log = open(workdir / f"moto-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _wait_listening(self.port, self.proc)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create_bucket(self, name: str) -> None:
        from pyarrow import fs

        s3 = fs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region="us-east-1",
            allow_bucket_creation=True,
        )
        s3.create_dir(name)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; :meth:`stop` refuses connections (and cuts open ones),
    :meth:`start` listens again on the same port. ``delay`` seconds are added before each forwarded chunk
    from the client, so a test can be sure a command is still busy shipping when it is killed."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = delay
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            if self._server is not server:  # stopped meanwhile
                client.close()
                upstream.close()
                return
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def stop(self) -> None:
        if self._server is not None:
            # shutdown first: a bare close() leaves the thread blocked in accept() listening on Linux.
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def s3_env(endpoint_port: int, cache: Path, **extra: str) -> dict[str, str]:
    """What a llamamon child needs for the bucket: credentials and endpoint from AWS's own variables."""
    from conftest import llamamon_env

    settings = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{endpoint_port}",
        "AWS_EC2_METADATA_DISABLED": "true",
        "LLAMAMON_CACHE_DIR": str(cache),
    }
    return llamamon_env(**{**settings, **extra})
