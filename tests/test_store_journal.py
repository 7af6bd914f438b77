"""Crash safety: the journal, its fold after a real kill -9, idempotence, concurrent writers, and reading
segments back (whole, or tailed as they grow)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from llamamon.samples import Row, make_labels
from llamamon.store import journal, open_store, segment_reader
from llamamon.store.reader import scan
from llamamon.store.writer import StoreWriter, fold_orphans, write_partitions
from tests.conftest import json_row_lines, llamamon_env

RUN = "20261127T120000Z-testhost-abcd"
T0 = 1_764_244_800.0


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from llamamon.samples import Row
    from llamamon.store.writer import StoreWriter

    root, run, interval, tag, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    writer = StoreWriter(root, run, "host-" + tag, flush_interval=interval)
    i = 0
    while count < 0 or i < count:
        # Two partitions per tick (two groups), so a kill can land between their files too.
        writer.append([
            Row(1764244800.0 + i, "system", "cpu_usage", float(i), (("writer", tag),)),
            Row(1764244800.0 + i, "gpu", "gpu_utilization", float(i), (("writer", tag),)),
        ])
        print(i, flush=True)
        i += 1
    writer.close()
    """
)


def _spawn_writer(root: Path, tag: str, interval: float, count: int = -1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(root), RUN, str(interval), tag, str(count)],
        env=llamamon_env(),
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_for_tick(proc: subprocess.Popen[str], tick: int, timeout: float = 60) -> int:
    """Read the writer's acknowledgements until ``tick``; returns the last acknowledged tick."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    last = -1
    while last < tick:
        assert time.monotonic() < deadline, "writer did not reach the tick in time"
        line = proc.stdout.readline()
        assert line, f"writer exited early with {proc.wait()}"
        last = int(line)
    return last


def _values(root: Path, tag: str | None = None) -> dict[str, Counter[float]]:
    df = scan(root).collect()
    out: dict[str, Counter[float]] = {}
    for group, value, labels in zip(df["group"], df["value"], df["labels"], strict=True):
        if tag is None or json.loads(labels)["writer"] == tag:
            out.setdefault(group, Counter())[value] += 1
    return out


def test_fold_after_kill_9_loses_at_most_the_last_interval(metrics_dir):
    for round_, target in enumerate((15, 41, 90)):
        tag = f"k{round_}"
        with _spawn_writer(metrics_dir, tag, interval=0.01) as proc:
            acked = _wait_for_tick(proc, target)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # Ticks acknowledged after `acked` reached the journal too; the one after those may have.
            assert proc.stdout is not None
            extra = [int(x) for x in proc.stdout.read().split()]
        last_possible = (extra[-1] if extra else acked) + 1

        open_store(metrics_dir)
        values = _values(metrics_dir, tag)
        for group in ("system", "gpu"):
            got = values[group]
            assert max(got.values()) == 1, f"duplicated rows in {group}"
            acknowledged = {float(i) for i in range(acked + 1)}
            assert acknowledged <= set(got), f"lost acknowledged rows in {group}"
            assert set(got) <= {float(i) for i in range(last_possible + 1)}
        assert not journal.segment_paths(metrics_dir)

        # Folding again changes nothing.
        before = _values(metrics_dir, tag)
        assert fold_orphans(metrics_dir) == 0
        open_store(metrics_dir)
        assert _values(metrics_dir, tag) == before


def test_kill_between_parquet_and_segment_removal_neither_loses_nor_duplicates(metrics_dir):
    rows = [Row(T0 + i, g, "m", float(i)) for i in range(10) for g in ("system", "gpu")]
    j = journal.Journal(metrics_dir, RUN, "h")
    j.append(rows)
    segment = j.rotate()
    assert segment is not None
    # Died after writing only the gpu partition's file (its lock goes with the process).
    write_partitions(metrics_dir, RUN, "h", segment.stem, [r for r in rows if r.group == "gpu"])
    segment.release()
    assert fold_orphans(metrics_dir) == 20
    assert _values(metrics_dir) == {g: Counter(float(i) for i in range(10)) for g in ("system", "gpu")}

    # Died after all files, before removing the segment: fold skips the existing files, drops the segment.
    j.append(rows)
    segment = j.rotate()
    assert segment is not None
    write_partitions(metrics_dir, RUN, "h", segment.stem, rows)
    segment.release()
    fold_orphans(metrics_dir)
    assert _values(metrics_dir) == {g: Counter({float(i): 2 for i in range(10)}) for g in ("system", "gpu")}
    assert not journal.segment_paths(metrics_dir)


def test_live_writers_journal_is_never_folded(metrics_dir):
    writer = StoreWriter(metrics_dir, RUN, "h", flush_interval=3600)
    writer.append([Row(T0, "system", "cpu_usage", 1.0)])
    # Another llamamon command (another process) opens the store meanwhile.
    code = "import sys; from llamamon.store import open_store; open_store(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(metrics_dir)], env=llamamon_env(), check=True)
    assert scan(metrics_dir).collect().height == 0
    assert len(journal.segment_paths(metrics_dir)) == 1
    assert journal.live_runs(metrics_dir) == {RUN}
    writer.append([Row(T0 + 1, "system", "cpu_usage", 2.0)])
    writer.close()
    assert sorted(scan(metrics_dir).collect()["value"]) == [1.0, 2.0]
    assert journal.live_runs(metrics_dir) == set()
    assert not (metrics_dir / "_journal" / RUN).exists()


def test_torn_last_line_is_skipped_with_a_warning(metrics_dir, caplog):
    folder = metrics_dir / "_journal" / RUN
    folder.mkdir(parents=True)
    segment = folder / "4242-abcdef-000001.jsonl"
    header = json.dumps({"llamamon_journal": 1, "run": RUN, "host": "h", "pid": 4242})
    good = [json.dumps([T0 + i, "training", "loss", v, "", i]) for i, v in enumerate([1.5, float("nan"), -1e300])]
    segment.write_text(header + "\n" + "\n".join(good) + "\n" + '[1764244803.0, "train')
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        open_store(metrics_dir)
    assert any("torn last line" in r.getMessage() and str(segment) in r.getMessage() for r in caplog.records)
    df = scan(metrics_dir).collect().sort("time")
    assert df["step"].to_list() == [0, 1, 2]
    assert df["value"][0] == 1.5
    assert df["value"].is_nan()[1]
    assert df["value"][2] == -1e300
    assert df["host"].to_list() == ["h"] * 3
    assert not segment.exists()


def test_two_writer_processes_in_one_run_never_clobber(metrics_dir):
    procs = [_spawn_writer(metrics_dir, tag, interval=0.01, count=120) for tag in ("a", "b")]
    for proc in procs:
        with proc:
            assert proc.stdout is not None
            assert len(proc.stdout.read().split()) == 120
            assert proc.wait(timeout=120) == 0
    values = _values(metrics_dir)
    expected = Counter({float(i): 2 for i in range(120)})  # once per writer
    assert values == {"system": expected, "gpu": expected}
    for tag in ("a", "b"):
        assert _values(metrics_dir, tag)["system"] == Counter(float(i) for i in range(120))
    hosts = set(scan(metrics_dir).collect()["host"])
    assert hosts == {"host-a", "host-b"}


def test_flush_is_due_by_clock_and_at_close(metrics_dir):
    now = [0.0]
    writer = StoreWriter(metrics_dir, RUN, "h", flush_interval=30.0, clock=lambda: now[0])
    writer.append([Row(T0, "system", "cpu_usage", 1.0)])
    now[0] = 29.9
    writer.append([Row(T0 + 1, "system", "cpu_usage", 2.0)])
    assert scan(metrics_dir).collect().height == 0  # still only in the journal
    now[0] = 30.0
    writer.append([Row(T0 + 2, "system", "cpu_usage", 3.0)])
    assert scan(metrics_dir).collect().height == 3
    writer.append([Row(T0 + 3, "system", "cpu_usage", 4.0)])
    writer.close()
    assert scan(metrics_dir).collect().height == 4
    assert writer.rows_written == 4


def test_threads_appending_at_once(metrics_dir):
    import threading

    with StoreWriter(metrics_dir, RUN, "h", flush_interval=0.0) as writer:

        def work(k: int) -> None:
            for i in range(50):
                writer.append([Row(T0 + i, "system", "cpu_usage", float(k * 1000 + i), make_labels(t=k))])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    values = sorted(scan(metrics_dir).collect()["value"])
    assert values == sorted(float(k * 1000 + i) for k in range(4) for i in range(50))


def test_forked_child_writes_its_own_segment(metrics_dir):
    code = textwrap.dedent(
        """
        import os, sys
        from llamamon.samples import Row
        from llamamon.store import journal
        j = journal.Journal(sys.argv[1], sys.argv[2], "h")
        j.append([Row(1764244800.0, "custom", "parent", 1.0)])
        pid = os.fork()
        if pid == 0:
            j.append([Row(1764244801.0, "custom", "child", 2.0)])
            j.close()
            os._exit(0)
        os.waitpid(pid, 0)
        # The parent still holds its segment's lock after the child is gone.
        assert journal.is_locked(j.path), "child released the parent's lock"
        j.append([Row(1764244802.0, "custom", "parent", 3.0)])
        print(len(journal.segment_paths(sys.argv[1])))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(metrics_dir), RUN], env=llamamon_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    open_store(metrics_dir)
    df = scan(metrics_dir).collect().sort("time")
    assert list(zip(df["metric"], df["value"], strict=True)) == [("parent", 1.0), ("child", 2.0), ("parent", 3.0)]


