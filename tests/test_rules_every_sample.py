"""Every sample of a run is judged: offline (``alerts test``) and live (``record``/``watch``) alike.

A training metric's sample is an event (one evaluation's loss), not a level sampled every
``update_frequency``: a value that breaks a ``for: 0`` rule fires however briefly it held, also when it
is a run's last line, and whatever other runs are selected beside it. Times are explicit throughout.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import llamamon_env, run_llamamon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamamon.config import load_config
from llamamon.rules import history, lang
from llamamon.rules.history_input import Grid, prepare
from llamamon.rules.model import Alert, Rule, needed_metrics
from llamamon.runtime.live_alerts import LiveAlerts
from llamamon.samples import Row

T0 = 1_790_000_000.0
RUN = "20260911T000000Z-box-0001"
OTHER = "20260911T010000Z-box-0002"


def frame(rows: list[tuple[float, str, float, str]]) -> pl.DataFrame:
    """Store columns from (time, metric, value, run) rows."""
    return pl.DataFrame(
        {
            "time": [round(t * 1e6) for t, *_ in rows],
            "metric": [m for _, m, _, _ in rows],
            "value": [v for _, _, v, _ in rows],
            "labels": [""] * len(rows),
            "run": [r for *_, r in rows],
            "host": ["box"] * len(rows),
        },
        schema={
            "time": pl.Int64,
            "metric": pl.String,
            "value": pl.Float64,
            "labels": pl.String,
            "run": pl.String,
            "host": pl.String,
        },
    ).with_columns(pl.col("time").cast(pl.Datetime("us", "UTC")))


def offline(condition: str, rows, step: float, ends: dict[str, float], for_: float = 0.0) -> list[Alert]:
    rules = [Rule("r", lang.parse(condition), severity="warning", for_=for_)]
    samples = prepare(frame(rows), needed_metrics(rules), None, ends)
    return history.replay(rules, samples, step_s=step)


def live_config(tmp_path: Path, condition: str, step: float, for_: str = "0s"):
    path = tmp_path / "monitoring.yaml"
    builtin = "\n".join(
        f"    {name}: false"
        for name in (
            "memory_warning",
            "memory_critical",
            "gpu_underutilized",
            "gpu_memory_high",
            "loss_not_finite",
            "loss_plateau",
            "validation_loss_high",
        )
    )
    path.write_text(
        f"""monitoring:
  update_frequency: {step}
alerts:
  builtin:
{builtin}
  rules:
    r:
      condition: "{condition}"
      for: {for_}
