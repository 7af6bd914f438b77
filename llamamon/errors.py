"""The llamamon error tree.

Core code raises these; their ``str()`` is already the line a user reads (a line per mistake). The CLI translates them
once (``llamamon.cli.main``) into that line on stderr and the class's exit code. No click here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar


class LlamamonError(Exception):
    """Base of every error llamamon reports to a user without a traceback."""

    exit_code: ClassVar[int] = 1


class ConfigError(LlamamonError):
    """A mistake in monitoring.yaml or on the command line: ``file:line: key.path: what (got X)``."""

    exit_code: ClassVar[int] = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


MAX_ERRORS = 20  # config mistakes listed in one pass, as compilers do; past that they are only counted


class ConfigErrors(ConfigError):
    """Several mistakes found in one pass: one ``file:line: key: what`` line each, the first one's fields."""

    def __init__(self, errors: Sequence[ConfigError], limit: int = MAX_ERRORS) -> None:
        # In file order, as a compiler lists them (the checks visit sections in their own order).
        self.errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0))
        self.limit = limit
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, path=first.path)

    def format(self) -> str:
        lines = [error.format() for error in self.errors[: self.limit]]
        if len(self.errors) > self.limit:
            lines.append(f"... and {len(self.errors) - self.limit} more mistakes")
        return "\n".join(lines)


def raise_errors(errors: Sequence[ConfigError]) -> None:
    """Every mistake found as one ConfigError (itself when there is one); nothing when there are none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class RuleError(ConfigError):
    """A condition that does not parse or names an unknown metric; points at the column."""


class StoreError(LlamamonError):
    """The metrics folder cannot be read or written as asked (not: one corrupt file, that is a warning)."""


class RunNotFound(StoreError):
    """A run id or name that matches no recorded run."""

    exit_code: ClassVar[int] = 2


class ChannelError(LlamamonError):
    """A notification channel could not deliver (after its retries)."""


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The choice closest to a mistyped ``value`` (difflib's default cutoff), or None.

    difflib is imported here, on the error path only: loading it costs every command ~2 ms.
    """
    import difflib

    close = difflib.get_close_matches(value, list(choices), n=1)
    return close[0] if close else None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the choice closest to a mistyped ``value``, or ""."""
    close = closest(value, choices)
    return f' (did you mean "{close}"?)' if close else ""