def test_journal_module_is_stdlib_only():
    code = "import sys, llamamon.store.journal; print(sorted(m for m in ('polars', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=llamamon_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "bad",
    [
        Row(float("nan"), "system", "cpu_usage", 1.0),
        Row(-1.0, "system", "cpu_usage", 1.0),
        Row(1e12, "system", "cpu_usage", 1.0),
        Row(T0, "alerts", "cpu_usage", 1.0),
        Row(T0, "training", "loss", 1.0, step=2**63),
    ],
)
def test_rows_parquet_cannot_hold_are_dropped_with_one_warning(metrics_dir, bad, caplog):
    with caplog.at_level(logging.WARNING, logger="llamamon.store"), StoreWriter(metrics_dir, RUN, "h") as writer:
        assert writer.append([Row(T0, "system", "cpu_usage", 1.0), bad]) == 1
        assert writer.append([bad, Row(T0 + 1, "system", "cpu_usage", 2.0)]) == 1
    assert sorted(scan(metrics_dir).collect()["value"]) == [1.0, 2.0]  # the rest of each tick is kept
    dropped = [r.getMessage() for r in caplog.records if "dropped a row" in r.getMessage()]
    assert len(dropped) == 1
    assert bad.metric in dropped[0]


def test_unreadable_journal_lines_are_skipped_on_fold(metrics_dir, caplog):
    folder = metrics_dir / "_journal" / RUN
    folder.mkdir(parents=True)
    header = json.dumps({"llamamon_journal": 1, "run": RUN, "host": "h", "pid": 1})
    lines = [
        json.dumps([T0, "system", "cpu_usage", 1.0, "", None]),
        "not json",
        json.dumps([T0, "nogroup", "cpu_usage", 1.0, "", None]),
        json.dumps([T0, "system", "cpu_usage"]),
        json.dumps([T0 + 1, "system", "cpu_usage", 2.0, '{"core":"1"}', None]),
    ]
    (folder / "1-aaaaaa-000001.jsonl").write_text(header + "\n" + "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        open_store(metrics_dir)
    assert any("skipped 3 unreadable line(s)" in r.getMessage() for r in caplog.records)
    df = scan(metrics_dir).collect().sort("time")
    assert df["value"].to_list() == [1.0, 2.0]
    assert df["labels"].to_list() == ["", '{"core":"1"}']


def test_a_segment_is_visible_only_once_locked(metrics_dir):
    j = journal.Journal(metrics_dir, RUN, "h")
    j.append([Row(T0, "system", "cpu_usage", 1.0)])
    assert j.path is not None
    assert journal.segment_paths(metrics_dir) == [j.path]
    assert journal.is_locked(j.path)
    # A writer killed between creating and naming its segment leaves a hidden temporary: removed once stale.
    stale = j.path.parent / ".99-abcdef-000001.jsonl.tmp"
    stale.write_text('{"llamamon_journal": 1}\n')
    journal.remove_stale_temporaries(metrics_dir)
    assert stale.exists()  # could still be a writer between create and rename
    os.utime(stale, (T0, T0))
    journal.remove_stale_temporaries(metrics_dir)
    assert not stale.exists()
    assert j.path.exists()
    j.close()


# -- column blocks (llamamon.log's batches) --------------------------------------------------------------


def _block(rows: list[Row]) -> bytes:
    from array import array

    series = sorted({(r.group, r.metric) for r in rows})
    index = {pair: i for i, pair in enumerate(series)}
    labels = {r.labels for r in rows}
    assert len(labels) <= 1
    steps = array("q", [journal.NO_STEP if r.step is None else r.step for r in rows])
    return journal.encode_columns(
        series,
        journal.labels_to_str(labels.pop() if labels else ()),
        array("H", [index[(r.group, r.metric)] for r in rows]) if len(series) > 1 else None,
        array("d", [r.time for r in rows]),
        array("d", [r.value for r in rows]),
        steps if any(r.step is not None for r in rows) else None,
    )


def _same(a: list[Row], b: list[Row]) -> bool:
    # NaN != NaN: compare the values' reprs
    def key(r: Row) -> tuple:
        return (r.time, r.group, r.metric, repr(r.value), r.labels, r.step)

    return sorted(map(key, a)) == sorted(map(key, b))


@pytest.mark.parametrize("labels", [(), make_labels(rank="3", local_rank="1")])
def test_a_column_block_reads_back_as_the_rows_it_was_given(labels):
    rows = [
        Row(T0 + 0.25, "training", "loss", 1.5, labels, 0),
        Row(T0 + 0.5, "training", "learning_rate", 3e-4, labels, None),
        Row(T0 + 0.75, "training", "loss", float("nan"), labels, 2**62),
        Row(T0 + 1.0, "custom", 'my metric "%r" é', float("-inf"), labels, 7),
    ]
    line = _block(rows)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert _same(segment_reader.parse_columns(line).rows(), rows)
    one_series = [Row(T0 + i, "training", "loss", float(i), labels, None) for i in range(5)]
    assert _same(segment_reader.parse_columns(_block(one_series)).rows(), one_series)


def test_segments_mixing_row_lines_and_column_blocks_fold_completely(metrics_dir, caplog):
    folder = metrics_dir / "_journal" / RUN
    folder.mkdir(parents=True)
    segment = folder / "4242-abcdef-000001.jsonl"
    header = json.dumps({"llamamon_journal": 2, "run": RUN, "host": "h", "pid": 4242})
    block = _block([Row(T0 + i, "training", "loss", 0.5 * i, (), i) for i in range(1000)])
    row_line = json.dumps([T0 + 1000, "training", "step", 1000.0, "", 1000])
    bad_block = block.replace(b'"rows": 1000', b'"rows": 999')  # columns longer than it says: unreadable
    torn = block[: len(block) // 2]  # a block cut short by a kill
    segment.write_bytes(header.encode() + b"\n" + block + row_line.encode() + b"\n" + bad_block + torn)
    head, rows, _blocks, offset = segment_reader.tail_segment(segment, keep_blocks=False)
    assert head is not None
    assert len(rows) == 1001
    assert offset == len(segment.read_bytes()) - len(torn)
    with caplog.at_level(logging.WARNING, logger="llamamon.store"):
        open_store(metrics_dir)
    messages = [r.getMessage() for r in caplog.records]
    assert any("torn last line" in m for m in messages)
    assert any("skipped 1 unreadable line" in m for m in messages)
    df = scan(metrics_dir).collect().sort("time")
    assert df.height == 1001
    assert df["step"].to_list() == list(range(1001))
    assert df["value"].to_list()[:3] == [0.0, 0.5, 1.0]
    assert not segment.exists()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b'"series": [["training", "loss"]]', b'"series": []'),  # a code names no series
        lambda b: b.replace(b'"time": "', b'"time": "AAAA'),  # 3 bytes more: not whole doubles
        lambda b: b.replace(b'"value": "', b'"value": "AAAAAAAAAAA='),  # one double more than the rows
        lambda b: b.replace(b'"rows"', b'"count"'),  # a field missing
        lambda b: b'{"rows": 1}\n',
        lambda b: b"{}\n",
    ],
)
def test_a_damaged_column_block_is_an_unreadable_line_not_a_crash(mangle):
    line = mangle(_block([Row(T0, "training", "loss", 1.0, (), 1), Row(T0 + 1, "training", "loss", 2.0, (), 2)]))
    with pytest.raises(ValueError, match=r"column block|multiple of item size|Expecting|Incorrect padding"):
        segment_reader.parse_columns(line)


