"""The follower of live runs: what the live window and the recorder's .prom file each read of a run's journal
(llamamon.log's column blocks), from one tail."""

from __future__ import annotations

import json
from array import array

import test_runtime_live_alerts as live_tests

from llamamon.runtime.live_alerts import LiveAlerts
from llamamon.samples import Row, make_labels
from llamamon.store import journal, segment_reader
from llamamon.store.follower import RunFollower, latest_rows
from tests.conftest import json_row_lines

RUN = "20261127T120000Z-testhost-abcd"
T0 = 1_764_244_800.0


def block(series, codes, times, values, steps=None, labels="") -> bytes:
    return journal.encode_columns(
        series,
        labels,
        array("H", codes) if len(series) > 1 else None,
        array("d", times),
        array("d", values),
        array("q", steps) if steps is not None else None,
    )


def test_latest_rows_keeps_each_series_last_row_by_time_and_every_histogram_row():
    series = [("training", "loss"), ("training", "learning_rate")]
    # a block's rows are not in time order (single calls first, then the dicts' metrics)
    data = block(
        series,
        [0, 0, 1, 0, 1],
        [T0 + 1, T0 + 4, T0 + 2, T0 + 3, T0 + 5],
        [1.0, 0.4, 3e-4, 0.7, 2e-4],
        [1, 4, journal.NO_STEP, 3, 5],
        labels=json.dumps({"rank": "1"}),
    )
    got = sorted(latest_rows(segment_reader.parse_columns(data)), key=lambda r: r.metric)
    labels = make_labels(rank="1")
    assert got == [
        Row(T0 + 5, "training", "learning_rate", 2e-4, labels, 5),
        Row(T0 + 4, "training", "loss", 0.4, labels, 4),
    ]
    latencies = block([("inference", "inference_latency")], [0, 0, 0], [T0, T0 + 1, T0 + 2], [10.0, 12.0, 11.0])
    assert [r.value for r in latest_rows(segment_reader.parse_columns(latencies))] == [10.0, 12.0, 11.0]


def test_poll_reads_new_lines_only_skips_the_recorders_segments_and_sorts_by_time(tmp_path):
    folder = tmp_path / "_journal" / RUN
    folder.mkdir(parents=True)

    def header(pid: int) -> bytes:
        return json.dumps({"llamamon_journal": 2, "run": RUN, "host": "h", "pid": pid}).encode() + b"\n"

    job = folder / "111-abcdef-000001.jsonl"
    job.write_bytes(
        header(111)
        + block([("training", "loss")], [0] * 1000, [T0 + i for i in range(1000)], [1 / (i + 1) for i in range(1000)])
        + json_row_lines([Row(T0 + 0.5, "training", "step", 7.0, (), 7)])
    )
    (folder / "222-abcdef-000001.jsonl").write_bytes(
        header(222) + json_row_lines([Row(T0, "system", "cpu_usage", 0.5)])
    )
    tail = RunFollower(tmp_path, None, {RUN}, skip_pid=222, latest=True)
    assert tail.take_latest() == [
        Row(T0 + 0.5, "training", "step", 7.0, (), 7),
        Row(T0 + 999, "training", "loss", 1 / 1000, (), None),
    ]
    assert tail.take_latest() == []
    with job.open("ab") as fh:
        fh.write(block([("training", "loss")], [0, 0], [T0 + 1000, T0 + 1001], [0.5, 0.25]))
    assert tail.take_latest() == [Row(T0 + 1001, "training", "loss", 0.25, (), None)]


def test_the_follower_decodes_only_the_rows_rules_need_from_a_column_block(tmp_path, metrics_dir):
    live = LiveAlerts(live_tests.config(tmp_path, live_tests.FLAPPY), metrics_dir)
    run, t0 = live_tests.RUN, live_tests.T0
    writer = journal.Journal(metrics_dir, run, "box")
    series = [("system", "cpu_usage"), ("gpu", "gpu_temperature"), ("training", "tokens_per_second")]
    codes = array("H", [0, 1, 2] * 100 + [2])  # the block's very last row is of a metric no rule uses
    times = array("d", [t0 + i / 10 for i in range(len(codes))])
    values = array("d", [float(i) for i in range(len(codes))])
    writer.append_lines(journal.encode_columns(series, '{"gpu":"0"}', codes, times, values, None), len(codes))
    follower = RunFollower(metrics_dir, live, {run})
    seen: list[Row] = [row for rows, _run, _host in follower.poll(t0 + 40) for row in rows]
    writer.close()
    temperatures = [r for r in seen if r.metric == "gpu_temperature"]
    assert [r.value for r in temperatures] == [float(i) for i in range(1, 300, 3)]  # every row a rule needs
    assert all(r.labels == make_labels(gpu="0") for r in temperatures)
    others = [(r.metric, r.value) for r in seen if r.metric != "gpu_temperature"]
    assert others == [("tokens_per_second", 300.0)]  # of the rest, only the latest row
    assert live._seen == {run: round(times[-1] * 1_000_000)}  # how far the run has got counts every metric


def _job_segment(metrics_dir, pid: int = 111):
    folder = metrics_dir / "_journal" / RUN
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}-abcdef-000001.jsonl"
    header = json.dumps({"llamamon_journal": 2, "run": RUN, "host": "h", "pid": pid}).encode() + b"\n"
    path.write_bytes(header)
    return path


def test_one_tail_feeds_the_live_window_and_the_textfile_whoever_polls_first(tmp_path, metrics_dir):
    live = LiveAlerts(live_tests.config(tmp_path, live_tests.FLAPPY), metrics_dir)
    follower = RunFollower(metrics_dir, live, {RUN}, latest=True)
    segment = _job_segment(metrics_dir)
    with segment.open("ab") as fh:
        fh.write(block([("gpu", "gpu_temperature")], [0, 0, 0], [T0, T0 + 1, T0 + 2], [80.0, 90.0, 70.0]))
    # The evaluation's poll reads the new bytes: the window gets every row, the textfile keeps the latest.
    assert [r.value for rows, _run, _host in follower.poll(T0 + 3) for r in rows] == [80.0, 90.0, 70.0]
    assert follower.take_latest() == [Row(T0 + 2, "gpu", "gpu_temperature", 70.0, (), None)]
    assert live.last_time(RUN) == T0 + 2
    # The sampler's take reads new bytes itself, and the window gets them too; the next poll reads nothing.
    with segment.open("ab") as fh:
        fh.write(block([("gpu", "gpu_temperature")], [0], [T0 + 5], [95.0]))
    assert follower.take_latest() == [Row(T0 + 5, "gpu", "gpu_temperature", 95.0, (), None)]
    assert live.last_time(RUN) == T0 + 5
    assert follower.poll(T0 + 6) == []


def test_take_latest_never_waits_for_a_poll_under_way_and_keeps_its_rows(metrics_dir):
    follower = RunFollower(metrics_dir, None, {RUN}, latest=True)
    segment = _job_segment(metrics_dir)
    with segment.open("ab") as fh:
        fh.write(block([("training", "loss")], [0, 0], [T0, T0 + 1], [1.0, 0.5]))
    with follower._lock:  # another thread's poll, maybe a Parquet catch-up
        assert follower.take_latest() == []
    assert follower.take_latest() == [Row(T0 + 1, "training", "loss", 0.5, (), None)]
