"""One JSON POST over HTTP(S) with the standard library, run in a worker thread.

urllib blocks, so the channels call ``post_json`` through ``asyncio.to_thread``; the socket timeout
equals the attempt timeout so an abandoned thread ends by itself soon after the caller gave up.
Errors become DeliveryFailed with a masked URL and a retry verdict (5xx, 429, refused: retry).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from llamamon import __version__
from llamamon.channels.base import DeliveryFailed
from llamamon.masking import mask_url

_RETRY_STATUS = frozenset({408, 425, 429})
_BODY_SHOWN = 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Why: urllib turns a redirected POST into a GET without the body; a webhook that redirects is
    # misconfigured and must fail loudly instead of "succeeding" with nothing delivered.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _split_credentials(url: str) -> tuple[str, str | None]:
    """``https://user:pw@host/x`` -> (``https://host/x``, Basic auth header value); urllib cannot send these."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int, str]:
    where = mask_url(url)
    url, basic = _split_credentials(url)
    request = urllib.request.Request(url, data=body, method="POST")
    if basic:
        request.add_header("Authorization", basic)
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", f"llamamon/{__version__}")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read(64 * 1024).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        text = exc.read(_BODY_SHOWN).decode("utf-8", "replace").strip().replace("\n", " ")
        detail = f": {text}" if text else ""
        retry = exc.code >= 500 or exc.code in _RETRY_STATUS
        raise DeliveryFailed(f"HTTP {exc.code} {exc.reason} from {where}{detail}", retry=retry) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DeliveryFailed(
                f"TLS certificate of {where} not trusted: {reason.verify_message}", retry=False
            ) from None
        if isinstance(reason, ConnectionRefusedError):
            raise DeliveryFailed(f"connection refused by {where}") from None
        if isinstance(reason, TimeoutError):
            raise DeliveryFailed(f"no answer from {where} within {timeout:g}s") from None
        raise DeliveryFailed(f"cannot reach {where}: {_describe(reason)}") from None
    except TimeoutError:
        raise DeliveryFailed(f"no answer from {where} within {timeout:g}s") from None
    except (OSError, ValueError) as exc:
        # Why: ConnectionResetError, RemoteDisconnected (an http.client error that is an OSError subclass),
        # and ValueError from a malformed URL: report the class, never the raw text that could hold the URL.
        raise DeliveryFailed(f"request to {where} failed: {type(exc).__name__}") from None


def _describe(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


async def post_json(url: str, payload: Any, *, headers: Mapping[str, str] | None = None, timeout: float) -> str:
    """POST ``payload`` as JSON; return the response text of a 2xx answer, raise DeliveryFailed otherwise."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    status, text = await asyncio.to_thread(_post, url, body, headers or {}, timeout)
    if not 200 <= status < 300:
        raise DeliveryFailed(f"HTTP {status} from {mask_url(url)}", retry=status >= 500)
    return text
