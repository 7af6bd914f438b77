"""Run metadata: write/read/list and resolving what a user typed."""

from __future__ import annotations

import json
import logging

import pytest

from llamamon.errors import RunNotFound
from llamamon.samples import Row, RunInfo
from llamamon.store.layout import new_run_id
from llamamon.store.runs import (
    annotate_run,
    list_runs,
    read_run,
    resolve_run,
    resolve_runs,
    run_status,
    select_runs,
    write_run,
)
from llamamon.store.writer import StoreWriter

NOW = 1_764_244_800.0


def _run(start: float, name: str | None = None, end: float | None = None, host: str = "h", token: str = "0000"):
    return RunInfo(id=new_run_id(host, start, token=token), host=host, start=start, name=name, end=end)


@pytest.fixture
def runs(metrics_dir):
    made = [
        _run(NOW - 3 * 86_400, "baseline", end=NOW - 3 * 86_400 + 600, token="aaaa"),
        _run(NOW - 2 * 3_600, "baseline", end=NOW - 3_600, token="aaab"),
        _run(NOW - 100, "lr-sweep", end=None, token="bbbb"),
        _run(NOW - 50, None, end=NOW - 10, host="other", token="cccc"),
    ]
    for run in reversed(made):
        write_run(metrics_dir, run)
    return made


def test_write_read_round_trip(metrics_dir):
    info = RunInfo(
        id=new_run_id("h", NOW),
        host="h",
        start=NOW,
        name="ünï",
        tags={"a": "b"},
        command=["python", "train.py"],
        gpu={"available": False, "reason": "NVML library not found"},
        end=NOW + 5,
        exit_code=0,
    )
    path = write_run(metrics_dir, info)
    assert path == metrics_dir / "runs" / f"{info.id}.json"
    assert read_run(metrics_dir, info.id) == info
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_unknown_fields_from_newer_versions_are_ignored(metrics_dir):
    info = _run(NOW)
    path = write_run(metrics_dir, info)
    data = json.loads(path.read_text())
    data["from_the_future"] = 1
    path.write_text(json.dumps(data))
    assert read_run(metrics_dir, info.id) == info


