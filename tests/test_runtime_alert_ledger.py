"""The notification ledger: once on firing, once on resolve, repeats, and no double notification
between two processes sharing a metrics folder."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from conftest import llamamon_env

from llamamon.runtime.alert_ledger import NotificationLedger
from llamamon.samples import AlertEvent, make_labels


def firing(started=100.0, gpu="0"):
    return AlertEvent("gpu_hot", "firing", "warning", make_labels(gpu=gpu), (), 91.0, started_at=started)


def resolved(started=100.0, ended=200.0, gpu="0"):
    return AlertEvent(
        "gpu_hot", "resolved", "warning", make_labels(gpu=gpu), (), 91.0, started_at=started, ended_at=ended
    )


def test_firing_once_then_every_repeat_interval(metrics_dir):
    ledger = NotificationLedger(metrics_dir, repeat_interval=3600)
    assert ledger.due([firing()], now=100) == [firing()]
    assert ledger.due([firing()], now=110) == []
    assert ledger.due([firing()], now=3699) == []
    assert ledger.due([firing()], now=3700) == [firing()]
    assert ledger.due([firing(), firing(gpu="1")], now=3710) == [firing(gpu="1")]
    state = json.loads((metrics_dir / "alerts" / "state.json").read_text())
    assert state["alerts"][firing().fingerprint]["notified_at"] == 3700


def test_resolve_once_and_only_after_a_firing(metrics_dir):
    ledger = NotificationLedger(metrics_dir)
    assert ledger.due([resolved()], now=200) == []  # never announced: nothing to resolve
    ledger.due([firing()], now=100)
    assert ledger.due([resolved()], now=200) == [resolved()]
    assert ledger.due([resolved()], now=210) == []


def test_stale_firing_after_resolve_is_ignored_and_a_new_episode_notifies(metrics_dir):
    ledger = NotificationLedger(metrics_dir)
    ledger.due([firing()], now=100)
    ledger.due([resolved()], now=200)
    assert ledger.due([firing(started=100)], now=205) == []  # a lagging process still sees the old episode
    assert ledger.due([firing(started=300)], now=300) == [firing(started=300)]


def test_repeats_and_the_resolve_carry_the_episodes_first_start(metrics_dir):
    # record fired the episode at 100; watch (its own tick) and a restarted record see it start later.
    recorder, watcher = NotificationLedger(metrics_dir, repeat_interval=3600), NotificationLedger(metrics_dir, 3600)
    assert recorder.due([firing(started=100)], now=100) == [firing(started=100)]
    assert watcher.due([firing(started=130)], now=3730) == [firing(started=100)]
    assert recorder.due([firing(started=3650)], now=7340) == [firing(started=100)]
    assert watcher.due([resolved(started=130, ended=7400)], now=7400) == [resolved(started=100, ended=7400)]
    # The next episode starts afresh.
    assert recorder.due([firing(started=8000)], now=8000) == [firing(started=8000)]


def test_a_damaged_state_file_is_warned_about_and_replaced(metrics_dir, caplog):
    (metrics_dir / "alerts").mkdir()
    (metrics_dir / "alerts" / "state.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="llamamon"):
        assert NotificationLedger(metrics_dir).due([firing()], now=100) == [firing()]
    assert "unreadable (JSONDecodeError); starting afresh" in caplog.text
    assert json.loads((metrics_dir / "alerts" / "state.json").read_text())["version"] == 1


WORKER = """
import sys
from llamamon.runtime.alert_ledger import NotificationLedger
from llamamon.samples import AlertEvent, make_labels
ledger = NotificationLedger(sys.argv[1], repeat_interval=1e9)
sent = 0
for i in range(200):
    events = [AlertEvent("r", "firing", "warning", make_labels(n=str(i % 20)), (), 1.0, started_at=1.0)]
    sent += len(ledger.due(events, now=10.0 + i))
print(sent)
"""


def test_two_processes_never_notify_the_same_alert_twice(metrics_dir):
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(metrics_dir)], env=llamamon_env(), stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    counts = [int(w.communicate(timeout=120)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert sum(counts) == 20  # 20 distinct instances, each announced exactly once between both processes
