"""The public base class for collectors, built-in and user-written, and the one result normaliser.

A user adds metrics by subclassing :class:`MetricsCollector` and naming the class in
``monitoring.yaml`` (``collectors: ["mypkg.gauges:QueueDepth"]``)::

    class QueueDepth(MetricsCollector):
        async def collect(self) -> dict[str, float]:
            return {"queue_depth": len(os.listdir("/var/spool/jobs"))}

``collect()`` may return a plain ``{name: number}`` dict (the common case) or a list of
:class:`~llamamon.samples.Sample` when labels or per-sample times are needed; the collector session
(session.py) passes either through :func:`normalize`, so a wrong value fails with the collector's and the metric's names instead of
somewhere deep in the store.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from llamamon.catalog import quantize, resolution_of
from llamamon.samples import Sample, make_labels

# Shortest window a collector's first rate is computed over after open(): 10 kernel ticks at USER_HZ=100.
# Shorter, a CPU share is noise (0 or 100 %), so a first collect() that comes sooner waits out the rest once.
MIN_WINDOW = 0.1

CollectResult = Mapping[str, float] | Sequence[Sample]


class MetricsCollector(abc.ABC):
    """Something that can be asked, once per tick, for the current value of some metrics.

    ``name`` defaults to the class name and ``group`` (the store partition) to ``"custom"``.
    A collector that cannot work on this machine sets ``available = False`` and a human ``reason``
    in ``open()``; the collector session then says so once (:meth:`off_notice`) and stops asking it,
    instead of failing the run.
    """

    name: ClassVar[str] = "MetricsCollector"
    group: ClassVar[str] = "custom"
    # True for a built-in collector whose collect() waits on something that can stall (a driver call in a
    # thread, the network): the collector session then bounds each call by its timeout (session.py).
    may_stall: ClassVar[bool] = False
    available: bool = True
    reason: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    async def open(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Acquire what collect() needs (handles, baselines for rates). Called once before the first tick."""

    async def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release what open() acquired. Called once, also after errors."""

    @abc.abstractmethod
    async def collect(self) -> CollectResult:
        """The metrics now: ``{name: number}`` or a list of Samples (labels, own timestamps)."""

    def off_notice(self) -> tuple[int, str]:
        """(log level, line) said once when this collector is off after ``open()``. A warning by default:
        a collector the user asked for that cannot work is news; an expected absence can say less."""
        return logging.WARNING, f"collector {self.name} off: {self.reason or 'no reason given'}"

    def run_metadata(self) -> dict[str, Any]:
        """Fields of the run's metadata (``RunInfo``) this collector fills in once it is open."""
        return {}

    async def __aenter__(self) -> MetricsCollector:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"<{type(self).__name__} {self.name!r} ({state})>"


async def wait_min_window(clock: Callable[[], float], since: float) -> None:
    """Sleep out what is left of :data:`MIN_WINDOW` since ``since`` (never longer than the window)."""
    wait = MIN_WINDOW - (clock() - since)
    if wait > 0:
        await asyncio.sleep(min(wait, MIN_WINDOW))


def on_grid(samples: list[Sample]) -> list[Sample]:
    """Built-in collectors' samples rounded to the resolution their source really measures (the catalog's).

    Why: a rate computed as bytes / elapsed, or a share as busy / total, carries a full 52-bit mantissa
    of which only the top bits were measured; the rest is noise that the compressed store pays for in
    bytes per sample (bench/RESULTS.md, "Storage after compaction", is measured on values rounded so).
    Only the built-in collectors call this: a user's collector or a job's metric is stored as given.
    """
    out = samples
    for index, sample in enumerate(samples):
        value = quantize(sample.value, resolution_of(sample.metric))
        if value != sample.value:
            if out is samples:
                out = list(samples)
            out[index] = Sample(sample.metric, value, sample.labels, sample.time, sample.step)
    return out


def _number(value: object, metric: str, source: str) -> float:
    # Why bool is accepted: a flag (``{"healthy": True}``) is a natural gauge and stores as 1.0/0.0.
    if isinstance(value, numbers.Real):
        return float(value)
    where = f"{source}: " if source else ""
    raise TypeError(f"{where}metric {metric!r} must be a number, got {type(value).__name__} {value!r}")


def normalize(result: CollectResult | None, source: str = "") -> list[Sample]:
    """A collector's result as a list of Samples; a non-numeric value is a TypeError naming the metric.

    Non-finite values (NaN, ±inf) are dropped: "no value this tick" is an absent row in llamamon's long
    schema, never a NaN placeholder. ``source`` (the collector's name) goes into error messages.
    """
    if result is None:
        return []
    where = f"{source}: " if source else ""
    samples: list[Sample] = []
    if isinstance(result, Mapping):
        for metric, value in result.items():
            if not isinstance(metric, str) or not metric:
                raise TypeError(f"{where}metric names must be non-empty strings, got {metric!r}")
            number = _number(value, metric, source)
            if math.isfinite(number):
                samples.append(Sample(metric, number))
        return samples
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
        raise TypeError(
            f"{where}collect() must return a dict of numbers or a list of Samples, got {type(result).__name__}"
        )
    for item in result:
        if not isinstance(item, Sample):
            raise TypeError(f"{where}collect() returned a list holding {type(item).__name__} {item!r}, not a Sample")
        number = _number(item.value, item.metric, source)
        if not math.isfinite(number):
            continue
        labels = item.labels if isinstance(item.labels, tuple) else make_labels(dict(item.labels))
        if number == item.value and type(item.value) is float and labels is item.labels:
            samples.append(item)
        else:
            samples.append(Sample(item.metric, number, labels, item.time, item.step))
    return samples
