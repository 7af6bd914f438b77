"""What each collector can see on this machine, as plain JSON-able data for ``llamamon doctor``.

Doctor answers "why is my GPU chart empty?" before a run, so this asks the same questions the
collectors ask, through the same code (GpuCollector's open/describe, the process collector's discovery
check), rather than a second implementation that could disagree with what a recording does.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psutil

from llamamon.collectors.gpu import GpuCollector
from llamamon.collectors.process import proc_children_supported
from llamamon.collectors.system import cpu_model, existing_parent

# Filesystems that hold no user data; listing them would bury the disks that matter.
_PSEUDO_FS = {"squashfs", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "cgroup", "cgroup2", "nsfs", "tracefs"}


def describe_system(metrics_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """CPUs, memory, swap, load and disks, and which filesystem ``disk_usage`` will measure."""
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    try:
        load: list[float] | None = [round(x, 2) for x in psutil.getloadavg()]
    except (OSError, AttributeError):
        load = None
    frequency = None
    try:
        freq = psutil.cpu_freq()
        frequency = round(freq.max or freq.current) if freq is not None else None
    except (OSError, NotImplementedError, AttributeError):
        frequency = None
    disks = []
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=False):
        if part.fstype in _PSEUDO_FS or part.device in seen:
            continue
        seen.add(part.device)
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue
        disks.append(
            {
                "device": part.device,
                "mountpoint": part.mountpoint,
                "fstype": part.fstype,
                "total": usage.total,
                "used": usage.used,
                "usage": usage.used / (usage.used + usage.free) if usage.used + usage.free else 0.0,
            }
        )
    folder = existing_parent(Path(metrics_dir))
    try:
        folder_usage = psutil.disk_usage(str(folder))
        metrics_fs: dict[str, Any] | None = {
            "path": str(folder),
            "total": folder_usage.total,
            "free": folder_usage.free,
            "usage": folder_usage.used / (folder_usage.used + folder_usage.free)
            if folder_usage.used + folder_usage.free
            else 0.0,
        }
    except OSError:
        metrics_fs = None
    return {
        "psutil_version": psutil.__version__,
        "cpu": {
            "logical": psutil.cpu_count(logical=True),
            "physical": psutil.cpu_count(logical=False),
            "model": cpu_model(),
            "max_mhz": frequency,
        },
        "memory": {"total": memory.total, "available": memory.available},
        "swap": {"total": swap.total, "used": swap.used},
        "load": load,
        "disks": disks,
        "disk_io_counters": psutil.disk_io_counters() is not None,
        "metrics_filesystem": metrics_fs,
    }


def describe_process() -> dict[str, Any]:
    """How the process-tree collector finds descendants here, and whether per-process I/O is readable."""
    try:
        psutil.Process().io_counters()
        io = True
    except (psutil.Error, AttributeError, NotImplementedError, OSError):
        io = False
    fast = proc_children_supported()
    return {
        "discovery": "/proc/<pid>/task/<tid>/children" if fast else "psutil scan of every process",
        "cost_grows_with_machine": not fast,
        "io_counters": io,
    }


async def _describe_gpu(nvml: Any | None) -> dict[str, Any]:
    collector = GpuCollector(nvml=nvml)
    await collector.open()
    try:
        return collector.describe()
    finally:
        await collector.close()


def describe_gpu(nvml: Any | None = None, enabled: bool = True) -> dict[str, Any]:
    """NVML driver and GPUs, or why there are none (the same reason a recording would give)."""
    if not enabled:
        return {"available": False, "reason": "turned off (--no-gpu)", "driver_version": None, "gpus": []}
    return asyncio.run(_describe_gpu(nvml))
