"""What the recorder's live .prom file reads from the job's own journal (llamamon.log's column blocks)."""

from __future__ import annotations

import json
from array import array

from llamamon.runtime.job_rows import JobJournalTail, latest_rows
from llamamon.samples import Row, make_labels
from llamamon.store import journal
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
    got = sorted(latest_rows(journal.parse_columns(data)), key=lambda r: r.metric)
    labels = make_labels(rank="1")
    assert got == [
        Row(T0 + 5, "training", "learning_rate", 2e-4, labels, 5),
        Row(T0 + 4, "training", "loss", 0.4, labels, 4),
    ]
    latencies = block([("inference", "inference_latency")], [0, 0, 0], [T0, T0 + 1, T0 + 2], [10.0, 12.0, 11.0])
    assert [r.value for r in latest_rows(journal.parse_columns(latencies))] == [10.0, 12.0, 11.0]


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
    tail = JobJournalTail(tmp_path, RUN, skip_pid=222)
    assert tail.poll() == [
        Row(T0 + 0.5, "training", "step", 7.0, (), 7),
        Row(T0 + 999, "training", "loss", 1 / 1000, (), None),
    ]
    assert tail.poll() == []
    with job.open("ab") as fh:
        fh.write(block([("training", "loss")], [0, 0], [T0 + 1000, T0 + 1001], [0.5, 0.25]))
    assert tail.poll() == [Row(T0 + 1001, "training", "loss", 0.25, (), None)]
