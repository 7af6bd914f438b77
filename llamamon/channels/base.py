"""What every channel shares: the Channel protocol, the Delivery result and the retry loop.

A channel's ``send(events)`` never raises for a delivery problem: it retries with backoff inside a
per-attempt timeout and returns a Delivery saying what happened, so one broken channel cannot stop
the others or the monitoring loop. Error text is scrubbed of the channel's secrets before it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from llamamon.channels.options import OptionReader
from llamamon.masking import scrub
from llamamon.samples import AlertEvent
from llamamon.units import format_duration

log = logging.getLogger("llamamon.channels")

DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.5


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of handing one batch of events to one channel (after its retries)."""

    channel: str
    type: str
    ok: bool
    attempts: int
    events: int
    elapsed: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-attempt timeout and exponential backoff: 3 attempts wait 0.5 s, then 1 s, between them."""

    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = 30.0

    def delay(self, failed_attempt: int) -> float:
        return min(self.backoff * 2 ** (failed_attempt - 1), self.max_backoff)

    @classmethod
    def from_options(cls, reader: OptionReader) -> RetryPolicy:
        return cls(
            timeout=reader.duration("timeout", DEFAULT_TIMEOUT),
            attempts=reader.whole("attempts", DEFAULT_ATTEMPTS, minimum=1),
            backoff=reader.duration("backoff", DEFAULT_BACKOFF, positive=False),
        )


@runtime_checkable
class Channel(Protocol):
    """A notification transport. ``send`` gets one group of events (one tick's) and never raises."""

    name: str
    type: str
    send_resolved: bool

    async def send(self, events: Sequence[AlertEvent]) -> Delivery: ...

    def target(self) -> str:
        """Where deliveries go, masked, for messages."""
        ...


class DeliveryFailed(Exception):
    """One attempt failed; ``retry`` says whether another attempt could succeed (a 500 yes, a 404 no)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class BaseChannel(ABC):
    """Retry loop, timeouts, masking and logging around a transport's single ``_attempt``."""

    type: ClassVar[str] = ""

    def __init__(self, name: str, policy: RetryPolicy, *, send_resolved: bool = True) -> None:
        self.name = name
        self.policy = policy
        self.send_resolved = send_resolved

    def target(self) -> str:
        """Where deliveries go, safe to print (masked)."""
        return ""

    def secrets(self) -> tuple[str, ...]:
        """Raw secret strings to scrub from any error text."""
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} -> {self.target()}>"

    def __str__(self) -> str:
        return f"{self.type} channel {self.name!r}"

    @abstractmethod
    async def _attempt(self, events: Sequence[AlertEvent]) -> None:
        """Deliver once; raise DeliveryFailed (or time out) when it did not work."""

    async def send(self, events: Sequence[AlertEvent]) -> Delivery:
        started = time.monotonic()
        error = ""
        attempt = 0
        for attempt in range(1, self.policy.attempts + 1):
            retry = True
            try:
                await asyncio.wait_for(self._attempt(events), self.policy.timeout)
            except DeliveryFailed as exc:
                error, retry = str(exc), exc.retry
            except asyncio.TimeoutError:
                error = f"no answer within {format_duration(self.policy.timeout)}"
            except Exception as exc:  # noqa: BLE001 -- why: isolation boundary; a bug or odd library error in one
                # channel must become a failed Delivery, never an exception that stops the other channels.
                error = f"{type(exc).__name__}: {exc}"
            else:
                log.debug("%s: delivered %d event(s) (attempt %d)", self, len(events), attempt)
                return Delivery(self.name, self.type, True, attempt, len(events), time.monotonic() - started)
            error = " ".join(scrub(error, self.secrets()).split())  # one line, whatever a library wrote
            if not retry or attempt == self.policy.attempts:
                break
            delay = self.policy.delay(attempt)
            log.info(
                "%s: attempt %d/%d failed: %s; retrying in %s",
                self,
                attempt,
                self.policy.attempts,
                error,
                format_duration(delay),
            )
            await asyncio.sleep(delay)
        log.warning("%s: delivery failed after %d attempt(s): %s", self, attempt, error)
        return Delivery(self.name, self.type, False, attempt, len(events), time.monotonic() - started, error)
