"""LiveAlerts in process: for / keep_firing_for against flapping, repeats, restarts, run ends; the live
view. Times are explicit (``evaluate(now)``), so nothing waits on a clock."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import llamamon_env

from llamamon.config import load_config
from llamamon.runtime.live_alerts import LiveAlerts
from llamamon.samples import Row, labels_to_str, make_labels

T0 = 1_790_000_000.0
RUN = "20260911T000000Z-box-0001"


def config(tmp_path: Path, rule: str, repeat: str = "4h"):
    path = tmp_path / "monitoring.yaml"
    path.write_text(
        f"""alerts:
  repeat_interval: {repeat}
  channels:
    hook:
      type: webhook
      url: http://127.0.0.1:9/hook
  builtin:
    memory_warning: false
    memory_critical: false
    gpu_underutilized: false
    gpu_memory_high: false
    loss_not_finite: false
  rules:
{rule}
"""
    )
    return load_config(str(path))


def hot(t: float, value: float) -> Row:
    return Row(t, "gpu", "gpu_temperature", value, make_labels(gpu="0"), None)


def states(events) -> list[str]:
    return [e.state for e in events]


FLAPPY = """    gpu_hot:
      condition: gpu_temperature > 85
      for: 2s
      keep_firing_for: 3s
"""


def test_flapping_condition_notifies_once_each_way(tmp_path, metrics_dir):
    live = LiveAlerts(config(tmp_path, FLAPPY), metrics_dir)
    # True for 1 s (shorter than for), off, then true long enough, then flapping off/on within keep_firing_for.
    pattern = [90, 90, 70, 90, 90, 90, 90, 70, 90, 70, 70, 90, 70, 70, 70, 70, 70, 70]
    sent = []
    for i, value in enumerate(pattern):
        t = T0 + i
        live.add([hot(t, value)], RUN, "box")
        _changes, due = live.evaluate(t)
        sent.extend((i, e.state) for e in due)
    # Fires at the 3rd true tick in a row (i=5: active since 3, for 2 s); keeps firing through the flips;
    # resolves once it has been absent for keep_firing_for (absent from i=12; 3 s later is i=15).
    assert sent == [(5, "firing"), (15, "resolved")]


def test_repeat_interval_and_restart_keep_notifying_once(tmp_path, metrics_dir):
    rule = """    gpu_hot:
      condition: gpu_temperature > 85
"""
    cfg = config(tmp_path, rule, repeat="10s")
    live = LiveAlerts(cfg, metrics_dir, scope="t")
    due = []
    for i in range(25):
        live.add([hot(T0 + i, 90)], RUN, "box")
        due.append(states(live.evaluate(T0 + i)[1]))
    assert [i for i, d in enumerate(due) if d] == [0, 10, 20]  # firing, then every repeat_interval
    saved = json.loads((metrics_dir / "alerts" / "engine-t.json").read_text())
    assert [i["state"] for i in saved["rules"]["gpu_hot"]] == ["firing"]
    # A restarted process (same scope) knows the alert fires: no new notification, then one resolve.
    again = LiveAlerts(cfg, metrics_dir, scope="t")
    again.add([hot(T0 + 25, 90)], RUN, "box")
    assert again.evaluate(T0 + 25)[1] == []
    assert again.end_run(RUN, T0 + 25) > T0 + 25
    changes, due = again.evaluate(T0 + 26)
    assert states(changes) == states(due) == ["resolved"]


def test_a_run_end_resolves_at_once_not_a_lookback_later(tmp_path, metrics_dir):
    rule = """    running:
      condition: process_tree_size > 0
"""
    live = LiveAlerts(config(tmp_path, rule), metrics_dir)
    rows = [Row(T0 + i, "process", "process_tree_size", 2.0, (), None) for i in range(3)]
    live.add(rows, RUN, "box")
    assert states(live.evaluate(T0 + 2)[1]) == ["firing"]
    assert live.evaluate(T0 + 30)[1] == []  # within the 5 m lookback the last sample still counts
    live.end_run(RUN, T0 + 2.5)
    _changes, due = live.evaluate(T0 + 31)
    assert states(due) == ["resolved"]
    assert due[0].run == RUN


def test_a_run_that_ended_before_watching_began_pages_nothing(tmp_path, metrics_dir):
    rule = """    running:
      condition: process_tree_size > 0
"""
    live = LiveAlerts(config(tmp_path, rule), metrics_dir)
    live.follow_from(T0 + 10)  # watch starts after the run ended at T0 + 2.5
    live.add([Row(T0 + i, "process", "process_tree_size", 2.0, (), None) for i in range(3)], RUN, "box")
    live.end_run(RUN, T0 + 2.5)
    changes, due = live.evaluate(T0 + 10)
    assert changes == due == []
    # The same rows seen live (no follow_from) fire at their own time and resolve at the end.
    seen = LiveAlerts(config(tmp_path, rule), metrics_dir, scope="live")
    seen.add([Row(T0 + i, "process", "process_tree_size", 2.0, (), None) for i in range(3)], RUN, "box")
    seen.end_run(RUN, T0 + 2.5)
    assert states(seen.evaluate(T0 + 10)[1]) == ["firing", "resolved"]


def test_a_training_metric_holds_its_last_value_beyond_the_window_until_the_run_ends(tmp_path, metrics_dir):
    rule = """    loss_high:
      condition: loss > 1
