"""The rule model: an alert rule as loaded from monitoring.yaml or derived from a threshold, and one
alert episode as a history of it finds, plus what a rule reads from the store.

Why apart from evaluation: the config, the exporter, the channels and both evaluators share these types;
none of them needs polars or the state machine to name a rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llamamon import catalog
from llamamon.rules.tree import Condition
from llamamon.samples import AlertEvent, Labels


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule, from monitoring.yaml or derived from a threshold (``source`` says which)."""

    name: str
    condition: Condition
    severity: str = "warning"
    channels: tuple[str, ...] = ()
    for_: float = 0.0
    keep_firing_for: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""
    enabled: bool = True


@dataclass(slots=True)
class Alert:
    """One episode of one alert instance in a history: when it became active, fired and resolved."""

    rule: str
    severity: str
    labels: Labels
    annotations: Labels
    active_at: float
    fired_at: float
    resolved_at: float | None
    value: float  # at the tick it fired
    peak: float  # most extreme value while active (max, or min for "<" conditions)
    channels: tuple[str, ...] = ()

    @property
    def run(self) -> str | None:
        return dict(self.labels).get("run")

    @property
    def host(self) -> str | None:
        return dict(self.labels).get("host")

    def events(self) -> list[AlertEvent]:
        base = dict(
            rule=self.rule,
            severity=self.severity,
            labels=self.labels,
            annotations=self.annotations,
            value=self.value,
            started_at=self.fired_at,
            channels=self.channels,
            run=self.run,
            host=self.host,
        )
        out = [AlertEvent(state="firing", **base)]
        if self.resolved_at is not None:
            out.append(AlertEvent(state="resolved", ended_at=self.resolved_at, **base))
        return out


def reads(rule: Rule) -> frozenset[str]:
    """The stored metrics a rule reads: its condition's, and the part series of a catalog histogram."""
    return rule.condition.metrics.union(*(catalog.histogram_parts(m) for m in rule.condition.metrics))


def needed_metrics(rules: Iterable[Rule]) -> set[str]:
    return {m for r in rules for m in reads(r)}


def stored_names(metrics: Iterable[str], aliases: dict[str, str] | None = None) -> set[str]:
    """The names these metrics may be stored under: themselves and their catalog and config aliases.

    Why: a reader filters the store on them before anything is renamed, so an alias's rows come too.
    """
    wanted = set(metrics)
    table = {**catalog.ALIASES, **(aliases or {})}
    return wanted | {alias for alias, target in table.items() if target in wanted}
