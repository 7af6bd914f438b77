"""Per-GPU metrics from NVML, and the GPU memory the recorded process tree holds.

pynvml is never imported by this module: ``GpuCollector(nvml=None)`` imports it (through ``_nvml``) in
``open()``, so ``--no-gpu`` and machines without NVIDIA hardware pay nothing, and tests inject the fake.

Threads: NVML calls block. Each is short (tens of µs), but ``nvmlInit`` can take seconds on a machine
without persistence mode and a tick on an 8-GPU box makes over a hundred calls, so ``open()``,
``collect()`` and ``close()`` run their NVML work in a worker thread (``asyncio.to_thread``); the event
loop keeps forwarding signals and output meanwhile. One collect runs at a time, so NVML is never called
from two threads at once.

Topics beyond the basic fields live beside this module, each owning its NVML state: ``gpu_links`` (PCIe,
NVLink), ``gpu_gpm`` (GPM sample buffers), ``gpu_events`` (the XID event set). Each probes what a GPU has
at ``open()`` and says once, per GPU and with the reason, what it lacks (``describe()["gpus"][i]
["unavailable"]``, which doctor prints and the run's metadata keeps).

Containers: NVML lists compute processes by *host* pid, while the tree's pids are the ones this process
sees. ``/proc/<pid>/status`` ``NSpid`` lists a process's pid in every namespace the proc mount can see,
outermost first; the outermost is matched against NVML. That finds the host pid when the procfs shows
the outer namespaces (the host's /proc bind-mounted and passed as ``proc_root``, or a recorder on the
host). A container with its own procfs sees only its own pids there, and then attribution matches
pids literally.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamamon.collectors._nvml import DeviceSkipped, Nvml, NvmlUnavailable
from llamamon.collectors.base import MetricsCollector, on_grid
from llamamon.collectors.gpu_events import XidEvents
from llamamon.collectors.gpu_gpm import Gpm
from llamamon.collectors.gpu_links import Links
from llamamon.samples import Labels, Sample, make_labels

# Clock-event ("throttle") reason bits, from nvml.h (nvmlClocksEventReason*; stable ABI, and older pynvml
# releases name them nvmlClocksThrottleReason*). Label values are the snake_case of NVML's names.
CLOCK_EVENT_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)
# gpu_throttled{cause}: the reasons that are plainly power or heat. hw_slowdown (0x8) is left out of both:
# the board raises it for either (over temperature, power brake, fast power trigger).
THROTTLE_CAUSES: tuple[tuple[str, int], ...] = (
    ("power", 0x4 | 0x80),  # sw_power_cap, hw_power_brake_slowdown
    ("thermal", 0x20 | 0x40),  # sw_thermal_slowdown, hw_thermal_slowdown
)


def read_nspid(proc_root: Path, pid: int) -> tuple[int, ...]:
    """``pid``'s ids in every visible PID namespace, outermost first; ``(pid,)`` when unreadable."""
    try:
        with open(proc_root / str(pid) / "status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    ids = tuple(int(part) for part in line.split()[1:])
                    return ids or (pid,)
    except (OSError, ValueError):
        pass
    return (pid,)


@functools.cache
def _labels(index: int, name: str, value: str) -> Labels:
    """``gpu=index`` plus one more label, built once: every tick asks for the same reasons, causes and kinds."""
    return make_labels({"gpu": index, name: value})


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuCollector(MetricsCollector):
    """One sample per field per GPU (label ``gpu`` = NVML index), group ``gpu``.

    ``pids`` returns the recorded tree's pids (``ProcessTreeCollector.pids``); without it there is no
    ``gpu_process_memory_used``. ``proc_root`` is where NSpid is read (a fixture tree in tests); ``clock``
    times the NVLink counters' rates (injected in tests).
    """

    name = "gpu"
    group = "gpu"
    may_stall = True

    def __init__(
        self,
        nvml: Any | None = None,
        pids: Callable[[], set[int]] | None = None,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = Nvml(nvml)
        self._links = Links(self._session, clock)
        self._gpm = Gpm(self._session)
        self._xid = XidEvents(self._session)
        self._pids = pids
        self._proc_root = Path(proc_root)
        self._nspid: dict[int, int] = {}  # our pid -> its outermost visible pid
        self._devices: list[dict[str, Any]] = []
        self._opened = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._session.start)
        except NvmlUnavailable as exc:
            self.available = False
            self.reason = exc.reason
            return
        self.available = True
        self.reason = None
        self._opened = True
        self._devices = await asyncio.to_thread(self._describe_devices)

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._gpm.close()
        self._xid.close()
        self._session.stop()

    def off_notice(self) -> tuple[int, str]:
        # Info, not a warning: most machines llamamon runs on have no NVIDIA GPU, and that is no fault.
        return logging.INFO, f"GPU metrics off: {self.reason}"

    def run_metadata(self) -> dict[str, Any]:
        return {"gpu": self.describe(), "gpu_names": self.gpu_names()}

    def gpu_names(self) -> list[str]:
        """Names of the GPUs being recorded, in index order (run metadata); [] when unavailable."""
        return [device["name"] for device in self._devices if device.get("name")]

    def describe(self) -> dict[str, Any]:
        """What doctor prints and the run stores as ``gpu``: availability, reason, driver, devices."""
        return {
            "available": self.available,
            "reason": self.reason,
            "driver_version": _text(self._session.driver_version) if self._session.driver_version else None,
            "gpus": list(self._devices),
        }

    def _describe_devices(self) -> list[dict[str, Any]]:
        devices = []
        for index in self._session.handles:
            device: dict[str, Any] = {"index": index}
            try:
                name = self._session.call(index, "name", "nvmlDeviceGetName")
                uuid = self._session.call(index, "uuid", "nvmlDeviceGetUUID")
                memory = self._session.call(index, "memory", "nvmlDeviceGetMemoryInfo")
            except DeviceSkipped:
                name = uuid = memory = None
            device["name"] = _text(name) if name is not None else None
            device["uuid"] = _text(uuid) if uuid is not None else None
            device["memory_total"] = int(memory.total) if memory is not None else None
            # What this GPU will not record, and why (GPM, NVLink, XID events ...); filled in as found.
            device["unavailable"] = self._session.unavailable.setdefault(index, {})
            devices.append(device)
            try:
                self._links.probe(index)
                self._gpm.probe(index)
            except DeviceSkipped:
                pass  # probed again at its first tick
        self._xid.open()
        return devices

    # -- sampling ---------------------------------------------------------------------------------

    async def collect(self) -> list[Sample]:
        if not self._opened:
            return []
        pids = self._pids() if self._pids is not None else None
        return await asyncio.to_thread(self._collect, pids)

    def _collect(self, pids: set[int] | None) -> list[Sample]:
        outer = self._outer_pids(pids) if pids is not None else None
        self._xid.drain()
        samples: list[Sample] = []
        for index in list(self._session.handles):
            try:
                rows = self._device(index, outer)
                rows += self._links.samples(index) + self._gpm.samples(index) + self._xid.samples(index)
            except DeviceSkipped:
                continue  # said once by the session; the other GPUs are unaffected, and no partial rows
            samples.extend(on_grid(rows))
        return samples

    def _outer_pids(self, pids: set[int]) -> set[int]:
        """The tree's pids as NVML names them (see the module docstring on containers)."""
        for gone in set(self._nspid) - pids:
            del self._nspid[gone]
        for pid in pids:
            if pid not in self._nspid:
                self._nspid[pid] = read_nspid(self._proc_root, pid)[0]
        return set(self._nspid.values())

    def _device(self, index: int, outer_pids: set[int] | None) -> list[Sample]:
        nvml = self._session.module
        labels = make_labels(gpu=index)
        out: list[Sample] = []

        def add(metric: str, value: float) -> None:
            out.append(Sample(metric, float(value), labels))

        def call(field: str, function: str, *args: Any) -> Any | None:
            return self._session.call(index, field, function, *args)

        memory = call("memory", "nvmlDeviceGetMemoryInfo")
        if memory is not None:
            add("gpu_memory_used", memory.used)
            add("gpu_memory_total", memory.total)
            if memory.total:
                add("gpu_memory_usage", memory.used / memory.total)
        utilization = call("utilization", "nvmlDeviceGetUtilizationRates")
        if utilization is not None:
            add("gpu_utilization", utilization.gpu / 100.0)
        temperature = call("temperature", "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        if temperature is not None:
            add("gpu_temperature", temperature)
        power = call("power", "nvmlDeviceGetPowerUsage")
        if power is not None:
            add("gpu_power", power / 1000.0)  # mW
        limit = call("power_limit", "nvmlDeviceGetEnforcedPowerLimit")
        if limit is not None:
            add("gpu_power_limit", limit / 1000.0)  # mW
        energy = call("energy", "nvmlDeviceGetTotalEnergyConsumption")
        if energy is not None:
            add("gpu_energy", energy / 1000.0)  # mJ
        sm_clock = call("sm_clock", "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)
        if sm_clock is not None:
            add("gpu_sm_clock", sm_clock)
        memory_clock = call("memory_clock", "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM)
        if memory_clock is not None:
            add("gpu_memory_clock", memory_clock)
        fan = call("fan_speed", "nvmlDeviceGetFanSpeed")  # NotSupported on passively cooled boards
        if fan is not None:
            add("gpu_fan_speed", fan / 100.0)
        out += self._clock_events(index)
        out += self._ecc_errors(index)
        if outer_pids is not None:
            processes = call("processes", "nvmlDeviceGetComputeRunningProcesses")
            if processes is not None:
                # usedGpuMemory is None where the driver cannot tell (MIG without privileges, WDDM).
                used = sum(p.usedGpuMemory or 0 for p in processes if p.pid in outer_pids)
                add("gpu_process_memory_used", used)
        return out

    def _ecc_errors(self, index: int) -> list[Sample]:
        nvml = self._session.module
        out: list[Sample] = []
        for kind, error_type in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            errors = self._session.call(
                index, f"ecc_{kind}", "nvmlDeviceGetTotalEccErrors", error_type, nvml.NVML_VOLATILE_ECC
            )
            if errors is not None:
                out.append(Sample("gpu_ecc_errors", float(errors), _labels(index, "type", kind)))
        return out

    def _clock_events(self, index: int) -> list[Sample]:
        """gpu_clock_event per reason and gpu_throttled per cause, each 0 or 1.

        Why every reason with 0 or 1, not only the active ones: a rule on
        gpu_clock_event{reason="hw_thermal_slowdown"} needs the 0 to resolve, and a chart its baseline.
        """
        reasons = self._session.call(index, "clock_events", "nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            # Drivers before r535 only have the older name for the same bit mask.
            reasons = self._session.call(index, "clock_events_legacy", "nvmlDeviceGetCurrentClocksThrottleReasons")
        if reasons is None:
            return []
        mask = int(reasons)
        out = [
            Sample("gpu_clock_event", 1.0 if mask & bit else 0.0, _labels(index, "reason", reason))
            for reason, bit in CLOCK_EVENT_REASONS
        ]
        out += [
            Sample("gpu_throttled", 1.0 if mask & bits else 0.0, _labels(index, "cause", cause))
            for cause, bits in THROTTLE_CAUSES
        ]
        return out
