"""The llamamon error tree.

Core code raises these; their ``str()`` is already the one line a user reads. The CLI translates them
once (``llamamon.cli.main``) into that line on stderr and the class's exit code. No click here.
"""

from __future__ import annotations

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


class RuleError(ConfigError):
    """A condition that does not parse or names an unknown metric; points at the column."""


class StoreError(LlamamonError):
    """The metrics folder cannot be read or written as asked (not: one corrupt file, that is a warning)."""


class RunNotFound(StoreError):
    """A run id or name that matches no recorded run."""

    exit_code: ClassVar[int] = 2


class ChannelError(LlamamonError):
    """A notification channel could not deliver (after its retries)."""
