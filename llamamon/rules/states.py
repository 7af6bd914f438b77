"""The alert state machine: inactive -> pending -> firing -> resolved per (rule, labels), as Prometheus'
``AlertingRule.Eval``, stepped one evaluation at a time and serialisable between processes.

One definition of the timing, ``elapsed``: an instance fires at the first evaluation where it has been
active for ``for``; a firing instance whose condition stopped holding keeps firing until
``keep_firing_for`` has elapsed since the first evaluation without it, and resolves there (at once
without keep_firing_for); a run's end resolves every instance of the run (``end_run``). The live loop steps
``AlertStates`` (``rules.instant.step_at``); the history (``rules.history``) computes the same episodes
vectorised, its ``Grid.after`` being ``elapsed`` on a grid's ticks. ``tests/test_rules_instant.py`` holds
both to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from llamamon.rules import template
from llamamon.rules.model import Rule
from llamamon.rules.tree import unit_of
from llamamon.samples import AlertEvent, Labels, make_labels

TOLERANCE_S = 1e-6  # one microsecond: the store's and the grid's resolution


def elapsed(since: float, t: float, duration: float) -> bool:
    """``duration`` seconds have passed from ``since`` to ``t`` (both ``for`` and ``keep_firing_for``)."""
    return t - since >= duration - TOLERANCE_S


@dataclass(slots=True)
class Instance:
    rule: str
    labels: dict[str, str]
    state: str  # pending | firing
    active_at: float
    fired_at: float | None = None
    value: float = math.nan
    keep_since: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)


class AlertStates:
    """Prometheus' per-rule alert bookkeeping, stepped tick by tick; ``to_json``/``from_json`` between runs."""

    def __init__(self) -> None:
        self.active: dict[str, dict[str, Instance]] = {}

    def step(self, rule: Rule, t: float, elements: dict[Labels, float]) -> list[AlertEvent]:
        """Advance ``rule`` to time ``t`` (seconds) given its true series -> value; return changes."""
        events: list[AlertEvent] = []
        table = self.active.setdefault(rule.name, {})
        seen: set[str] = set()
        for series, value in elements.items():
            sd = dict(series)
            labels = template.alert_labels(rule, sd, value)
            fp = json.dumps(sorted(labels.items()))
            seen.add(fp)
            ann = dict(template.annotations(rule, sd, value))
            inst = table.get(fp)
            if inst is None:
                table[fp] = Instance(rule.name, labels, "pending", t, value=value, annotations=ann)
            else:
                inst.value, inst.annotations = value, ann
        for fp, inst in list(table.items()):
            if fp not in seen:
                kept = False
                if inst.state == "firing" and rule.keep_firing_for > 0:
                    if inst.keep_since is None:
                        inst.keep_since = t
                    kept = not elapsed(inst.keep_since, t, rule.keep_firing_for)
                if kept:
                    continue
                del table[fp]
                if inst.state == "firing":
                    events.append(self.event(rule, inst, "resolved", t))
                continue
            inst.keep_since = None
            if inst.state == "pending" and elapsed(inst.active_at, t, rule.for_):
                inst.state, inst.fired_at = "firing", t
                events.append(self.event(rule, inst, "firing", t))
        return events

    def end_run(self, rules: Sequence[Rule], run: str, t: float) -> list[AlertEvent]:
        """The run is over: every instance of it ends, its firing ones resolve at ``t``.

        Why apart from ``step``: ``keep_firing_for`` would keep a finished run's alert firing with nothing
        left to evaluate it against, and the channels would never hear it resolve.
        """
        events: list[AlertEvent] = []
        for rule in rules:
            table = self.active.get(rule.name, {})
            for fp, inst in list(table.items()):
                if inst.labels.get("run") == run:
                    del table[fp]
                    if inst.state == "firing":
                        events.append(self.event(rule, inst, "resolved", t))
        return events

    def firing(self, rule: str) -> list[Instance]:
        return [i for i in self.active.get(rule, {}).values() if i.state == "firing"]

    @staticmethod
    def event(rule: Rule, inst: Instance, state: str, t: float) -> AlertEvent:
        """The notification-shaped event of one instance at ``t`` (a change, or a firing one repeated)."""
        labels = make_labels(inst.labels)
        return AlertEvent(
            rule=rule.name,
            state=state,  # type: ignore[arg-type]
            severity=rule.severity,
            labels=labels,
            annotations=make_labels(inst.annotations),
            value=inst.value,
            started_at=inst.fired_at if inst.fired_at is not None else t,
            ended_at=t if state == "resolved" else None,
            channels=rule.channels,
            run=inst.labels.get("run"),
            host=inst.labels.get("host"),
            unit=unit_of(rule.condition.tree) or "",
        )

    def to_json(self) -> str:
        data = {
            name: [
                {
                    "labels": i.labels,
                    "state": i.state,
                    "active_at": i.active_at,
                    "fired_at": i.fired_at,
                    "value": None if math.isnan(i.value) else i.value,
                    "keep_since": i.keep_since,
                    "annotations": i.annotations,
                }
                for i in table.values()
            ]
            for name, table in self.active.items()
        }
        return json.dumps({"version": 1, "rules": data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AlertStates:
        states = cls()
        data = json.loads(text)
        for name, items in data.get("rules", {}).items():
            table = states.active.setdefault(name, {})
            for d in items:
                value = math.nan if d.get("value") is None else float(d["value"])
                inst = Instance(
                    name,
                    dict(d["labels"]),
                    d["state"],
                    d["active_at"],
                    d.get("fired_at"),
                    value,
                    d.get("keep_since"),
                    dict(d.get("annotations", {})),
                )
                table[json.dumps(sorted(inst.labels.items()))] = inst
        return states
