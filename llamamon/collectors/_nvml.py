"""The one place that imports pynvml (nvidia-ml-py): start/stop, per-field queries, error tiers.

Why one wrapper: NVML fails in three very different ways and each needs its own answer:

* **unavailable** — pynvml cannot be imported; ``nvmlInit`` raises LibraryNotFound, DriverNotLoaded,
  LibRmVersionMismatch or NoPermission; or there are no devices. The collector turns itself off with a
  human reason; nothing is retried per tick. On a machine without a driver ``import pynvml`` works and
  ``nvmlInit`` fails, so this is decided at start, never at import.
* **field unsupported** — NotSupported or FunctionNotFound (or an older driver than pynvml expects) for
  one query on one device. That field is dropped for that device for the rest of the run (one debug line)
  and never asked again; the long schema simply has no row for it.
* **transient** — GpuIsLost, Unknown, Timeout (and any other NVML error during a tick): the device is
  skipped this tick, a warning is logged once per (device, error class), and it is asked again next tick.

The module object is injected (``Nvml(module)``) so tests can pass ``tests/fakes/nvml.py``, which raises
pynvml's real exception classes; classification therefore looks the classes up on the module in use.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_UNAVAILABLE_REASONS: dict[str, str] = {
    "NVMLError_LibraryNotFound": "NVML library not found (no NVIDIA driver on this machine)",
    "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded (the kernel module is not running)",
    "NVMLError_LibRmVersionMismatch": (
        "NVML library and NVIDIA kernel driver versions differ (a driver update needs a reboot)"
    ),
    "NVMLError_NoPermission": "no permission to use NVML (NVIDIA device files not accessible to this user)",
}
_UNSUPPORTED = (
    "NVMLError_NotSupported",
    "NVMLError_FunctionNotFound",
    "NVMLError_Deprecated",
    "NVMLLibraryMismatchError",
)
# Why NoPermission and InvalidArgument are per-field outside init: some queries (ECC, energy on some boards)
# need root or a newer board; they fail the same way every tick, so asking again only fills the log.
_FIELD_UNSUPPORTED = (*_UNSUPPORTED, "NVMLError_NoPermission", "NVMLError_InvalidArgument")


class NvmlUnavailable(Exception):
    """NVML cannot be used on this machine; ``reason`` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unsupported(Exception):
    """This query cannot be answered on this device, now or later (NotSupported, no such function...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceSkipped(Exception):
    """A transient NVML error: leave this device out of this tick only."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"GPU {index}: {error}")
        self.index = index
        self.error = error


# What pynvml's _LoadNvmlLibrary opens on Linux, and nothing else. Asked first: on a machine without the
# driver that one failed dlopen is the whole answer, and the binding's ~12 ms of ctypes declarations
# (most of a GPU-less `record`'s NVML cost) is never paid. Where it loads, pynvml gets the same library.
LINUX_LIBRARY = "libnvidia-ml.so.1"


def import_nvml() -> Any:
    """The pynvml module; NvmlUnavailable where it or the library it loads is missing."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(LINUX_LIBRARY)
        except OSError:
            raise NvmlUnavailable(_UNAVAILABLE_REASONS["NVMLError_LibraryNotFound"]) from None
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed (cannot import pynvml: {exc})") from exc


def _isinstance(exc: BaseException, module: Any, names: tuple[str, ...]) -> bool:
    classes = tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))
    return bool(classes) and isinstance(exc, classes)


def _is_nvml_error(exc: BaseException, module: Any) -> bool:
    return _isinstance(exc, module, ("NVMLError", "NVMLLibraryMismatchError"))


def unavailable_reason(exc: BaseException, module: Any) -> str:
    """Why NVML could not start, for doctor, the recorder's one line and the run metadata."""
    for name, reason in _UNAVAILABLE_REASONS.items():
        if _isinstance(exc, module, (name,)):
            return reason
    return f"NVML failed to start ({type(exc).__name__}: {exc})"


