"""The one allowed fake: an NVML module stand-in for GpuCollector(nvml=...).

It has the functions llamamon calls, under pynvml's names, and raises pynvml's **real** exception
classes (``pynvml.NVMLError(code)`` builds the matching subclass), so ``collectors/_nvml.py`` classifies
exactly what it would see on a GPU machine. Scenario constructors at the bottom build the cases the
tests need; ``calls`` counts every function call so a test can prove a dropped field is not re-queried.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml as real

# Constants and exception classes llamamon reads off the module, taken from the real one.
NVMLError = real.NVMLError
NVMLLibraryMismatchError = real.NVMLLibraryMismatchError


def _error(code: int) -> real.NVMLError:
    return real.NVMLError(code)


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total: int = 80 * 1024**3
    memory_used: int = 20 * 1024**3
    utilization: int = 87  # percent, as NVML reports it
    temperature: int = 64  # °C
    power_mw: int = 412_000
    power_limit_mw: int = 700_000
    energy_mj: int = 9_876_543
    sm_clock: int = 1980
    memory_clock: int = 2619
    clock_event_reasons: int = 0x4  # sw_power_cap
    ecc_corrected: int = 3
    ecc_uncorrected: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (host pid, bytes)
    # Defaults: an H100 SXM. No fan (passively cooled: NotSupported), 18 NVLinks, GPM, XID events.
    fan_speed: int | None = None  # percent of max; None: NotSupported
    pcie_gen: int = 5
    pcie_gen_max: int = 5
    pcie_width: int = 16
    pcie_width_max: int = 16
    pcie_tx_kb: int = 1_200_000  # KB/s over NVML's 20 ms
    pcie_rx_kb: int = 800_000
    # NVML_FI_DEV_PCIE_COUNT_TX/RX_BYTES (field id -> bytes so far); None: a driver without them (before r550),
    # whose per-value nvmlReturn is NotSupported, so the collector falls back to nvmlDeviceGetPcieThroughput.
    pcie_bytes: dict[int, int] | None = None
    nvlinks: int = 18  # 0: a PCIe card, nvmlDeviceGetNvLinkState raises NotSupported
    nvlink_down: set[int] = field(default_factory=set)  # links whose state is 0
    nvlink_kib: dict[tuple[int, int], int] = field(default_factory=dict)  # (link, field id) -> KiB counter
    nvlink_throughput_return: int = real.NVML_SUCCESS  # per-value nvmlReturn of the throughput fields
    gpm: bool = True  # nvmlGpmQueryDeviceSupport().isSupportedDevice
    gpm_percent: dict[int, float] = field(default_factory=lambda: {2: 62.5, 5: 41.25, 10: 55.0})
    event_types: int = real.nvmlEventTypeXidCriticalError | real.nvmlEventTypeDoubleBitEccError


class FakeNvml:
    """Module-like: attribute access gives NVML functions and constants, as ``import pynvml`` would."""

    NVMLError = real.NVMLError
    NVMLLibraryMismatchError = real.NVMLLibraryMismatchError
    NVMLError_NotSupported = real.NVMLError_NotSupported
    NVMLError_FunctionNotFound = real.NVMLError_FunctionNotFound
    NVMLError_Deprecated = real.NVMLError_Deprecated
    NVMLError_NoPermission = real.NVMLError_NoPermission
    NVMLError_InvalidArgument = real.NVMLError_InvalidArgument
    NVMLError_LibraryNotFound = real.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = real.NVMLError_DriverNotLoaded
    NVMLError_LibRmVersionMismatch = real.NVMLError_LibRmVersionMismatch
    NVMLError_GpuIsLost = real.NVMLError_GpuIsLost
    NVMLError_Unknown = real.NVMLError_Unknown
    NVMLError_Timeout = real.NVMLError_Timeout
    NVML_TEMPERATURE_GPU = real.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = real.NVML_CLOCK_SM
    NVML_CLOCK_MEM = real.NVML_CLOCK_MEM
    NVML_MEMORY_ERROR_TYPE_CORRECTED = real.NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = real.NVML_VOLATILE_ECC
    c_nvmlGpmMetricsGet_t = real.c_nvmlGpmMetricsGet_t

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        unsupported: set[str] | frozenset[str] = frozenset(),
        lost_index: int | None = None,
        lost_after: int | None = None,
        driver_version: str = "575.57.08",
        missing: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.unsupported = set(unsupported)
        # Functions this pynvml has but the driver's libnvidia-ml lacks: FunctionNotFound, as pynvml raises
        # from _nvmlGetFunctionPointer on an older driver.
        self.missing = set(missing)
        self.pending_events: list[tuple[int, int, int]] = []  # (handle, event type, event data)
        self.registered: dict[int, int] = {}  # handle -> event types registered
        self.wait_timeouts: list[int] = []
        self.event_sets: set[int] = set()  # ids of the event sets not yet freed
        self.gpm_buffers: dict[int, tuple[int, dict[int, float]] | None] = {}  # address -> (handle, values)
        self.lost_index = lost_index
        self.lost_after = lost_after
        self.driver_version = driver_version
        self.calls: Counter[str] = Counter()
        self.initialised = False
        self._ticks: Counter[int] = Counter()
        self.nspid_map: dict[int, int] = {}

    def write_proc(self, root: Path) -> Path:
        """A fixture procfs: ``<root>/<container pid>/status`` with ``NSpid: <host pid> <container pid>``."""
        for host_pid, container_pid in self.nspid_map.items():
            folder = root / str(container_pid)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "status").write_text(
                f"Name:\tpython\nPid:\t{container_pid}\nNSpid:\t{host_pid}\t{container_pid}\n", encoding="ascii"
            )
        return root

    # -- library ----------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise _error(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        if not self.initialised:
            raise _error(real.NVML_ERROR_UNINITIALIZED)
        self.initialised = False

    def _check(self, function: str, counted_as: str | None = None) -> None:
        self.calls[counted_as or function] += 1
        if not self.initialised:
            raise _error(real.NVML_ERROR_UNINITIALIZED)
        if function in self.missing:
            raise _error(real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if function in self.unsupported:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        return index  # the handle is the index: opaque to llamamon either way

    def _gpu(self, function: str, handle: int, counted_as: str | None = None) -> FakeGpu:
        self._check(function, counted_as)
        if handle == self.lost_index and self.lost_after is not None and self._ticks[handle] > self.lost_after:
            raise _error(real.NVML_ERROR_GPU_IS_LOST)
        return self.gpus[handle]

    # -- devices ----------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        # A "tick" for lost_after is one memory query: the first thing GpuCollector asks a device each sample.
        self._ticks[handle] += 1
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        return SimpleNamespace(total=gpu.memory_total, used=gpu.memory_used, free=gpu.memory_total - gpu.memory_used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=gpu.utilization, memory=gpu.utilization // 2)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != real.NVML_TEMPERATURE_GPU:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        return {real.NVML_CLOCK_SM: gpu.sm_clock, real.NVML_CLOCK_MEM: gpu.memory_clock}[clock]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter_type: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        if counter_type != real.NVML_VOLATILE_ECC:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.ecc_corrected if error_type == real.NVML_MEMORY_ERROR_TYPE_CORRECTED else gpu.ecc_uncorrected

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        self._check("nvmlDeviceGetIndex")
        return handle

    def nvmlDeviceGetFanSpeed(self, handle: int) -> int:
        gpu = self._gpu("nvmlDeviceGetFanSpeed", handle)
        if gpu.fan_speed is None:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.fan_speed

    # -- PCIe and NVLink ----------------------------------------------------------------------------

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetCurrPcieLinkGeneration", handle).pcie_gen

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkGeneration", handle).pcie_gen_max

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetCurrPcieLinkWidth", handle).pcie_width

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetMaxPcieLinkWidth", handle).pcie_width_max

    def nvmlDeviceGetPcieThroughput(self, device: int, counter: int) -> int:
        gpu = self._gpu("nvmlDeviceGetPcieThroughput", device)
        if counter == real.NVML_PCIE_UTIL_TX_BYTES:
            return gpu.pcie_tx_kb
        if counter == real.NVML_PCIE_UTIL_RX_BYTES:
            return gpu.pcie_rx_kb
        raise _error(real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetNvLinkState(self, device: int, link: int) -> int:
        gpu = self._gpu("nvmlDeviceGetNvLinkState", device)
        if gpu.nvlinks == 0:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < gpu.nvlinks:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        return real.NVML_FEATURE_DISABLED if link in gpu.nvlink_down else real.NVML_FEATURE_ENABLED

    def nvmlDeviceGetFieldValues(self, handle: int, fieldIds: list[Any]) -> Any:
        """pynvml's return: a ctypes array of c_nvmlFieldValue_t, each with its own nvmlReturn.

        A query of the PCIe byte counters alone is counted as "nvmlDeviceGetFieldValues(PCIE_COUNT)", so that
        tests count the NVLink queries and the PCIe ones apart.
        """
        pcie = (real.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, real.NVML_FI_DEV_PCIE_COUNT_RX_BYTES)
        asked = {f[0] if isinstance(f, tuple) else f for f in fieldIds}
        counted_as = "nvmlDeviceGetFieldValues(PCIE_COUNT)" if asked <= set(pcie) else None
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle, counted_as)
        values = (real.c_nvmlFieldValue_t * len(fieldIds))()
        for slot, field_id in enumerate(fieldIds):
            fid, scope = field_id if isinstance(field_id, tuple) else (field_id, 0)
            value = values[slot]
            value.fieldId, value.scopeId = fid, scope
            value.valueType = real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            if fid in pcie:
                supported = gpu.pcie_bytes is not None
                value.nvmlReturn = real.NVML_SUCCESS if supported else real.NVML_ERROR_NOT_SUPPORTED
                value.value.ullVal = gpu.pcie_bytes.get(fid, 0) if gpu.pcie_bytes is not None else 0
                continue
            known = fid in (real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)
            if not known or not 0 <= scope < gpu.nvlinks:
                value.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
                continue
            value.nvmlReturn = gpu.nvlink_throughput_return
            value.value.ullVal = gpu.nvlink_kib.get((scope, fid), 0)
        return values

    # -- GPM ----------------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, device: int) -> Any:
        gpu = self._gpu("nvmlGpmQueryDeviceSupport", device)
        support = real.c_nvmlGpmSupport_t()
        support.version = real.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if gpu.gpm else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._check("nvmlGpmSampleAlloc")
        buffer = ctypes.pointer(real.struct_c_nvmlGpmSample_t())
        self.gpm_buffers[ctypes.addressof(buffer.contents)] = None
        return buffer

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        self._check("nvmlGpmSampleFree")
        address = ctypes.addressof(gpmSample.contents)
        if address not in self.gpm_buffers:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        del self.gpm_buffers[address]

    def nvmlGpmSampleGet(self, device: int, gpmSample: Any) -> Any:
        gpu = self._gpu("nvmlGpmSampleGet", device)
        address = ctypes.addressof(gpmSample.contents)
        if address not in self.gpm_buffers or not gpu.gpm:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT if gpu.gpm else real.NVML_ERROR_NOT_SUPPORTED)
        self.gpm_buffers[address] = (device, dict(gpu.gpm_percent))
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        """Fills each requested metric from the second sample (a real driver: the two samples' difference)."""
        self._check("nvmlGpmMetricsGet")
        if metricsGet.version != real.NVML_GPM_METRICS_GET_VERSION:
            raise _error(real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        one, two = (ctypes.addressof(metricsGet.sample1.contents), ctypes.addressof(metricsGet.sample2.contents))
        first, second = self.gpm_buffers.get(one), self.gpm_buffers.get(two)
        if first is None or second is None or first[0] != second[0] or one == two:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        for slot in range(metricsGet.numMetrics):
            metric = metricsGet.metrics[slot]
            if metric.metricId in second[1]:
                metric.nvmlReturn, metric.value = real.NVML_SUCCESS, second[1][metric.metricId]
            else:
                metric.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return metricsGet

    # -- events -------------------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self._check("nvmlEventSetCreate")
        event_set = real.c_nvmlEventSet_t()
        self.event_sets.add(id(event_set))
        return event_set

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._check("nvmlEventSetFree")
        if id(eventSet) not in self.event_sets:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        self.event_sets.discard(id(eventSet))

    def nvmlDeviceGetSupportedEventTypes(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetSupportedEventTypes", handle).event_types

    def nvmlDeviceRegisterEvents(self, handle: int, eventTypes: int, eventSet: Any) -> None:
        gpu = self._gpu("nvmlDeviceRegisterEvents", handle)
        if id(eventSet) not in self.event_sets:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        if eventTypes & ~gpu.event_types:
            raise _error(real.NVML_ERROR_NOT_SUPPORTED)
        self.registered[handle] = self.registered.get(handle, 0) | eventTypes

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        """The oldest waiting event of a registered type, else Timeout (at once: the fake never sleeps)."""
        self._check("nvmlEventSetWait_v2")
        self.wait_timeouts.append(timeoutms)
        if id(eventSet) not in self.event_sets:
            raise _error(real.NVML_ERROR_INVALID_ARGUMENT)
        for position, (handle, event_type, data) in enumerate(self.pending_events):
            if self.registered.get(handle, 0) & event_type:
                del self.pending_events[position]
                return SimpleNamespace(
                    device=handle, eventType=event_type, eventData=data, gpuInstanceId=0, computeInstanceId=0
                )
        raise _error(real.NVML_ERROR_TIMEOUT)

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def xid(self, index: int, code: int) -> None:
        """The driver reports XID ``code`` on GPU ``index`` (delivered only if it is registered)."""
        self.pending_events.append((index, real.nvmlEventTypeXidCriticalError, code))


# -- scenarios ----------------------------------------------------------------------------------------


def library_missing() -> FakeNvml:
    """A machine without the NVIDIA driver: pynvml imports, nvmlInit raises LibraryNotFound."""
    return FakeNvml(init_error=real.NVML_ERROR_LIBRARY_NOT_FOUND)


def no_devices() -> FakeNvml:
    """Driver present, no GPU (a VM with the driver installed, or every GPU hidden)."""
    return FakeNvml([])


def gpus(n: int, unsupported: set[str] | frozenset[str] = frozenset(), **fields: Any) -> FakeNvml:
    """``n`` GPUs with distinct names/uuids; ``unsupported`` functions raise NotSupported on every GPU."""
    return FakeNvml(
        [FakeGpu(name=f"NVIDIA Fake {index}", uuid=f"GPU-fake-{index:04d}", **fields) for index in range(n)],
        unsupported=unsupported,
    )


def lost_after(n_ticks: int, gpu_count: int = 2, index: int = 1) -> FakeNvml:
    """GPU ``index`` answers for ``n_ticks`` samples, then every query on it raises GpuIsLost."""
    fake = gpus(gpu_count)
    fake.lost_index = index
    fake.lost_after = n_ticks
    return fake


def processes(pids: dict[int, int | None], nspid_map: dict[int, int] | None = None, gpu_count: int = 1) -> FakeNvml:
    """GPU 0 runs compute processes ``{host pid: bytes}``. ``nspid_map`` ({host pid: container pid}) is
    what ``write_proc()`` puts in a fixture /proc, as seen from a procfs that shows both namespaces."""
    fake = gpus(gpu_count)
    fake.gpus[0].processes = list(pids.items())
    fake.nspid_map = dict(nspid_map or {})
    return fake


def h100_sxm(n: int = 1) -> FakeNvml:
    """A data-centre HGX node: H100 SXM boards, 18 NVLinks each, GPM, XID events, no fans."""
    return FakeNvml([FakeGpu(uuid=f"GPU-h100-{index:04d}") for index in range(n)])


def consumer_pcie(n: int = 1) -> FakeNvml:
    """A workstation's GeForce cards on PCIe Gen4: fans, no ECC, no NVLink, no GPM (Ada is not Hopper)."""
    cards = [
        FakeGpu(
            name="NVIDIA GeForce RTX 4090",
            uuid=f"GPU-4090-{index:04d}",
            memory_total=24 * 1024**3,
            fan_speed=38,
            pcie_gen=4,
            pcie_gen_max=4,
            nvlinks=0,
            gpm=False,
            ecc_corrected=0,
        )
        for index in range(n)
    ]
    return FakeNvml(cards, unsupported={"nvmlDeviceGetTotalEccErrors"})


def old_driver(n: int = 1) -> FakeNvml:
    """H100s under a driver older than GPM (r515): this pynvml has the GPM functions, the library does not."""
    return FakeNvml(
        [FakeGpu(uuid=f"GPU-old-{index:04d}") for index in range(n)],
        driver_version="515.105.01",
        missing={"nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleGet", "nvmlGpmMetricsGet"},
    )


def library_stand_in(folder: Path) -> str:
    """A folder for LD_LIBRARY_PATH holding a ``libnvidia-ml.so.1`` that loads: a link to this process's C library.

    Why: on Linux the recorder dlopens the driver's library before it imports pynvml (no driver, no import),
    so a test that puts a fake ``pynvml`` on a recorder's path gives it this too, as a GPU machine would have.
    """
    with open("/proc/self/maps", encoding="utf-8") as maps:
        libc = next(line.split()[-1] for line in maps if "/libc.so" in line or "/libc-" in line)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "libnvidia-ml.so.1").symlink_to(libc)
    return str(folder)
