"""XID critical-error events from NVML's event set, counted per GPU and per XID code (GpuCollector's part).

An XID is the driver's report of a GPU fault (68: a video processor exception, 79: the GPU fell off the bus,
94/95: contained/uncontained ECC errors, 119: GSP timeout ...); a job that hits one usually hangs or dies
with a CUDA error that does not say why. NVML delivers them through an event set: every GPU that supports
``nvmlEventTypeXidCriticalError`` is registered once at open, and each tick drains what arrived since the
last with ``nvmlEventSetWait_v2(set, 0)``, which returns at once (Timeout when there is none): the sampler
never waits on it.

Why two metrics: ``gpu_xid_errors{xid}`` has one series per code, and a series appears with its first
event, so a window's increase cannot see that event (it needs two samples); ``gpu_xid_events`` counts all
codes from the GPU's first sample on, so the built-in ``gpu_xid_error`` rule's increase sees the first XID.
"""

from __future__ import annotations

import logging
from collections import Counter

from llamamon.collectors._nvml import DeviceSkipped, Nvml, Unsupported
from llamamon.samples import Sample, make_labels

XID_CRITICAL_ERROR = 0x8  # nvmlEventTypeXidCriticalError (nvml.h, stable ABI)
# Why a bound: a GPU in an error storm can queue events faster than a tick drains them; the rest wait
# for the next tick instead of stalling this one.
MAX_EVENTS_PER_TICK = 256

log = logging.getLogger(__name__)


class XidEvents:
    """The event set and the counts it has delivered, per GPU (only GPUs registered for XID events)."""

    def __init__(self, session: Nvml) -> None:
        self._session = session
        self._set: object | None = None
        self._counts: dict[int, Counter[int]] = {}
        self._warned: set[str] = set()

    def open(self) -> None:
        """Register every GPU that can report XIDs; the others are said once (as "xid_events")."""
        wanted = [index for index in self._session.handles if self._supported(index)]
        if not wanted:
            return
        try:
            self._set = self._session.plain("nvmlEventSetCreate")
        except Exception as exc:
            if not self._session.is_error(exc) and not isinstance(exc, Unsupported):
                raise
            for index in wanted:
                self._session.drop(index, "xid_events", f"nvmlEventSetCreate: {getattr(exc, 'reason', exc)}")
            return
        for index in wanted:
            try:
                self._session.attempt(index, "nvmlDeviceRegisterEvents", XID_CRITICAL_ERROR, self._set)
            except Unsupported as exc:
                self._session.drop(index, "xid_events", f"nvmlDeviceRegisterEvents: {exc.reason}")
            except DeviceSkipped:
                continue  # said once by the session; this GPU's XIDs are not counted this run
            else:
                self._counts[index] = Counter()

    def _supported(self, index: int) -> bool:
        try:
            types = self._session.attempt(index, "nvmlDeviceGetSupportedEventTypes")
        except Unsupported as exc:
            self._session.drop(index, "xid_events", f"nvmlDeviceGetSupportedEventTypes: {exc.reason}")
            return False
        except DeviceSkipped:
            return False
        if not int(types) & XID_CRITICAL_ERROR:
            # Windows (and WSL) drivers answer an empty mask: events are Linux-only in NVML.
            self._session.drop(index, "xid_events", "the driver reports no XID events for this GPU")
            return False
        return True

    def drain(self) -> None:
        """Count the XIDs that arrived since the last tick, without waiting for more."""
        if self._set is None:
            return
        for _ in range(MAX_EVENTS_PER_TICK):
            try:
                event = self._session.plain("nvmlEventSetWait_v2", self._set, 0)
                index = int(self._session.plain("nvmlDeviceGetIndex", event.device))
            except Exception as exc:
                if self._session.is_error(exc, "NVMLError_Timeout"):
                    return  # nothing (more) waiting: the normal end of every drain
                if not self._session.is_error(exc) and not isinstance(exc, Unsupported):
                    raise
                if type(exc).__name__ not in self._warned:
                    self._warned.add(type(exc).__name__)
                    log.warning("XID events: %s (nvmlEventSetWait_v2); asked again every sample (said once)", exc)
                return
            counts = self._counts.get(index)
            if counts is not None and int(event.eventType) & XID_CRITICAL_ERROR:
                counts[int(event.eventData)] += 1

    def samples(self, index: int) -> list[Sample]:
        counts = self._counts.get(index)
        if counts is None:
            return []
        out = [Sample("gpu_xid_events", float(counts.total()), make_labels(gpu=index))]
        for code, count in sorted(counts.items()):
            out.append(Sample("gpu_xid_errors", float(count), make_labels(gpu=index, xid=code)))
        return out

    def close(self) -> None:
        """Free the event set (before nvmlShutdown)."""
        event_set, self._set = self._set, None
        self._counts.clear()
        if event_set is None:
            return
        try:
            self._session.plain("nvmlEventSetFree", event_set)
        except Exception as exc:
            if not self._session.is_error(exc) and not isinstance(exc, Unsupported):
                raise