class Nvml:
    """An NVML session: devices opened at ``start()``, fields queried one at a time with ``call()``."""

    def __init__(self, module: Any | None = None) -> None:
        self.module = module
        self.handles: dict[int, Any] = {}
        self.driver_version: str | None = None
        self._started = False
        self._dropped: set[tuple[int, str]] = set()
        self._warned: set[tuple[int, str]] = set()
        # GPU index -> {field: why it is not recorded}: what doctor and the run's metadata say is missing.
        self.unavailable: dict[int, dict[str, str]] = {}

    def start(self) -> None:
        """Initialise NVML and open every device; NvmlUnavailable with the reason when that is impossible."""
        if self.module is None:
            self.module = import_nvml()
        nvml = self.module
        try:
            nvml.nvmlInit()
        except Exception as exc:
            if not _is_nvml_error(exc, nvml):
                raise
            raise NvmlUnavailable(unavailable_reason(exc, nvml)) from exc
        self._started = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            self.stop()
            if not _is_nvml_error(exc, nvml):
                raise
            raise NvmlUnavailable(f"NVML cannot count GPUs ({exc})") from exc
        if count == 0:
            self.stop()
            raise NvmlUnavailable("NVML found no NVIDIA GPU on this machine")
        failures: list[str] = []
        for index in range(count):
            try:
                self.handles[index] = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                if not _is_nvml_error(exc, nvml):
                    raise
                failures.append(f"GPU {index}: {exc}")
                log.warning("GPU %d cannot be opened (%s); it is left out of this run", index, exc)
        if not self.handles:
            self.stop()
            raise NvmlUnavailable("no GPU could be opened (" + "; ".join(failures) + ")")
        self.driver_version = self.system("nvmlSystemGetDriverVersion")

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.handles.clear()
            try:
                self.module.nvmlShutdown()
            except Exception as exc:
                if not _is_nvml_error(exc, self.module):
                    raise
                log.debug("nvmlShutdown failed: %s", exc)

    def system(self, function: str) -> Any | None:
        """A device-less query (driver version); None when it fails, which only costs a detail in doctor."""
        fn = getattr(self.module, function, None)
        if fn is None:
            return None
        try:
            return fn()
        except Exception as exc:
            if not _is_nvml_error(exc, self.module):
                raise
            log.debug("%s failed: %s", function, exc)
            return None

    def dropped(self, index: int, field: str) -> bool:
        return (index, field) in self._dropped

    def call(self, index: int, field: str, function: str, *args: Any) -> Any | None:
        """``function(handle, *args)`` for device ``index``; None once ``field`` is unsupported there.

        Raises DeviceSkipped for a transient error. ``field`` names what is dropped: one function can feed
        several fields (ECC corrected and uncorrected) that a board supports separately.
        """
        key = (index, field)
        if key in self._dropped:
            return None
        try:
            return self.attempt(index, function, *args)
        except Unsupported as exc:
            self.drop(index, field, f"{function}: {exc.reason}")
            return None

    def attempt(self, index: int, function: str, *args: Any) -> Any:
        """``function(handle, *args)``, raising Unsupported (nothing recorded: the caller decides what that
        means, e.g. the end of a device's NVLinks) or DeviceSkipped (transient, warned once)."""
        fn: Callable[..., Any] | None = getattr(self.module, function, None)
        if fn is None:
            raise Unsupported("this pynvml has no such function")
        try:
            return fn(self.handles[index], *args)
        except Exception as exc:
            if not _is_nvml_error(exc, self.module):
                raise
            if _isinstance(exc, self.module, _FIELD_UNSUPPORTED):
                raise Unsupported(str(exc)) from exc
            self.transient(index, function, exc)
            raise DeviceSkipped(index, exc) from exc

    def plain(self, function: str, *args: Any) -> Any:
        """A call that takes no device handle first (event sets, GPM samples): Unsupported when this driver
        or pynvml cannot do it; any other NVML error is raised as is, for the caller to judge."""
        fn: Callable[..., Any] | None = getattr(self.module, function, None)
        if fn is None:
            raise Unsupported("this pynvml has no such function")
        try:
            return fn(*args)
        except Exception as exc:
            if _is_nvml_error(exc, self.module) and _isinstance(exc, self.module, _FIELD_UNSUPPORTED):
                raise Unsupported(str(exc)) from exc
            raise

    def transient(self, index: int, function: str, exc: BaseException, skipped: str = "this GPU") -> None:
        """Warn once per (device, error class) about an error that may pass; ``skipped`` says what is left out."""
        kind = (index, type(exc).__name__)
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(
                "GPU %d: %s (%s); skipping %s for now, will retry every sample (said once)",
                index,
                exc,
                function,
                skipped,
            )

    def is_error(self, exc: BaseException, *names: str) -> bool:
        """Whether ``exc`` is one of the module's NVML error classes ``names`` (any NVML error if none)."""
        return _isinstance(exc, self.module, names) if names else _is_nvml_error(exc, self.module)

    def drop(self, index: int, field: str, why: str) -> None:
        """``field`` is not recorded for GPU ``index`` this run: said once (debug), kept for describe()."""
        key = (index, field)
        if key in self._dropped:
            return
        self._dropped.add(key)
        self.unavailable.setdefault(index, {})[field] = why
        log.debug("GPU %d: %s not available (%s); not asked again this run", index, field, why)
