"""torch.cuda's allocator figures, read from inside the job: what NVML cannot see.

NVML sees the memory a process holds; only the job's own torch knows how much of it is live tensors
(allocated), how much its caching allocator keeps (reserved), the peak, and how often an allocation had to
free the cache and retry (``num_alloc_retries``: the job is close to an out-of-memory error, usually long
before one). llamamon never imports torch: it reads ``sys.modules`` for the torch the job imported, and
reads nothing until the job has initialised CUDA (asking earlier would create a CUDA context, hundreds of
MiB on every visible GPU, in a job that may not even use them).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from llamamon import api
from llamamon.samples import Row, make_labels

logger = logging.getLogger("llamamon.monitors")

# (metric, how it is read from torch.cuda for one device)
GAUGES = (
    ("torch_cuda_memory_allocated", "memory_allocated"),
    ("torch_cuda_memory_reserved", "memory_reserved"),
    ("torch_cuda_memory_peak", "max_memory_allocated"),
)
COUNTERS = (("torch_cuda_alloc_retries", "num_alloc_retries"), ("torch_cuda_ooms", "num_ooms"))


def job_cuda() -> Any | None:
    """The job's ``torch.cuda`` once the job has imported torch and initialised CUDA; None otherwise."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is None:
        return None
    try:
        # is_initialized() first: it touches nothing, where is_available() may load the driver.
        return cuda if cuda.is_initialized() and cuda.is_available() else None
    except Exception:  # Why broad: a broken CUDA install must not break the job that is being monitored
        logger.debug("torch.cuda is not usable", exc_info=True)
        return None


def cuda_memory_rows(cuda: Any, now: float, step: int | None = None) -> list[Row]:
    """One row per figure per device of ``cuda`` (torch.cuda, or a stand-in with its functions) that the job
    has used: a DDP rank sees every GPU of the node but allocates on one, and the others' zeros say nothing."""
    rows = []
    for index in range(cuda.device_count()):
        values = [(metric, float(getattr(cuda, function)(index))) for metric, function in GAUGES]
        if not any(value for _, value in values):
            continue
        labels = make_labels({"device": f"cuda:{index}"})
        rows.extend(Row(now, "gpu", metric, value, labels, step) for metric, value in values)
        stats = cuda.memory_stats(index)
        for metric, key in COUNTERS:
            if key in stats:  # older torch releases lack num_ooms
                rows.append(Row(now, "gpu", metric, float(stats[key]), labels, step))
    return rows


def job_cuda_memory_rows(now: float | None = None, step: int | None = None) -> list[Row]:
    """The figures of the job's CUDA devices now; [] when the job does not use CUDA or reading them fails."""
    cuda = job_cuda()
    if cuda is None:
        return []
    try:
        return cuda_memory_rows(cuda, time.time() if now is None else now, step)
    except Exception:  # Why broad: as in job_cuda; the next call tries again
        logger.debug("torch.cuda memory figures could not be read", exc_info=True)
        return []


def log_cuda_memory(step: int | None = None) -> bool:
    """Record torch.cuda's allocator figures now, beside what ``llamamon.log`` records (same run, same
    journal); call it every few steps in a loop without ``TrainingMonitor``. Returns False (and records
    nothing) when the job has not imported torch or not initialised CUDA."""
    rows = job_cuda_memory_rows(step=step)
    if rows:
        api.record_rows(rows)
    return bool(rows)
