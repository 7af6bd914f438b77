"""Host-wide metrics: CPU, memory, swap, the metrics folder's disk, disk and network rates, load (psutil; /proc/meminfo on Linux).

Rates (CPU busy share, bytes per second) are computed here from counter deltas between two readings,
on the collector's own clock, rather than with ``psutil.cpu_percent()``: psutil keeps one module-global
baseline per function, so any other caller in the process (a user's collector, a library) would silently
shorten our measuring window. ``open()`` takes the first reading, so the first ``collect()`` already has
rates; when it comes sooner than ``base.MIN_WINDOW`` after that reading it waits out the rest of that
window once, because a CPU share measured over a few jiffies is noise (0 or 100 %).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from llamamon.collectors.base import MetricsCollector, on_grid, wait_min_window
from llamamon.samples import Sample, make_labels

# Why loopback is left out: traffic a job sends to itself (a local dataloader server, NCCL on one host)
# never leaves the machine and would make "network throughput" say the network is busy when it is idle.
LOOPBACK_PREFIXES = ("lo",)
MEMINFO = Path("/proc/meminfo")
DISKSTATS = Path("/proc/diskstats")
SYS_BLOCK = Path("/sys/block")
_MEMINFO_FIELDS = (b"MemTotal:", b"MemAvailable:", b"SwapTotal:", b"SwapFree:")


def disk_bytes(
    whole_disks: dict[str, bool], diskstats: Path = DISKSTATS, sys_block: Path = SYS_BLOCK
) -> tuple[int, int] | None:
    """(bytes read, bytes written) summed over whole disks, partitions left out so nothing counts twice.

    What ``psutil.disk_io_counters(perdisk=False)`` returns, from the same /proc/diskstats, but it asks
    /sys/block about every device on every call (a third of a tick); ``whole_disks`` remembers the
    answer per device name. None where there are no disks; psutil where there is no /proc/diskstats.
    """
    try:
        data = diskstats.read_bytes()
    except OSError:
        disk = psutil.disk_io_counters(perdisk=False)
        return (disk.read_bytes, disk.write_bytes) if disk is not None else None
    read = write = 0
    seen = False
    for line in data.splitlines():
        fields = line.split()
        if len(fields) < 14:
            continue  # a partition in the short format of old kernels
        name = fields[2].decode(errors="replace")
        whole = whole_disks.get(name)
        if whole is None:
            # A whole disk has its own folder in /sys/block (a "/" in its name is "!" there), a partition not.
            whole = whole_disks[name] = (sys_block / name.replace("/", "!")).exists()
        if whole:
            seen = True
            read += int(fields[5])  # sectors read, always of 512 bytes in this file
            write += int(fields[9])
    return (read * 512, write * 512) if seen else None


def memory_and_swap(meminfo: Path = MEMINFO) -> tuple[int, int, int, int]:
    """(memory total, memory available, swap total, swap free) in bytes.

    On Linux one read of /proc/meminfo, the file psutil's ``virtual_memory()`` parses too; its
    ``swap_memory()`` also reads all of /proc/vmstat for swap-in/out counters llamamon does not record,
    which made it the dearest call of a tick. Elsewhere (or on kernels older than 3.14, without
    MemAvailable) psutil.
    """
    try:
        data = meminfo.read_bytes()
    except OSError:
        data = b""
    found: dict[bytes, int] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b" ")
        if key in _MEMINFO_FIELDS:
            found[key] = int(rest.split()[0]) * 1024  # kB
    if len(found) == len(_MEMINFO_FIELDS):
        return tuple(found[key] for key in _MEMINFO_FIELDS)  # type: ignore[return-value]
    mem, swap = psutil.virtual_memory(), psutil.swap_memory()
    return mem.total, mem.available, swap.total, swap.total - swap.used


class _Reading(NamedTuple):
    at: float
    cpu: tuple[float, float]  # (busy, total) seconds summed over all cores
    cores: list[tuple[float, float]]
    disk: tuple[int, int] | None  # (read_bytes, write_bytes)
    net: tuple[int, int] | None  # (bytes_recv, bytes_sent)


def _busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds the way the kernel and psutil's cpu_percent count them.

    On Linux ``guest``/``guest_nice`` are already included in ``user``/``nice``, and ``iowait`` is idle
    time (the CPU could have run something else).
    """
    total = sum(times)
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _share(now: tuple[float, float], before: tuple[float, float]) -> float | None:
    busy = now[0] - before[0]
    total = now[1] - before[1]
    if total <= 0:
        return None
    return min(1.0, max(0.0, busy / total))


