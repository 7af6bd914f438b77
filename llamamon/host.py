"""The host name every run, row, .prom file and notification carries: one place to ask.

Why an override: on a cluster the kernel's hostname can be a container id or the same in every pod, and a
site names its nodes otherwise; ``LLAMAMON_HOST`` says which name the store, the report and Prometheus use.
"""

from __future__ import annotations

import os
import socket


def this_host() -> str:
    """``LLAMAMON_HOST`` when set (and not blank), else the kernel's hostname."""
    return os.environ.get("LLAMAMON_HOST", "").strip() or socket.gethostname()