"""
    live = LiveAlerts(config(tmp_path, rule), metrics_dir)
    live.add([Row(T0, "training", "loss", 3.0, (), 1)], RUN, "box")
    assert states(live.evaluate(T0)[1]) == ["firing"]
    later = T0 + 3 * live.window
    live.add([Row(later, "system", "cpu_usage", 0.5, (), None)], RUN, "box")  # the run is alive
    assert live.evaluate(later) == ([], [])  # still firing, long after the only loss sample
    live.end_run(RUN, later)
    assert states(live.evaluate(later + 1)[1]) == ["resolved"]
    live.evaluate(later + 3 * live.window)
    assert live._series == {}


def train(t: float, metric: str, value: float) -> Row:
    return Row(t, "training", metric, value, (), None)


def test_evals_since_best_stops_answering_when_the_run_ends(tmp_path, metrics_dir):
    # The built-in loss_plateau's shape: per-step loss only counts while no validation loss answers. At the
    # run's end the staleness marker silences validation_loss; evals_since_best(loss) must go quiet with it,
    # or every run that logs validation ends with a false plateau alert (`alerts test` gives none).
    rule = """    plateau:
      condition: evals_since_best(loss) >= 3 unless validation_loss
"""
    live = LiveAlerts(config(tmp_path, rule), metrics_dir)
    losses = [1.0, 0.5, 0.9, 0.8, 0.7, 0.9, 0.6, 0.9, 0.8, 0.7]  # best at the 2nd step, then 8 without
    for i, value in enumerate(losses):
        live.add([train(T0 + i, "loss", value)], RUN, "box")
        if i in (0, 5, 9):
            live.add([train(T0 + i, "validation_loss", 2.0 - i / 10)], RUN, "box")
        assert live.evaluate(T0 + i) == ([], [])
    live.end_run(RUN, T0 + 9.5)
    assert live.evaluate(T0 + 10) == ([], [])


def test_evals_since_best_counts_from_the_runs_start_not_the_windows(tmp_path, metrics_dir):
    # Validation every hour is longer than the trailing window (minutes): the count must still
    # span the run, as the offline engine's does.
    rule = """    plateau:
      condition: evals_since_best(validation_loss) >= 3
"""
    live = LiveAlerts(config(tmp_path, rule), metrics_dir)
    assert live.window < 3600
    fired = []
    for i, value in enumerate([1.0, 1.1, 0.9, 1.2, 1.0, 1.3, 1.4]):
        t = T0 + 3600 * i
        live.add([train(t, "validation_loss", value), Row(t, "system", "cpu_usage", 0.5, (), None)], RUN, "box")
        fired += sorted((i, e.rule, e.state) for e in live.evaluate(t)[0])
    # Best 0.9 at the 3rd evaluation; the 6th is the 3rd without a new one (the built-in loss_plateau too).
    assert fired == [(5, "loss_plateau", "firing"), (5, "plateau", "firing")]


def test_only_the_metrics_rules_need_enter_the_window(tmp_path, metrics_dir):
    live = LiveAlerts(config(tmp_path, FLAPPY), metrics_dir)
    live.add([hot(T0, 90), Row(T0, "system", "cpu_usage", 0.5, (), None)], RUN, "box")
    assert live.wants("gpu_temperature")
    assert not live.wants("cpu_usage")
    assert live.last_time(RUN) == T0
    live._trim(T0)
    assert [metric for _run, _host, metric, _labels in live._series] == ["gpu_temperature"]
    assert live._seen == {RUN: round(T0 * 1_000_000)}


def test_watch_on_a_terminal_redraws_a_live_view_in_place(tmp_path):
    (tmp_path / "monitoring.yaml").write_text(
        "alerts:\n  rules:\n    always:\n      condition: memory_usage >= 0\n      severity: warning\n"
    )
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamamon", "watch", "--no-gpu", "--interval", "0.2", "--metrics-dir", "m"],
        cwd=tmp_path,
        env=llamamon_env(),
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=subprocess.DEVNULL,
    )
    os.close(child)
    seen = b""
    try:
        while seen.count(b"\x1b[H\x1b[2J") < 2:
            ready, _, _ = select.select([main], [], [], 20)
            assert ready, f"no redraw within 20 s: {seen!r}"
            seen += os.read(main, 65536)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        os.close(main)
    frame = seen.split(b"\x1b[H\x1b[2J")[-2].decode()
    assert "llamamon watch" in frame
    assert "HOST" in frame
    assert "mem " in frame
    assert "FIRING (1)" in frame
    assert "warning always" in frame


def queue(t: float, value: float) -> Row:
    return Row(t, "inference", "batch_queue_size", value, make_labels(instance="127.0.0.1:8000"), None)


def replayed(tmp_path: Path, cfg, rows: list[Row], end: float):
    """What `alerts test` finds over the same rows of a run that ended at ``end``."""
    import polars as pl

    from llamamon.rules.builtin import rules_from_config
    from llamamon.rules.history import replay

    frame = pl.DataFrame(
        {
            "time": [r.time for r in rows],
            "metric": [r.metric for r in rows],
            "value": [r.value for r in rows],
            "labels": [labels_to_str(r.labels) for r in rows],
            "run": [RUN] * len(rows),
            "host": ["box"] * len(rows),
        }
    ).with_columns(pl.from_epoch(pl.col("time") * 1_000_000, time_unit="us").dt.replace_time_zone("UTC"))
    return replay(rules_from_config(cfg), frame, step_s=cfg.update_frequency, aliases=cfg.aliases, ends={RUN: end})


def test_the_last_alert_before_a_run_ends_fires_live_as_alerts_test_fires_it(tmp_path, metrics_dir):
    """The issue's crashed serving run: the queue is high from the second scrape on and reaches its `for`
    only at the run's end, between two evaluations. Both live and `alerts test` fire it, and both resolve it
    at the run's end."""
    rule = """    queue_high:
      condition: batch_queue_size > 100
      for: 20s
"""
    cfg = config(tmp_path, rule)
    cfg = dataclasses.replace(cfg, monitoring=dataclasses.replace(cfg.monitoring, update_frequency=10.0))
    rows = [queue(T0 + t, 166.0 if t else 3.0) for t in (0, 10, 20, 30)]
    end = T0 + 35
    live = LiveAlerts(cfg, metrics_dir)
    sent = []
    for k, t in enumerate((0.5, 10.5, 20.5, 30.2)):  # evaluations a little after each scrape, as record's
        live.add(rows[: k + 1], RUN, "box")
        sent += [(e.state, e.started_at, e.ended_at) for e in live.evaluate(T0 + t)[1]]
    assert sent == []  # 30.2 - 10.5 < 20 s: not yet
    marker = live.end_run(RUN, end)
    _changes, due = live.evaluate(marker)
    assert [(e.state, e.started_at, e.ended_at) for e in due] == [("firing", end, None), ("resolved", end, marker)]
    (offline,) = replayed(tmp_path, cfg, rows, end)
    assert (offline.fired_at, offline.resolved_at) == (T0 + 30, end)


