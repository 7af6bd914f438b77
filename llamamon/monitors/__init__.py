"""Metrics recorded from inside a Python job: TrainingMonitor and InferenceMonitor.

Neither imports polars, pyarrow or matplotlib.
"""

from __future__ import annotations

from llamamon.monitors.cuda_memory import log_cuda_memory
from llamamon.monitors.inference import InferenceMonitor, Request, derive, latency_summary, percentile
from llamamon.monitors.training import TrainingMonitor

__all__ = [
    "InferenceMonitor",
    "Request",
    "TrainingMonitor",
    "derive",
    "latency_summary",
    "log_cuda_memory",
    "percentile",
]
