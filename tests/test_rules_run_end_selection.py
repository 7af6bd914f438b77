"""A finished run's last values do not carry on past its end when other runs are selected beside it.

The issue's scenario: with several runs (``alerts test --all``, the default) a 15 s run's learning rate
"first fired 4 s after it ended"; alone, it did not. Three recorded runs, one short, in one store: every
episode of each run lies within that run and is the same whatever else is selected.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import run_llamamon, write_samples

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
RULES = """alerts:
  builtin: {learning_rate_low: false, loss_plateau: false}
  rules:
    lr_below: {condition: 'learning_rate < 1e-6', severity: warning}
    loss_high: {condition: 'loss > 2.5', severity: warning}
"""
RUNS = {
    # id: (start, seconds, lr logged every s) -- the short run anneals to 0: its last value is below 1e-6
    "20260101T000000Z-h-0001": (T0, 120, 2),
    "20260101T000030Z-h-0002": (T0 + 30, 15, 1),
    "20260101T000500Z-h-0003": (T0 + 100, 200, 5),
}


def _store(tmp_path: Path) -> None:
    for run, (start, seconds, every) in RUNS.items():
        steps = range(0, seconds + 1, every)
        rows = [
            (start + s, "learning_rate", 1e-3 * 0.5 * (1 + math.cos(math.pi * s / seconds)), None, s) for s in steps
        ]
        rows += [(start + s, "loss", 3.0 - s / seconds, None, s) for s in steps]
        rows += [(start + s, "memory_usage", 0.4) for s in range(0, seconds + 5)]  # the recorder samples on a bit
        write_samples(tmp_path / ".metrics", rows, run=run, host="h")
        # the run's metadata end: the job's exit, before the recorder's last samples
        meta = tmp_path / ".metrics" / "runs" / f"{run}.json"
        info = json.loads(meta.read_text())
        info["end"] = start + seconds
        meta.write_text(json.dumps(info))


def _alerts(tmp_path: Path, *selection: str) -> list[dict]:
    done = run_llamamon("alerts", "test", *selection, "--json", "--fail-on", "critical", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_a_short_runs_alerts_end_with_it_whatever_else_is_selected(tmp_path: Path) -> None:
    _store(tmp_path)
    (tmp_path / "monitoring.yaml").write_text(RULES)
    together = _alerts(tmp_path, "--all")
    for run, (start, seconds, _every) in RUNS.items():
        mine = sorted((a["rule"], a["fired_at"], a["resolved_at"]) for a in together if a["run"] == run)
        alone = sorted((a["rule"], a["fired_at"], a["resolved_at"]) for a in _alerts(tmp_path, "--run", run))
        assert mine == alone, run
        for _rule, fired, resolved in mine:
            assert start <= fired <= start + seconds, (run, fired - start)
            assert resolved is not None
            assert resolved <= start + seconds, (run, resolved - start)
    short = sorted(
        (a["rule"], a["fired_at"] - T0, a["resolved_at"] - T0) for a in together if a["run"].endswith("0002")
    )
    # its lr reaches 0 at its last step (45 s) and the run ends there; loss over 2.5 for its first half
    assert short == [("loss_high", 30.0, 38.0), ("lr_below", 45.0, 45.0)]


def test_the_live_engine_following_the_three_runs_agrees(tmp_path: Path) -> None:
    # As `watch` follows several runs at once: their rows in time order, each run ended at its end.
    from llamamon.config import load_config
    from llamamon.runtime.live_alerts import LiveAlerts
    from llamamon.samples import Row
    from llamamon.store.reader import scan

    _store(tmp_path)
    (tmp_path / "monitoring.yaml").write_text(RULES)
    offline = sorted((a["rule"], a["run"], a["fired_at"], a["resolved_at"]) for a in _alerts(tmp_path, "--all"))
    live = LiveAlerts(load_config(str(tmp_path / "monitoring.yaml")), tmp_path / ".metrics")
    rows = scan(tmp_path / ".metrics").sort("time").collect()
    ends = {run: start + seconds for run, (start, seconds, _every) in RUNS.items()}
    fired: dict[tuple[str, str], float] = {}
    got = []
    now, i = T0, 0
    times = [t.timestamp() for t in rows["time"]]
    while now <= T0 + 320:
        while i < rows.height and times[i] <= now:
            live.add([Row(times[i], "training", rows["metric"][i], rows["value"][i], (), None)], rows["run"][i], "h")
            i += 1
        for run, end in ends.items():
            if end == now:
                live.end_run(run, end)
        changes, _due = live.evaluate(now)
        for e in changes:
            if e.state == "firing":
                fired[(e.rule, e.run)] = e.started_at
            else:
                got.append((e.rule, e.run, fired.pop((e.rule, e.run)), e.ended_at))
        now += 1
    assert not fired
    assert [(r, run, f) for r, run, f, _ in sorted(got)] == [(r, run, f) for r, run, f, _ in offline]
    # Resolved at the run's end offline; live at the first evaluation after it (one a second here), never later.
    for (_r, _run, _f, live_end), (*_, end) in zip(sorted(got), offline, strict=True):
        assert end <= live_end <= end + 1