def test_a_run_end_resolves_what_keep_firing_for_would_keep(tmp_path, metrics_dir):
    rule = """    latency_high:
      condition: p95(inference_latency, 5m) > 1000
      keep_firing_for: 1h
"""
    cfg = config(tmp_path, rule)
    rows = [Row(T0 + i, "inference", "inference_latency", 4000.0, (), None) for i in range(5)]
    live = LiveAlerts(cfg, metrics_dir)
    live.add(rows, RUN, "box")
    assert states(live.evaluate(T0 + 4)[1]) == ["firing"]
    marker = live.end_run(RUN, T0 + 4.5)
    _changes, due = live.evaluate(marker + 1)
    assert [(e.state, e.ended_at) for e in due] == [("resolved", marker)]
    assert live.states.firing("latency_high") == []
    assert live.evaluate(marker + 60)[1] == []  # nothing of the finished run comes back
    (offline,) = replayed(tmp_path, cfg, rows, T0 + 4.5)
    assert offline.resolved_at == T0 + 4.5  # `alerts test` and the report agree: resolved at the run's end


def test_each_series_is_kept_only_as_long_as_the_windows_over_its_metric(tmp_path, metrics_dir):
    # A 30-minute window over loss must not keep 35 minutes of memory_usage at 0.1 s: an instant
    # comparison looks back 5 minutes only (the recorder's memory would grow for 35 minutes otherwise).
    rule = """    loss_trend:
      condition: avg(loss, 30m) > 5
    memory:
      condition: memory_usage > 0.99
    slow:
      condition: p95(inference_latency, 10m) > 1000ms
"""
    live = LiveAlerts(config(tmp_path, rule), metrics_dir)
    span = {"memory_usage": 305.0, "loss": 35 * 60 + 5.0, "inference_latency_bucket": 15 * 60 + 5.0}
    assert {m: live.kept_for(m) for m in span} == span
    assert live.window == 35 * 60 + 5.0  # still what watch and the follower load at start
    for i in range(0, 40 * 60, 5):
        live.add(
            [
                Row(T0 + i, "system", "memory_usage", 0.5, (), None),
                Row(T0 + i, "training", "loss", 1.0, (), i),
                Row(T0 + i, "inference", "inference_latency_bucket", float(i), make_labels(le="+Inf"), None),
            ],
            RUN,
            "box",
        )
    now = T0 + 40 * 60 - 5
    assert live.evaluate(now) == ([], [])
    kept = {key[2]: (now - buf.times[0] / 1e6) for key, buf in live._series.items()}
    assert kept == {m: pytest.approx(s // 5 * 5, abs=5) for m, s in span.items()}