def test_folding_column_blocks_writes_the_same_files_as_folding_their_rows(tmp_path):
    """The fold writes column blocks with column operations; the result must be the row path's, byte for byte."""
    import pyarrow.parquet as pq

    midnight = 1_764_288_000.0  # 2025-11-28T00:00:00Z: the rows span two date= partitions
    labels = make_labels(rank="1")
    rows = [
        Row(midnight - 50 + i * 0.7, ("training", "custom")[i % 2], ("loss", "my_metric")[i % 2], v, labels, s)
        for i, (v, s) in enumerate(
            (float(k) / 3 if k % 11 else float("nan"), None if k % 5 == 0 else k) for k in range(200)
        )
    ]
    other = [Row(midnight - 10 + i, "training", "learning_rate", 1e-4 * i, (), None) for i in range(30)]
    line_rows = [Row(midnight + 5, "training", "step", 42.0, (), 42)]
    data = _block(rows) + _block(other) + json_row_lines(line_rows)

    def fold(root):
        folder = root / "_journal" / RUN
        folder.mkdir(parents=True)
        header = json.dumps({"llamamon_journal": 2, "run": RUN, "host": "h", "pid": 4242}).encode() + b"\n"
        (folder / "4242-abcdef-000001.jsonl").write_bytes(header + data)
        return root

    by_blocks = fold(tmp_path / "blocks")
    assert fold_orphans(by_blocks) == 231
    by_rows = tmp_path / "rows"
    _header, decoded = segment_reader.read_segment(fold(by_rows) / "_journal" / RUN / "4242-abcdef-000001.jsonl")
    assert len(decoded) == 231
    write_partitions(by_rows, RUN, "h", "4242-abcdef-000001", decoded)

    files = sorted(p.relative_to(by_blocks) for p in by_blocks.rglob("*.parquet"))
    assert len(files) == 4  # training and custom, before and after midnight
    assert files == sorted(p.relative_to(by_rows) for p in by_rows.rglob("*.parquet"))
    for name in files:
        got, want = (pq.read_table(root / name) for root in (by_blocks, by_rows))
        assert got.schema == want.schema
        for column in got.column_names:  # to_pylist: NaN values compare through their repr
            assert list(map(repr, got[column].to_pylist())) == list(map(repr, want[column].to_pylist())), column


def test_tail_segment_reads_whole_new_lines_only(metrics_dir):
    writer = journal.Journal(metrics_dir, RUN, "box")
    writer.append([Row(T0, "gpu", "gpu_temperature", 90.0, make_labels(gpu="0"), None)])
    path = writer.path
    header, rows, _blocks, offset = segment_reader.tail_segment(path)
    assert header["run"] == RUN
    assert header["host"] == "box"
    assert [r.value for r in rows] == [90]
    with open(path, "ab") as fh:
        fh.write(json.dumps([T0 + 1, "gpu", "gpu_temperature", 91.0, '{"gpu":"0"}', None]).encode() + b"\n[17900")
    header, rows, _blocks, offset2 = segment_reader.tail_segment(path, offset)
    assert header is None
    assert [(r.time, r.value, r.labels) for r in rows] == [(T0 + 1, 91.0, make_labels(gpu="0"))]
    assert segment_reader.tail_segment(path, offset2) == (None, [], [], offset2)  # the torn line waits for its end
    writer.close()
    assert segment_reader.tail_segment(metrics_dir / "gone.jsonl", 5) == (None, [], [], 5)