def test_list_sorted_by_start_and_skips_unreadable(metrics_dir, runs, caplog):
    (metrics_dir / "runs" / "broken.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        listed = list_runs(metrics_dir)
    assert [r.id for r in listed] == [r.id for r in runs]
    assert any("broken.json" in r.getMessage() for r in caplog.records)
    assert list_runs(metrics_dir / "nowhere") == []


def test_resolve_by_id_prefix_and_name(metrics_dir, runs):
    assert resolve_run(metrics_dir, runs[2].id) == runs[2]
    assert resolve_run(metrics_dir, runs[0].id[:8]) == runs[0]  # unique day prefix
    assert resolve_run(metrics_dir, "lr-sweep") == runs[2]
    assert resolve_run(metrics_dir, "baseline") == runs[1]  # the latest of that name


def test_unknown_or_ambiguous_run_is_one_line(metrics_dir, runs):
    with pytest.raises(RunNotFound) as err:
        resolve_run(metrics_dir, "nope")
    assert str(err.value) == f'no run matches "nope" in {metrics_dir} (see `llamamon runs`)'
    assert err.value.exit_code == 2
    prefix = runs[1].id[:9]  # the three runs of that day
    with pytest.raises(RunNotFound, match="ambiguous") as err:
        resolve_run(metrics_dir, prefix)
    assert "\n" not in str(err.value)
    with pytest.raises(RunNotFound, match="no run"):
        read_run(metrics_dir, "20200101T000000Z-h-0000")


def test_resolve_latest_since_and_union(metrics_dir, runs):
    assert resolve_runs(metrics_dir) == runs
    assert resolve_runs(metrics_dir, latest=True) == [runs[3]]
    # Within 24 h: started, ended, or still being recorded in the window; the 3-day-old run is out.
    assert resolve_runs(metrics_dir, since="24h", now=NOW) == runs[1:]
    assert resolve_runs(metrics_dir, since=75, now=NOW) == runs[3:]
    assert resolve_runs(metrics_dir, ids=["baseline"], latest=True) == [runs[1], runs[3]]
    assert resolve_runs(metrics_dir, ids=[runs[0].id, runs[0].id[:10]]) == [runs[0]]
    with pytest.raises(RunNotFound, match="no runs recorded"):
        resolve_runs(metrics_dir / "empty", latest=True)


def test_since_counts_a_run_still_being_recorded(metrics_dir, runs):
    old = runs[0]
    with StoreWriter(metrics_dir, old.id, "h") as writer:
        writer.append([Row(NOW, "system", "cpu_usage", 1.0)])
        assert resolve_runs(metrics_dir, since="1h", now=NOW + 86_400) == [old]
    assert resolve_runs(metrics_dir, since="1h", now=NOW + 86_400) == []


def test_resolve_by_name_prefix_unique_or_one_line_error(metrics_dir, runs):
    write_run(metrics_dir, _run(NOW - 20, "lr-warmup", end=NOW - 5, token="dddd"))
    assert resolve_run(metrics_dir, "base") == runs[1]  # the latest of the one name it starts
    assert resolve_run(metrics_dir, "lr-s") == runs[2]
    with pytest.raises(RunNotFound) as err:
        resolve_run(metrics_dir, "lr-")
    assert str(err.value) == f'run name prefix "lr-" is ambiguous in {metrics_dir}: 2 names (lr-sweep, lr-warmup)'


def test_job_fields_survive_the_owners_later_writes(metrics_dir):
    # What llamamon.init writes under `record` and what the recorder writes at exit, in that order.
    info = RunInfo(id=new_run_id("h", NOW), host="h", start=NOW, name="rec", tags={"team": "nlp"})
    write_run(metrics_dir, info)
    annotate_run(metrics_dir, info.id, name="job", tags={"seed": "1"}, config={"lr": 3e-4})
    annotate_run(metrics_dir, info.id, tags={"arch": "gpt"}, config={"layers": 12})
    assert read_run(metrics_dir, info.id).config == {"lr": 3e-4, "layers": 12}  # before the owner writes again
    info.end = NOW + 60
    write_run(metrics_dir, info)
    stored = json.loads((metrics_dir / "runs" / f"{info.id}.json").read_text())
    assert stored["name"] == "job"
    assert stored["tags"] == {"team": "nlp", "seed": "1", "arch": "gpt"}
    assert stored["config"] == {"lr": 3e-4, "layers": 12}
    assert stored["end"] == NOW + 60
    assert [r.id for r in list_runs(metrics_dir)] == [info.id]  # the side file is no run of its own


def test_select_runs_by_tag_name_glob_and_status(metrics_dir):
    def ended(k: int, name: str, lr: str, **how: int) -> RunInfo:
        start = NOW + k
        return RunInfo(
            new_run_id("h", start, token=f"a00{k}"), "h", start, name=name, tags={"lr": lr}, end=start + 1, **how
        )

    made = [
        ended(0, "sweep-1", "1", exit_code=0),
        ended(1, "sweep-2", "2", exit_code=1),
        ended(2, "base", "1", signal=15, exit_code=143),
        RunInfo(id=new_run_id("h", NOW + 3, token="a003"), host="h", start=NOW + 3, name="live"),
        RunInfo(id=new_run_id("h", NOW + 4, token="a004"), host="h", start=NOW + 4, name="killed"),
    ]
    live = {made[3].id}
    assert [run_status(r, live) for r in made] == ["finished", "failed", "failed", "running", "unfinished"]
    assert select_runs(made, tags={"lr": "1"}) == [made[0], made[2]]
    assert select_runs(made, tags={"lr": "1"}, name="sweep-*") == [made[0]]
    assert select_runs(made, name="*e*", status="failed", live=live) == [made[1], made[2]]
    assert select_runs(made, status="running", live=live) == [made[3]]
    assert select_runs(made, tags={"lr": "1", "x": "y"}) == []
