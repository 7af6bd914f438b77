"""The one allowed fake: an NVML module stand-in for GpuCollector(nvml=...).

It has the functions llamamon calls, under pynvml's names, and raises pynvml's **real** exception
classes (``pynvml.NVMLError(code)`` builds the matching subclass), so ``collectors/_nvml.py`` classifies
exactly what it would see on a GPU machine. Scenario constructors at the bottom build the cases the
tests need; ``calls`` counts every function call so a test can prove a dropped field is not re-queried.
"""

from __future__ import annotations

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

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        unsupported: set[str] | frozenset[str] = frozenset(),
        lost_index: int | None = None,
        lost_after: int | None = None,
        driver_version: str = "575.57.08",
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.unsupported = set(unsupported)
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

    def _check(self, function: str) -> None:
        self.calls[function] += 1
        if not self.initialised:
            raise _error(real.NVML_ERROR_UNINITIALIZED)
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

    def _gpu(self, function: str, handle: int) -> FakeGpu:
        self._check(function)
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
