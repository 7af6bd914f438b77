"""llamamon: record, alert on and report the metrics of ML training and inference jobs.

``import llamamon`` is on the hot path of every training script, so this module stays light: the public
names are loaded on first access (PEP 562), never polars, pyarrow or matplotlib.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
