"""The alerts a report shows: the rules engine replayed over the chosen runs, as firing spans.

The same rules and thresholds as ``llamamon alerts test`` and ``watch`` (monitoring.yaml plus the
built-in ones), so the report, CI and live alerting never disagree about what fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamamon.report.data import AlertSpan
from llamamon.samples import RunInfo, make_labels

# Labels every alert carries that the report already shows elsewhere (rule, severity, run, host).
HIDDEN_LABELS = frozenset({"alertname", "severity", "run", "host"})


def replay_alerts(cfg: Any, metrics_dir: Path, runs: Sequence[RunInfo]) -> list[AlertSpan]:
    """Every alert episode of every enabled rule over these runs' samples, as spans."""
    import polars as pl

    from llamamon.rules import engine
    from llamamon.rules.builtin import rules_from_config
    from llamamon.store.reader import scan

    frame = scan(metrics_dir, runs=[r.id for r in runs])
    names = set(frame.select(pl.col("metric").unique()).collect()["metric"].to_list())
    if not names:
        return []
    rules = [r for r in rules_from_config(cfg, extra_names=names) if r.enabled]
    by_name = {r.name: r for r in rules}
    samples = engine.prepare(frame, engine.needed_metrics(rules), cfg.aliases)
    bounds = samples.bounds()
    if bounds is None:
        return []
    grid = engine.Grid.covering(bounds[0], bounds[1], cfg.update_frequency)
    spans = []
    for alert in engine.evaluate(rules, samples, grid):
        rule = by_name.get(alert.rule)
        shown = make_labels({k: v for k, v in alert.labels if k not in HIDDEN_LABELS})
        spans.append(
            AlertSpan(
                rule=alert.rule,
                severity=alert.severity,
                labels=shown,
                start=alert.fired_at,
                end=alert.resolved_at,
                run=alert.run,
                summary=dict(alert.annotations).get("summary", ""),
                metrics=tuple(sorted(rule.condition.metrics)) if rule is not None else (),
            )
        )
    return sorted(spans, key=lambda s: (s.start, s.rule))
