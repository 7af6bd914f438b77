"""The alert state machine stepped over the history evaluator's conditions, tick by tick: the reference
the vectorised episodes (``rules.history``) and the live loop (``rules.instant``) are held to."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from llamamon.rules.history import conditions
from llamamon.rules.history_input import Grid, Samples, prepare
from llamamon.rules.model import Rule, needed_metrics
from llamamon.rules.promql import US
from llamamon.rules.states import AlertStates
from llamamon.samples import AlertEvent, Labels, make_labels


def step_all(states: AlertStates, rules: Sequence[Rule], frame, t: float) -> list[AlertEvent]:
    """Evaluate every enabled rule at ``t`` (seconds) over ``frame`` (store columns) and step the states."""
    rules = [r for r in rules if r.enabled]
    results = conditions(rules, prepare(frame, needed_metrics(rules)), Grid(round(t * US), US, 1))
    events: list[AlertEvent] = []
    for rule in rules:
        df, labels = results[rule.name]
        events.extend(states.step(rule, t, {make_labels(labels[sid]): value for _, sid, value in df.iter_rows()}))
    return events


def step_over(
    rules: Sequence[Rule], samples: Samples, grid: Grid
) -> Iterator[tuple[int, AlertStates, list[AlertEvent]]]:
    """AlertStates stepped over every tick of ``grid``: (tick, the states after it, its events)."""
    rules = [r for r in rules if r.enabled]
    results = conditions(rules, samples, grid)
    per_rule: dict[str, dict[int, dict[Labels, float]]] = {}
    for rule in rules:
        df, labels = results[rule.name]
        ticks: dict[int, dict[Labels, float]] = {}
        for k, sid, value in df.iter_rows():
            ticks.setdefault(k, {})[make_labels(labels[sid])] = value
        per_rule[rule.name] = ticks
    states = AlertStates()
    for k in range(grid.n):
        t = grid.time(k) / US
        events: list[AlertEvent] = []
        for rule in rules:
            events.extend(states.step(rule, t, per_rule[rule.name].get(k, {})))
        yield k, states, events