def cpu_model() -> str | None:
    """Human CPU model name ("AMD EPYC 7R13"), for doctor and run metadata."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def existing_parent(path: Path) -> Path:
    """The path itself or its nearest existing ancestor: the filesystem the folder is (or will be) on."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


class SystemCollector(MetricsCollector):
    """Host metrics under the catalog's names (group ``system``)."""

    name = "system"
    group = "system"

    def __init__(
        self, metrics_dir: str | os.PathLike[str], per_core: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.per_core = per_core
        self._clock = clock
        self._last: _Reading | None = None
        self._collected = False
        self._whole_disks: dict[str, bool] = {}

    def _read(self) -> _Reading:
        disk = disk_bytes(self._whole_disks)
        net = psutil.net_io_counters(pernic=True)
        rx = tx = 0
        for nic, counters in net.items():
            if not nic.startswith(LOOPBACK_PREFIXES):
                rx += counters.bytes_recv
                tx += counters.bytes_sent
        cores = [_busy_total(t) for t in psutil.cpu_times(percpu=True)] if self.per_core else []
        return _Reading(
            at=self._clock(),
            cpu=_busy_total(psutil.cpu_times()),
            cores=cores,
            disk=disk,
            net=(rx, tx) if net else None,
        )

    def prime(self) -> None:
        """Take the first reading now, before ``open()``: ``record`` does it first thing, so the first
        sample's window has passed by the time the job and the other collectors are started."""
        # Why also prime psutil.cpu_percent: code that shares this process (user collectors) gets a
        # meaningful first value from it too; our own share never depends on it.
        psutil.cpu_percent(interval=None)
        self._last = self._read()
        self._collected = False

    async def open(self) -> None:
        if self._last is None:
            self.prime()

    async def collect(self) -> list[Sample]:
        if self._last is None:
            await self.open()
        before: _Reading = self._last  # type: ignore[assignment]  # open() set it
        if not self._collected:
            await wait_min_window(self._clock, before.at)
        now = self._read()
        self._last = now
        self._collected = True

        out: list[Sample] = []
        share = _share(now.cpu, before.cpu)
        if share is not None:
            out.append(Sample("cpu_usage", share))
        for index, (core_now, core_before) in enumerate(zip(now.cores, before.cores, strict=False)):
            core_share = _share(core_now, core_before)
            if core_share is not None:
                out.append(Sample("cpu_core_usage", core_share, make_labels(core=index)))

        mem_total, available, swap_total, swap_free = memory_and_swap()
        in_use = mem_total - available
        out.append(Sample("memory_usage", in_use / mem_total if mem_total else 0.0))
        out.append(Sample("memory_used", float(in_use)))
        out.append(Sample("memory_available", float(available)))
        swap_used = swap_total - swap_free
        out.append(Sample("swap_usage", swap_used / swap_total if swap_total else 0.0))
        out.append(Sample("swap_used", float(swap_used)))

        try:
            usage = psutil.disk_usage(str(existing_parent(self.metrics_dir)))
        except OSError:
            usage = None
        if usage is not None and usage.used + usage.free > 0:
            # Same share df prints: blocks reserved for root count as neither used nor available.
            out.append(Sample("disk_usage", usage.used / (usage.used + usage.free)))

        elapsed = now.at - before.at
        if elapsed > 0:
            if now.disk is not None and before.disk is not None:
                read, write = now.disk[0] - before.disk[0], now.disk[1] - before.disk[1]
                # A negative delta is a counter reset (a disk went away): no rate this tick rather than a wrong one.
                if read >= 0 and write >= 0:
                    out.append(Sample("disk_read_throughput", read / elapsed))
                    out.append(Sample("disk_write_throughput", write / elapsed))
            if now.net is not None and before.net is not None:
                rx, tx = now.net[0] - before.net[0], now.net[1] - before.net[1]
                if rx >= 0 and tx >= 0:
                    out.append(Sample("network_throughput", (rx + tx) / elapsed))
                    out.append(Sample("network_rx_throughput", rx / elapsed))
                    out.append(Sample("network_tx_throughput", tx / elapsed))

        try:
            load1, load5, load15 = psutil.getloadavg()
        except (OSError, AttributeError):
            pass
        else:
            out += [Sample("load1", load1), Sample("load5", load5), Sample("load15", load15)]
        return on_grid(out)
