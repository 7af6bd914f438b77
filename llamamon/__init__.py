"""llamamon: record, alert on and report the metrics of ML training and inference jobs.

``import llamamon`` is on the hot path of every training script, so this module stays light: the public
names are loaded on first access (PEP 562), and none of them imports polars, pyarrow, psutil or matplotlib
until it is used for something that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["InferenceMonitor", "MetricsCollector", "TrainingMonitor", "__version__", "init", "log"]

_LAZY = {
    "log": "llamamon.api",
    "init": "llamamon.api",
    "TrainingMonitor": "llamamon.monitors",
    "InferenceMonitor": "llamamon.monitors",
    "MetricsCollector": "llamamon.collectors.base",
}

if TYPE_CHECKING:
    from llamamon.api import init, log
    from llamamon.collectors.base import MetricsCollector
    from llamamon.monitors import InferenceMonitor, TrainingMonitor
else:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'llamamon' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later accesses skip this function
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
