"""User collectors named in monitoring.yaml (``collectors: ["package.module:ClassName"]``): load and guard them.

A user's ``collect()`` may raise, hang on a socket, or block the event loop with a ``time.sleep``; none
of that may stop the recording. So each custom collector runs on an event loop of its own, in its own
daemon thread (:class:`CollectorGuard`), and the collector session (session.py) waits for it at most its
timeout. A failure or a timeout is reported (the session says each kind once) and that tick's samples are
skipped; while a hung call is still running the collector is skipped without asking it again, and it is
asked again once it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from llamamon.collectors.base import MetricsCollector, normalize
from llamamon.errors import ConfigError
from llamamon.samples import Sample

if TYPE_CHECKING:
    from llamamon.config import Config

__all__ = ["CollectorGuard", "load_collector", "load_collectors"]


def load_collector(spec: str, path: str = "collectors") -> MetricsCollector:
    """Import ``module:Class`` and build the collector; any mistake is a ConfigError naming ``path``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f'expected "package.module:ClassName" (got {spec!r})', path=path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure of user code is a config problem
        raise ConfigError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", path=path) from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}", path=path)
    if not (isinstance(target, type) and issubclass(target, MetricsCollector)):
        raise ConfigError(
            f"{spec} is not a subclass of llamamon.MetricsCollector (got {type(target).__name__})", path=path
        )
    try:
        return target()
    except Exception as exc:  # noqa: BLE001 - a constructor that fails is reported like a config mistake
        raise ConfigError(f"{spec}() failed: {type(exc).__name__}: {exc}", path=path) from None


def load_collectors(config: Config) -> list[MetricsCollector]:
    """Every collector of ``config.collectors``; errors point at the line in monitoring.yaml."""
    collectors = []
    for i, spec in enumerate(config.collectors):
        path = f"collectors[{i}]"
        try:
            collectors.append(load_collector(spec, path))
        except ConfigError as exc:
            raise config.error(path, exc.message) from None
    return collectors


def _settle(target: asyncio.Future[Any] | concurrent.futures.Future[Any], source: Any) -> None:
    """End ``target`` as ``source`` (a done future or task) ended: cancelled, raised or returned."""
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class CollectorGuard:
    """One collector on its own event loop thread, so that no call of it can block or break the caller.

    ``report(kind, message)`` hears of each failure (``kind``: timeout, error:<type>, bad-result).
    """

    def __init__(self, collector: MetricsCollector, report: Callable[[str, str], None]) -> None:
        self.collector = collector
        self.name = collector.name
        self._report = report
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"llamamon-{self.name}", daemon=True)
        self._thread.start()
        self._busy: concurrent.futures.Future[Any] | None = None
        self._task: asyncio.Task[Any] | None = None
        self.opened = False
        self.failures = 0

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coro`` as a task on the collector's loop; the future is done only when the task really ended."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            self._task = self._loop.create_task(coro)
            self._task.add_done_callback(lambda task: _settle(future, task))

        self._loop.call_soon_threadsafe(start)
        return future

    def _cancel_task(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _call(self, coro: Coroutine[Any, Any, Any], timeout: float) -> tuple[bool, Any]:
        future = self._busy = self._submit(coro)
        caller = asyncio.get_running_loop()
        waiter = caller.create_future()

        def transfer(done: concurrent.futures.Future[Any]) -> None:
            if not waiter.done():
                _settle(waiter, done)

        def notify(done: concurrent.futures.Future[Any]) -> None:
            # Why not asyncio.wrap_future: a late answer after our timeout, or after the caller's loop
            # closed, must go nowhere quietly.
            with contextlib.suppress(RuntimeError):
                caller.call_soon_threadsafe(transfer, done)

        future.add_done_callback(notify)
        try:
            return True, await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            # Ask the collector's loop to cancel the call: an awaiting hang ends at once; code that blocks
            # its loop keeps the collector busy (skipped) until it returns.
            self._loop.call_soon_threadsafe(self._cancel_task)
            self.failures += 1
            self._report("timeout", f"gave no answer within {timeout:g}s")
            return False, None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolation boundary: one user collector's tick
            self.failures += 1
            self._report(f"error:{type(exc).__name__}", f"failed: {exc or type(exc).__name__}")
            return False, None

    async def open(self, timeout: float) -> bool:
        """Whether ``open()`` returned in time; the collector may still have found itself unavailable."""
        ok, _ = await self._call(self.collector.open(), timeout)
        self.opened = ok and self.collector.available
        return ok

    async def collect(self, timeout: float) -> list[Sample]:
        if not self.collector.available:
            return []
        if self._busy is not None and not self._busy.done():
            return []  # still stuck in an earlier call: skip without piling up calls
        ok, result = await self._call(self.collector.collect(), timeout)
        if not ok:
            return []
        try:
            return normalize(result, self.name)
        except TypeError as exc:
            self.failures += 1
            self._report("bad-result", f"failed: {exc}")
            return []

    async def close(self, timeout: float) -> None:
        if self.opened and (self._busy is None or self._busy.done()):
            await self._call(self.collector.close(), timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, timeout)
        if not self._thread.is_alive():
            self._loop.close()  # else: a call is stuck in user code; the daemon thread keeps the loop
