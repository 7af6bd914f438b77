"""Keep webhook URLs, passwords and tokens out of every string llamamon prints, logs or stores.

Every ``str``/``repr``, log line and error message of a channel goes through these functions; a
channel also scrubs its raw secrets out of any third-party error text before passing it on. A recorded
job's command line goes through :func:`mask_command` before the run's metadata is written, so nothing
that shows a run (``runs``, the reports, the store) ever has the secret to show.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

MASK = "***"
# scheme://user:password@ (groups: the scheme with its //, the user): a URL's credentials.
_URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://)([^/\s:@]+):[^/\s@]+@")

# Option keys whose whole value is a secret, and key fragments that mark one (api_key, auth_token …).
SECRET_KEYS = frozenset({"webhook_url", "url", "password", "token", "headers", "external_url", "generator_url"})
_SECRET_FRAGMENTS = ("password", "secret", "token", "key", "auth", "credential")


def mask_url(url: str) -> str:
    """``https://hooks.slack.com/services/T0ABC/B0DEF/xyz`` -> ``https://hooks.slack.com/services/T0…/***``.

    Scheme, host and port stay (they tell a reader which service is meant); credentials, query and
    every path segment after the first are hidden, and the second segment keeps two characters.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2:
        shown += f"/{segments[0]}/{segments[1][:2]}…/{MASK}"
    elif segments or parts.query:
        shown += f"/{MASK}"
    return shown


def mask_secret(value: Any) -> str:
    """A secret as it may be shown: a URL keeps its service, anything else becomes ``***``."""
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if value is None or value == "":
        return ""
    return MASK


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SECRET_KEYS or any(fragment in lowered for fragment in _SECRET_FRAGMENTS)


def masked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A channel's options safe to print: secret values masked, header names kept, values hidden."""
    shown: dict[str, Any] = {}
    for key, value in options.items():
        if key == "headers" and isinstance(value, Mapping):
            shown[key] = {str(name): MASK for name in value}
        elif is_secret_key(str(key)):
            shown[key] = mask_secret(value)
        else:
            shown[key] = value
    return shown


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a raw secret in ``text`` (an error message from a library or server)."""
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, mask_secret(secret))
    # Why: credentials written into a URL (https://user:pass@host) must go even if not listed as secrets.
    return _URL_CREDENTIALS.sub(r"\1" + MASK + "@", text)


# Words that make a command-line name a secret's: --api-key, --hf_token, HF_TOKEN=…, ?access_token=…
_WORDS = "key|token|secret|password|passwd"
_SECRET_OPTION = re.compile(rf"--?[\w.-]*(?:{_WORDS})[\w.-]*", re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(rf"([A-Za-z_][\w.-]*(?:{_WORDS})[\w.-]*=).+", re.IGNORECASE)  # env HF_TOKEN=…
_SECRET_QUERY = re.compile(rf"([?&;][^=&\s#]*(?:{_WORDS}|signature|sig)[^=&\s#]*=)[^&\s#]*", re.IGNORECASE)


def is_secret_option(option: str, extra: Iterable[str] = ()) -> bool:
    """``--api-key``, ``-p`` (mysql's, and others'), any option named in ``extra`` (monitoring.secret_options)."""
    return option == "-p" or option in extra or bool(_SECRET_OPTION.fullmatch(option))


def mask_command(argv: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """``argv`` with the values of secret options, ``NAME=value`` secrets, URL passwords and ``token=``
    query values replaced by ``***``; the job itself still gets its real arguments.

    The value of ``--token VALUE`` is the next argument unless that is another long option (``--x``); a
    short one (``-abc``) may be a password, so it is masked too, except after ``-p``.
    """
    extra = frozenset(extra)
    out: list[str] = []
    hide_next: str | None = None
    for arg in argv:
        if hide_next is not None:
            option, hide_next = hide_next, None
            if not arg.startswith("--") and not (option == "-p" and arg.startswith("-")):
                out.append(MASK)
                continue
        name, eq, _ = arg.partition("=")
        if arg.startswith("-") and is_secret_option(name, extra):
            if eq:
                out.append(f"{name}={MASK}")
                continue
            hide_next = arg
        elif not arg.startswith("-") and _SECRET_ASSIGNMENT.fullmatch(arg):
            out.append(_SECRET_ASSIGNMENT.sub(r"\1" + MASK, arg))
            continue
        out.append(_SECRET_QUERY.sub(r"\1" + MASK, _URL_CREDENTIALS.sub(r"\1\2:" + MASK + "@", arg)))
    return out
