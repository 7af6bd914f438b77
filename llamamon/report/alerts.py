"""The alerts a report shows: the rules replayed over the chosen runs (``rules.history.replay``, as ``alerts test``), as firing spans.

The same rules and thresholds as ``llamamon alerts test`` and ``watch`` (monitoring.yaml plus the
built-in ones), so the report, CI and live alerting never disagree about what fired. Replayed, not
read back from what ``record`` notified: the notification ledger keeps only recent episodes and
reflects the rules in force while recording, so it could miss or disagree with spans.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from llamamon.report.data import AlertReplay, AlertSpan
from llamamon.samples import Labels, make_labels

if TYPE_CHECKING:
    import polars as pl

# Labels every alert carries that the report already shows elsewhere (rule, severity, run, host).
HIDDEN_LABELS = frozenset({"alertname", "severity", "run", "host"})


def alert_replay(cfg: Any) -> AlertReplay:
    """``replay_alerts`` bound to a config: what ``load_report_data`` calls with the samples it has read."""
    return partial(replay_alerts, cfg)


def replay_alerts(
    cfg: Any,
    samples: pl.LazyFrame | Callable[[set[str] | None], pl.LazyFrame],
    names: set[str] | None = None,
    ends: dict[str, float] | None = None,
) -> list[AlertSpan]:
    """Every alert episode of every enabled rule over these samples (store columns), as spans.

    ``samples``: a frame, or a function giving the samples of some metric names (all for None), a
    cheaper frame when only a few metrics are needed. ``names``: the metric names in them, when known.
    ``ends``: run id -> end time, from the runs' metadata (``store.runs.run_ends``).
    """
    import polars as pl

    from llamamon.rules.builtin import rules_from_config
    from llamamon.rules.history import replay
    from llamamon.rules.model import needed_metrics, stored_names

    def frame(metrics: set[str] | None) -> pl.LazyFrame:
        if callable(samples):
            return samples(metrics)
        return samples if metrics is None else samples.filter(pl.col("metric").is_in(sorted(metrics)))

    if names is None:
        names = set(frame(None).select(pl.col("metric").unique()).collect()["metric"].to_list())
    if not names:
        return []
    rules = [r for r in rules_from_config(cfg, extra_names=names) if r.enabled]
    # (a function of metric names reads only those: the needed metrics under every name they are stored as)
    stored = stored_names(needed_metrics(rules), cfg.aliases)
    shown_labels: dict[Labels, Labels] = {}
    metrics = {r.name: tuple(sorted(r.condition.metrics)) for r in rules}
    spans = []
    for alert in replay(rules, frame(stored), step_s=cfg.update_frequency, aliases=cfg.aliases, ends=ends):
        shown = shown_labels.get(alert.labels)
        if shown is None:  # why cached: a flapping alert repeats the same label set thousands of times
            shown = shown_labels[alert.labels] = make_labels({k: v for k, v in alert.labels if k not in HIDDEN_LABELS})
        spans.append(
            AlertSpan(
                rule=alert.rule,
                severity=alert.severity,
                labels=shown,
                start=alert.fired_at,
                end=alert.resolved_at,
                run=alert.run,
                summary=dict(alert.annotations).get("summary", ""),
                metrics=metrics.get(alert.rule, ()),
            )
        )
    return sorted(spans, key=lambda s: (s.start, s.rule))