"""
    )
    return load_config(str(path))


def live(tmp_path: Path, condition: str, rows, step: float, end: float, for_: str = "0s") -> list:
    """Feed the rows as record does (each tick's rows, an evaluation every ``step``), end the run; the changes."""
    metrics = tmp_path / ".metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    alerts = LiveAlerts(live_config(tmp_path, condition, step, for_), metrics)
    changes = []
    pending = sorted(rows)
    now = T0
    while pending:
        now += step
        batch = [r for r in pending if r[0] <= now]
        pending = pending[len(batch) :]
        alerts.add([Row(t, "training", m, v, (), None) for t, m, v, _ in batch], RUN, "box")
        if now <= end:
            changes += alerts.evaluate(now)[0]
    marker = alerts.end_run(RUN, end)
    changes += alerts.evaluate(max(now, marker))[0]
    return changes


# --- the cases, by hand ---------------------------------------------------------------------


@pytest.mark.parametrize("step", [1.0, 10.0])
@pytest.mark.parametrize("delay", [0.0, 0.3, 4.0])
def test_a_final_evaluation_after_the_last_tick_fires(tmp_path: Path, step: float, delay: float) -> None:
    rows = [(T0 + 0.2 * i, "loss", 3.0 - 0.1 * i, RUN) for i in range(5)]
    last = T0 + 1.05
    rows.append((last, "validation_loss", 2.5, RUN))
    end = last + delay
    alerts = offline("validation_loss > 2", rows, step, {RUN: end})
    assert [(a.rule, a.fired_at) for a in alerts] == [("r", pytest.approx(last))]
    assert [e.state for e in live(tmp_path, "validation_loss > 2", rows, step, end)] == ["firing", "resolved"]
    # and nothing fires where nothing broke the rule: the test can fail
    calm = [*rows[:-1], (last, "validation_loss", 1.5, RUN)]
    assert offline("validation_loss > 2", calm, step, {RUN: end}) == []
    assert live(tmp_path / "calm", "validation_loss > 2", calm, step, end) == []


def test_a_nan_shown_for_a_moment_mid_run_fires(tmp_path: Path) -> None:
    rows = [(T0 + 0.1 * i, "loss", 2.0 if i != 13 else math.nan, RUN) for i in range(30)]
    assert len(offline("not isfinite(loss)", rows, 10.0, {RUN: T0 + 3.0})) == 1
    assert [e.state for e in live(tmp_path, "not isfinite(loss)", rows, 10.0, T0 + 3.0)][:1] == ["firing"]


def test_the_verdict_of_a_run_does_not_depend_on_the_runs_beside_it() -> None:
    rows = [(T0 + i, "memory_usage", 0.95, RUN) for i in range(25)]
    later = [(T0 + 3600 + i, "memory_usage", 0.5, OTHER) for i in range(25)]
    ends = {RUN: T0 + 24.5, OTHER: T0 + 3624.5}
    for step in (1.0, 10.0):
        for for_ in (0.0, 20.0, 30.0, 60.0):
            alone = offline("memory_usage > 0.9", rows, step, ends, for_)
            beside = offline("memory_usage > 0.9", rows + later, step, ends, for_)
            # (the same alerts, fired at the same times; alone there is no tick after the run to resolve at)
            assert [(a.rule, a.fired_at, a.value) for a in alone] == [(a.rule, a.fired_at, a.value) for a in beside]
            # `for:` keeps its meaning: 24.5 s above the line fire a `for: 20s`, never a `for: 30s`
            assert bool(alone) == (for_ <= 20.0), (step, for_)


def test_for_counts_seconds_on_ticks_that_samples_add() -> None:
    # Samples every 0.5 s add ticks of their own; `for: 3s` still means three seconds, not three ticks.
    rows = [(T0 + 0.5 * i, "memory_usage", 0.95, RUN) for i in range(20)]
    (alert,) = offline("memory_usage > 0.9", rows, 10.0, {RUN: T0 + 9.5}, for_=3.0)
    assert alert.fired_at == T0 + 9.5  # on the 10 s grid plus the run's end: seen at 0 s and 9.5 s only
    rules = [Rule("r", lang.parse("memory_usage > 0.9"), severity="warning", for_=3.0)]
    samples = prepare(frame(rows), {"memory_usage"}, None, {RUN: T0 + 9.5})
    grid = Grid.covering(round(T0 * 1e6), round((T0 + 9.5) * 1e6), 10.0).with_times(
        [round((T0 + 0.5 * i) * 1e6) for i in range(20)]
    )
    (alert,) = history.evaluate(rules, samples, grid)
    assert alert.fired_at == pytest.approx(T0 + 3.0)


# --- property: a violating sample always fires, in both engines ---------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    gaps=st.lists(st.floats(0.001, 12.0), min_size=1, max_size=30),
    bad=st.integers(0, 29),
    step=st.sampled_from([0.2, 1.0, 10.0]),
    delay=st.sampled_from([0.0, 0.05, 0.3, 15.0]),
    metric=st.sampled_from(["loss", "memory_usage", "validation_loss"]),
)
def test_a_value_that_breaks_a_for_zero_rule_always_fires(
    tmp_path_factory: pytest.TempPathFactory, gaps: list[float], bad: int, step: float, delay: float, metric: str
) -> None:
    times = [T0 + sum(gaps[: i + 1]) for i in range(len(gaps))]
    bad %= len(times)
    rows = [(t, metric, 5.0 if i == bad else 1.0, RUN) for i, t in enumerate(times)]
    end = times[-1] + delay
    alerts = offline(f"{metric} > 2", rows, step, {RUN: end})
    assert alerts
    assert alerts[0].fired_at == pytest.approx(times[bad], abs=1e-6)
    changes = live(tmp_path_factory.mktemp("live"), f"{metric} > 2", rows, step, end)
    assert [e.state for e in changes][:1] == ["firing"]


# --- end to end: record, then alerts test with each way of selecting the run --------------------------

JOB = """
import time
for i in range(5):
    print({{'loss': 3.0 - i / 10, 'grad_norm': 1.0, 'learning_rate': 5e-05, 'epoch': i / 5}}, flush=True)
    time.sleep(0.05)
print({last!r}, flush=True)
time.sleep({delay})
"""


@pytest.mark.parametrize(
    ("interval", "delay", "last", "rule"),
    [
        (0.2, 0.3, "{'eval_loss': 2.5, 'epoch': 1.0}", "validation_loss_high"),
        (1.0, 0.0, "{'eval_loss': 2.5, 'epoch': 1.0}", "validation_loss_high"),
        (0.2, 0.0, "{'loss': nan, 'epoch': 1.0}", "loss_not_finite"),
    ],
)
def test_record_then_alerts_test_judges_the_runs_last_line(
    tmp_path: Path, interval: float, delay: float, last: str, rule: str
) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB.format(last=last, delay=delay))
    env = llamamon_env()
    earlier = run_llamamon("record", "--no-gpu", "--interval", "1", "--", sys.executable, "-c", "pass", cwd=tmp_path)
    assert earlier.returncode == 0, earlier.stderr
    rec = run_llamamon(
        "record", "--no-gpu", "--interval", str(interval), "--", sys.executable, str(job), cwd=tmp_path, env=env
    )
    assert rec.returncode == 0, rec.stderr
    assert f"FIRING warning {rule}".encode() in rec.stderr or f"FIRING critical {rule}".encode() in rec.stderr
    newest = max(json.loads(run_llamamon("runs", "--json", cwd=tmp_path).stdout), key=lambda r: r["start"])["id"]
    for selection in (["--latest"], ["--run", newest], ["--all"]):
        res = run_llamamon("alerts", "test", *selection, "--fail-on", "info", "--json", cwd=tmp_path)
        assert res.returncode == 1, (selection, res.stdout, res.stderr)
        fired = {a["rule"] for a in json.loads(res.stdout)}
        assert rule in fired, (selection, fired)
