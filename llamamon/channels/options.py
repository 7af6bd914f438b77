"""Read and validate one channel's options, raising ConfigError at ``alerts.channels.<name>.<key>``.

The config loader adds the file and line; this module only knows the key path. Values are never
echoed for secret keys, so a malformed webhook URL cannot leak through its own error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from llamamon.errors import ConfigError, did_you_mean
from llamamon.masking import is_secret_key
from llamamon.units import parse_duration

_MISSING = object()


class OptionReader:
    """Takes options out of a channel's mapping one by one; ``finish()`` rejects what is left over."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        if not isinstance(options, Mapping):
            raise ConfigError(f"expected a mapping of options (got {type(options).__name__})", path=self.path(name))
        self.name = name
        self.options = dict(options)
        self._known: list[str] = []

    @staticmethod
    def path(name: str, key: str | None = None) -> str:
        return f"alerts.channels.{name}" + (f".{key}" if key else "")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path(self.name, key))

    def _got(self, key: str, value: Any) -> str:
        return "a secret value" if is_secret_key(key) else repr(value)

    def _take(self, key: str, default: Any) -> Any:
        self._known.append(key)
        value = self.options.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        value = self._take(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, f"expected a string (got {type(value).__name__})")
        text = str(value).strip()
        if not text:
            if default is _MISSING:
                raise self.error(key, "must not be empty")
            return default
        return text

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(key, default).lower()
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)} (got {value!r})")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._take(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false (got {self._got(key, value)})")
        return value

    def whole(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._take(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected a whole number >= {minimum} (got {self._got(key, value)})")
        return value

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self._take(key, default)
        seconds = parse_duration(value, path=self.path(self.name, key))
        if positive and seconds <= 0:
            raise self.error(key, f"must be longer than zero (got {value!r})")
        return seconds

    def url(self, key: str, default: Any = _MISSING) -> Any:
        value = self.text(key, default)
        if value is default:
            return value
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 -- why: raises ValueError for a port that is not a number
        except ValueError:
            ok = False
        if not ok:
            # Why: never echo the value, it may be a secret webhook URL with a typo.
            raise self.error(key, "expected an http:// or https:// URL with a host")
        return value

    def text_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._take(key, default)
        if value is default:
            return value
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise self.error(key, "expected a list of strings or a comma-separated string")
        cleaned = [i.strip() for i in items if i.strip()]
        if not cleaned:
            raise self.error(key, "must name at least one entry")
        return cleaned

    def text_mapping(self, key: str) -> dict[str, str]:
        value = self._take(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping of names to strings (got {type(value).__name__})")
        result: dict[str, str] = {}
        for name, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(f"{key}.{name}", "expected a string")
            result[str(name)] = str(item)
        return result

    def env(self, key: str) -> str | None:
        """A secret read from the environment variable the option names (``password_env: SMTP_PASSWORD``)."""
        variable = self.text(key, None)
        if variable is None:
            return None
        value = os.environ.get(variable)
        if not value:
            raise self.error(key, f"environment variable {variable} is not set")
        return value

    def finish(self) -> None:
        for key in self.options:
            if key not in self._known:
                hint = did_you_mean(str(key), self._known) or f" (known: {', '.join(sorted(self._known))})"
                raise self.error(str(key), f"unknown option{hint}")
