"""A stand-in for the job's ``torch.cuda`` (the functions llamamon.monitors.cuda_memory calls, under torch's
names and signatures), for the CUDA paths a CPU-only machine cannot run; real torch covers the rest."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass
class FakeDevice:
    allocated: int = 0
    reserved: int = 0
    peak: int = 0
    stats: dict[str, int] = field(default_factory=dict)  # memory_stats() keys: num_alloc_retries, num_ooms


class FakeCuda:
    """``torch.cuda`` of a job with these devices; ``initialized`` is whether the job has touched CUDA yet."""

    def __init__(self, devices: list[FakeDevice], available: bool = True, initialized: bool = True) -> None:
        self.devices = devices
        self.available = available
        self.initialized = initialized

    def is_available(self) -> bool:
        return self.available

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return len(self.devices)

    def memory_allocated(self, device: int) -> int:
        return self.devices[device].allocated

    def memory_reserved(self, device: int) -> int:
        return self.devices[device].reserved

    def max_memory_allocated(self, device: int) -> int:
        return self.devices[device].peak

    def memory_stats(self, device: int) -> dict[str, Any]:
        return dict(self.devices[device].stats)


def fake_torch(cuda: FakeCuda) -> ModuleType:
    """A ``torch`` module whose ``torch.cuda`` is ``cuda``."""
    torch = ModuleType("torch")
    torch.cuda = cuda  # type: ignore[attr-defined]
    return torch


def install(cuda: FakeCuda) -> None:
    """In a job's interpreter: as if the job had imported torch (and ``cuda`` were its torch.cuda)."""
    sys.modules["torch"] = fake_torch(cuda)
