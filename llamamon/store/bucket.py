"""The only code that talks to object storage: an ``s3://bucket/prefix`` URL, and list / put / get / delete.

Everything else in the store works on a local folder (see ``store.location``, which mirrors a bucket into
one); this module turns a key relative to the URL's prefix into a request and a pyarrow error into one short
reason. pyarrow.fs is imported on first use, so ``llamamon --help`` and commands on a local folder never pay
for it.

Endpoint and credentials: AWS's own sources (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``,
``~/.aws/credentials``, instance roles), and for a server other than AWS (MinIO, moto, Ceph) either the
URL's query (``?endpoint_override=host:port&scheme=http``) or ``AWS_ENDPOINT_URL`` (``http://host:port``), read
here: pyarrow 26 honours it in ``FileSystem.from_uri`` only, not in the ``S3FileSystem`` constructor used here
(for its timeouts and retries, which a URI cannot set). Nothing of the URL's query is ever shown: :attr:`Bucket.url` is scheme, bucket and prefix only.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from llamamon.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

SCHEMES = ("s3",)
# The URL query keys passed on to pyarrow's S3FileSystem (the rest is a mistake worth a line).
_QUERY_KEYS = {"endpoint_override", "scheme", "region"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# One bad network must cost a command seconds, not minutes of the SDK's retries.
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3
# What pyarrow's messages say ("AWS Error <CODE> during <Op>"), as the reason a user reads.
_REASONS = (
    ("NETWORK_CONNECTION", "cannot connect to the server"),
    ("NO_SUCH_BUCKET", "the bucket does not exist"),
    ("INVALID_ACCESS_KEY_ID", "the credentials were rejected (unknown access key)"),
    ("SIGNATURE_DOES_NOT_MATCH", "the credentials were rejected (wrong secret key)"),
    ("ACCESS_DENIED", "access denied"),
    ("HTTP status 403", "access denied"),
    ("Unable to find credentials", "no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"),
)


class BucketError(StoreError):
    """The bucket could not be reached or used: a setup problem (exit 2), never a corrupted store."""

    exit_code = 2


def is_bucket_url(text: str | Path) -> bool:
    """Whether a metrics path is a URL (``s3://...``; any ``scheme://``, so that ``gs://`` is refused by
    :func:`parse_url` rather than created as a folder named ``gs:``)."""
    return isinstance(text, str) and _URL.match(text) is not None


@dataclass(frozen=True)
class Remote:
    """An ``s3://bucket/prefix`` URL taken apart; ``options`` may hold the endpoint, never shown."""

    bucket: str
    prefix: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        """What messages show: no query, so no endpoint secret or option reaches a log or an error line."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_url(url: str, *, where: str = "monitoring.metrics_path") -> Remote:
    """``s3://bucket[/prefix][?endpoint_override=host:port&scheme=http&region=...]``; a mistake is a ConfigError."""
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(f"unsupported object storage {parts.scheme!r} (only s3://) (got {shown})", path=where)
    if "@" in parts.netloc:
        raise ConfigError(
            f"credentials do not belong in the URL: use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (got s3://…@{parts.hostname})",
            path=where,
        )
    if not _BUCKET_NAME.match(parts.netloc):
        raise ConfigError(f"invalid bucket name {parts.netloc!r} (3-63 of a-z 0-9 . -) (got {shown})", path=where)
    options = tuple(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted({k for k, _ in options} - _QUERY_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} in the URL's query (one of {', '.join(sorted(_QUERY_KEYS))}) (got {shown})",
            path=where,
        )
    prefix = "/".join(p for p in parts.path.split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise ConfigError(f"the prefix must not hold . or .. (got {shown})", path=where)
    return Remote(parts.netloc, prefix, options)


def reason(exc: BaseException) -> str:
    """A pyarrow/AWS error as a few words (its own first clause when none of the known codes fits)."""
    text = str(exc)
    for code, words in _REASONS:
        if code in text:
            return words
    if isinstance(exc, FileNotFoundError):
        return "not found"
    first = text.split("AWS Error ", 1)[-1].split(" (Request ID", 1)[0]
    return first[:200] or type(exc).__name__


def _endpoint_from_env() -> dict[str, str]:
    """``AWS_ENDPOINT_URL`` as S3FileSystem's endpoint_override and scheme (the URL's query wins over it)."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return {}
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return {"endpoint_override": parts.netloc, "scheme": parts.scheme or "https"}


class Bucket:
    """A bucket prefix seen as keys relative to the prefix ("runs/x.json"). Every method raises BucketError.

    A put is one PutObject of the whole file (``allow_delayed_open``: small files go in one request, bigger
    ones as a multipart upload that S3 also completes atomically): a reader sees the old object or the new
    one, never a part. Keys are the store's own relative paths, deterministic per file, so a put repeated
    after a kill overwrites the same object with the same bytes.
    """

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._fs: S3FileSystem | None = None
        self.downloaded_bytes = 0
        self.downloaded_objects = 0
        self._counting = threading.Lock()

    @property
    def url(self) -> str:
        return self.remote.url

    def _path(self, key: str = "") -> str:
        parts = [self.remote.bucket, self.remote.prefix, key]
        return "/".join(p for p in parts if p)

    def _filesystem(self) -> S3FileSystem:
        if self._fs is None:
            from pyarrow import fs

            kwargs: dict[str, Any] = {**_endpoint_from_env(), **dict(self.remote.options)}
            self._fs = fs.S3FileSystem(
                allow_delayed_open=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                request_timeout=REQUEST_TIMEOUT_S,
                retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
                **kwargs,
            )
        return self._fs

    def _failed(self, what: str, exc: BaseException) -> BucketError:
        return BucketError(f"{self.url}: {what} failed: {reason(exc)}")

    def check(self) -> None:
        """The bucket exists and answers (a listing of a missing bucket would otherwise look empty)."""
        from pyarrow import fs

        try:
            info = self._filesystem().get_file_info(self.remote.bucket)
        except (OSError, ValueError) as exc:
            raise self._failed("opening the bucket", self._why_denied(exc)) from None
        if info.type == fs.FileType.NotFound:
            raise BucketError(f"{self.url}: opening the bucket failed: the bucket does not exist")

    def _why_denied(self, exc: BaseException) -> BaseException:
        """A HEAD refused (403) has no body to say why; a listing's answer names the cause (unknown key,
        wrong secret, or a real denial)."""
        if reason(exc) != "access denied":
            return exc
        from pyarrow import fs

        try:
            self._filesystem().get_file_info(fs.FileSelector(self._path(), allow_not_found=True))
        except (OSError, ValueError) as detail:
            return detail
        return exc

    def listing(self, under: str = "") -> dict[str, tuple[int, int]]:
        """{key: (size, mtime_ns)} of every object under ``under`` (a key prefix ending in "/", or "")."""
        from pyarrow import fs

        selector = fs.FileSelector(self._path(under).rstrip("/"), recursive=True, allow_not_found=True)
        try:
            infos = self._filesystem().get_file_info(selector)
        except (OSError, ValueError) as exc:
            raise self._failed("listing", exc) from None
        base = len(self._path()) + 1
        return {
            info.path[base:]: (int(info.size or 0), int(info.mtime_ns or 0))
            for info in infos
            if info.type == fs.FileType.File
        }

    def put(self, local: Path, key: str) -> None:
        try:
            data = local.read_bytes()
        except FileNotFoundError:
            return  # removed meanwhile (compaction): nothing to ship
        try:
            with self._filesystem().open_output_stream(self._path(key)) as out:
                out.write(data)
        except (OSError, ValueError) as exc:
            raise self._failed(f"uploading {key}", exc) from None

    def get(self, key: str) -> bytes:
        try:
            with self._filesystem().open_input_stream(self._path(key)) as src:
                data = src.read()
        except (OSError, ValueError) as exc:
            raise self._failed(f"downloading {key}", exc) from None
        with self._counting:  # pulls download from several threads
            self.downloaded_bytes += len(data)
            self.downloaded_objects += 1
        return bytes(data)

    def delete(self, key: str) -> None:
        try:
            self._filesystem().delete_file(self._path(key))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise self._failed(f"deleting {key}", exc) from None
