"""The data passed between layers: samples, run metadata and alert events.

Frozen, slotted dataclasses with no behaviour beyond small derived views, so that collectors, the
store, rules, channels and reports agree on shape without importing each other; and the one way a
sample becomes a stored row (:class:`RowMaker`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from llamamon.catalog import group_of

Labels = tuple[tuple[str, str], ...]
NO_LABELS: Labels = ()


def make_labels(mapping: dict[str, Any] | None = None, **more: Any) -> Labels:
    """Canonical label tuple: sorted by name, values as strings, empty values dropped (as Prometheus)."""
    items = dict(mapping or {})
    items.update(more)
    return tuple(sorted((str(k), str(v)) for k, v in items.items() if v is not None and v != ""))


def labels_to_str(labels: Labels) -> str:
    """How labels are stored in the ``labels`` column: compact JSON with sorted keys, "" for none."""
    if not labels:
        return ""
    return json.dumps(dict(labels), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def labels_from_str(text: str | None) -> Labels:
    if not text:
        return NO_LABELS
    return make_labels(json.loads(text))


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one metric for one label set, as a collector or the job produced it.

    ``time`` is Unix seconds (UTC); ``None`` means "stamp with the tick's time" (the recorder does).
    """

    metric: str
    value: float
    labels: Labels = NO_LABELS
    time: float | None = None
    step: int | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """A sample as the store keeps it: stamped, and filed under a group (system, gpu, training …)."""

    time: float
    group: str
    metric: str
    value: float
    labels: Labels = NO_LABELS
    step: int | None = None


class RowMaker:
    """One source's samples as stored rows: a metric the catalog knows goes to the catalog's group, any
    other to the source's own ``group`` (a user collector's, ``"custom"`` for a job's output lines); a
    sample without a time gets ``now``, the tick's.

    Why one per source, with its cache: this runs for every sample on the sampler's hot path, and the
    group of a name never changes.
    """

    __slots__ = ("_groups", "group")

    def __init__(self, group: str = "custom") -> None:
        self.group = group
        self._groups: dict[str, str] = {}

    def __call__(self, samples: Iterable[Sample], now: float) -> list[Row]:
        groups = self._groups
        rows = []
        for sample in samples:
            group = groups.get(sample.metric)
            if group is None:
                group = group_of(sample.metric)
                groups[sample.metric] = group = self.group if group == "custom" else group
            time = sample.time if sample.time is not None else now
            rows.append(Row(time, group, sample.metric, sample.value, sample.labels, sample.step))
        return rows


def user_name() -> str:
    """Who runs the job, for the run metadata: the login name, else the uid (a container user with no
    passwd entry has no name)."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass(slots=True)
class RunInfo:
    """A run's metadata, written at start and completed at exit (runs/<id>.json in the store)."""

    id: str
    host: str
    start: float
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    cwd: str = ""
    user: str = ""
    pid: int | None = None
    end: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    python_version: str = ""
    llamamon_version: str = ""
    git_commit: str | None = None
    git_dirty: bool | None = None
    cpu_model: str | None = None
    gpu_names: list[str] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    interval: float | None = None
    samples: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the job's hyperparameters (llamamon.init)
    source: Literal["record", "api", "watch"] = "record"
    run_group: str | None = None  # the multi-node job this run is one node of (llamamon.launcher)
    node_rank: int | None = None  # the launcher's node index (NODE_RANK, GROUP_RANK, SLURM_NODEID)
    rank: int | None = None  # the process's global rank when the launcher gave one (RANK, SLURM_PROCID)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def active(self) -> bool:
        return self.end is None


Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A change in one alert instance (rule + labels) that channels deliver: firing or resolved."""

    rule: str
    state: Literal["firing", "resolved"]
    severity: str
    labels: Labels
    annotations: Labels
    value: float
    started_at: float
    ended_at: float | None = None
    channels: tuple[str, ...] = ()
    run: str | None = None
    host: str | None = None
    unit: str = ""  # the catalog unit ``value`` is in (as stored: ms for latencies); "" when unknown

    @property
    def fingerprint(self) -> str:
        """Stable identity of the alert instance across ticks and processes."""
        return self.rule + labels_to_str(self.labels)

    @property
    def summary(self) -> str:
        return dict(self.annotations).get("summary", f"{self.rule} is {self.state}")
