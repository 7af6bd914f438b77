"""The alert the channel tests deliver: GPU 0's memory on box, in one run; each test changes what it needs."""

from __future__ import annotations

from typing import Any

from llamamon.samples import AlertEvent, make_labels

RUN = "20260901T101500Z-box-3f2a"
FIRED_AT = 1_790_000_000.0


def gpu_alert(
    rule: str = "gpu_memory_high", state: str = "firing", severity: str = "critical", **fields: Any
) -> AlertEvent:
    """A firing (or, with ``ended_at``, resolved) alert on gpu 0 of box's run, value 0.97; ``fields`` override."""
    defaults: dict[str, Any] = {"labels": make_labels(gpu="0"), "annotations": make_labels(summary=f"{rule} on gpu 0")}
    defaults |= {"value": 0.97, "started_at": FIRED_AT, "ended_at": None, "run": RUN, "host": "box"}
    return AlertEvent(rule=rule, state=state, severity=severity, **(defaults | fields))
