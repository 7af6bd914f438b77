"""The render-ready model of a dashboard: strings and image references only, so templates need no logic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from llamamon.report.data import DASHBOARD_GROUPS, ReportData

ImageFormat = Literal["svg", "png"]


@dataclass(slots=True)
class Panel:
    id: str
    title: str
    image: str  # data: URI, or a relative file name in Markdown mode
    alt: str
    note: str = ""


@dataclass(slots=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    group_header: list[tuple[str, int]] = field(default_factory=list)  # (run, colspan) above columns
    note: str = ""


@dataclass(slots=True)
class Dashboard:
    id: str
    title: str
    empty: str = ""
    panels: list[Panel] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return not self.empty


HOW_TO_RECORD: dict[str, str] = {
    "system": "No system metrics recorded: run the job under `llamamon record -- CMD` to sample CPU, memory, "
    "disks, network, its process tree and GPUs.",
    "training": "No training metrics recorded: call `llamamon.log(loss=..., step=...)` from the training loop, "
    "or print HF-style `{'loss': ...}` lines under `llamamon record`.",
    "inference": "No inference metrics recorded: use `llamamon.InferenceMonitor` in the server, or point "
    "`scrape:` in monitoring.yaml at its /metrics endpoint.",
}

TITLES = {"system": "System", "training": "Training", "inference": "Inference"}


def dashboard_for(data: ReportData, name: str) -> Dashboard:
    """Dashboard ``name``, already empty with its how-to-record hint when ``data`` has none of its groups."""
    d = Dashboard(name, TITLES[name])
    if not data.has_group(*DASHBOARD_GROUPS[name]):
        d.empty = HOW_TO_RECORD[name]
    return d


def dashboard_order(selected: Sequence[str], data: ReportData) -> list[str]:
    """What the runs are about first: Training for a training run, Inference for a server, System after.

    Dashboards with data come before empty ones (whose hint is all they show); among them the order is
    training, inference, system, so a run that trained and served shows both before its host charts.
    """
    rank = {"training": 0, "inference": 1, "system": 2}
    return sorted(selected, key=lambda d: (not data.has_group(*DASHBOARD_GROUPS.get(d, (d,))), rank.get(d, len(rank))))
