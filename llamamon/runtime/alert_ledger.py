"""Which alert notifications are due: once on firing, once on resolve, again every repeat_interval.

The ledger lives in the metrics folder (``alerts/state.json``) and every read-modify-write holds an
exclusive lock on ``alerts/state.lock``, so ``llamamon record`` and ``llamamon watch`` evaluating the
same rules on the same data never notify twice. It decides; it neither evaluates rules nor sends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llamamon.fsutil import atomic_write
from llamamon.samples import AlertEvent
from llamamon.store.layout import alert_ledger_file

log = logging.getLogger("llamamon.alerts")

DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
# Resolved entries are kept a while so a lagging process cannot re-announce an episode that ended.
KEEP_RESOLVED = 7 * 86400.0


class NotificationLedger:
    """``due(events, now)`` -> the subset of events to notify, recorded as notified in one locked step."""

    def __init__(self, metrics_dir: str | os.PathLike[str], repeat_interval: float = DEFAULT_REPEAT_INTERVAL) -> None:
        self.path = alert_ledger_file(Path(metrics_dir))
        self.lock_path = self.path.with_suffix(".lock")
        self.repeat_interval = repeat_interval

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Why blocking: the critical section is a small JSON read and write; the other process is quick.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return dict(data["alerts"])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Why not fatal: a damaged ledger costs at most a repeated notification, never the monitoring.
            log.warning("alert state %s unreadable (%s); starting afresh", self.path, type(exc).__name__)
            return {}

    def _write(self, alerts: dict[str, dict[str, Any]]) -> None:
        text = json.dumps({"version": 1, "alerts": alerts}, indent=1, sort_keys=True)
        atomic_write(self.path, text.encode())

    def due(self, events: Sequence[AlertEvent], now: float) -> list[AlertEvent]:
        """Pass every firing instance each tick (for repeats) and every resolve; get back what to send."""
        with self._locked():
            alerts = self._read()
            out = [self._as_notified(alerts, event) for event in events if self._decide(alerts, event, now)]
            for key in [
                k for k, v in alerts.items() if v.get("resolved_at") and now - v["resolved_at"] > KEEP_RESOLVED
            ]:
                del alerts[key]
            if out or not self.path.exists():
                self._write(alerts)
        return out

    @staticmethod
    def _as_notified(alerts: dict[str, dict[str, Any]], event: AlertEvent) -> AlertEvent:
        """The event with the episode's start as first notified: a repeat or resolve says the same startsAt.

        Why: each process (and each restart of one) sees an episode begin at its own tick, so the event of
        a repeat can carry another start than the first notification, and Alertmanager and mail readers
        would take it for a new episode.
        """
        start = alerts[event.fingerprint]["started_at"]
        return event if event.started_at == start else replace(event, started_at=start)

    def _decide(self, alerts: dict[str, dict[str, Any]], event: AlertEvent, now: float) -> bool:
        key = event.fingerprint
        entry = alerts.get(key)
        if event.state == "resolved":
            if entry is None or entry["state"] != "firing":
                return False  # never announced, or another process already sent the resolve
            entry.update(state="resolved", resolved_at=event.ended_at if event.ended_at is not None else now)
            return True
        if entry is not None and entry["state"] == "resolved" and event.started_at <= entry["resolved_at"]:
            return False  # a stale view of an episode that has already ended
        if entry is not None and entry["state"] == "firing" and now - entry["notified_at"] < self.repeat_interval:
            return False
        alerts[key] = {
            "rule": event.rule,
            "state": "firing",
            "started_at": entry["started_at"] if entry and entry["state"] == "firing" else event.started_at,
            "notified_at": now,
            "resolved_at": None,
            "run": event.run,
        }
        return True
