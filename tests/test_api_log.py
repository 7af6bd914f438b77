"""llamamon.log(): buffered, thread- and fork-safe, written through the journal, joining or starting a run.

Each scenario runs in a fresh interpreter (the API keeps per-process state, a flusher thread and an
atexit hook), writes into the test's metrics folder and is checked by reading the journal back.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon.log_destination import rank_labels
from llamamon.log_encoding import SEVERAL, Converter, as_step, flattened, last_step
from llamamon.samples import Row, labels_to_str, make_labels
from llamamon.store.journal import encode_fields, line_templates, segment_paths
from llamamon.store.segment_reader import _read_lines, read_segment
from tests.conftest import json_row_lines, run_python


def run_script(code: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    result = run_python(code, cwd, timeout, **env)
    assert result.returncode == 0, result.stderr
    return result


def journal_rows(metrics_dir: Path) -> dict[str, list[Row]]:
    """Rows per segment file name."""
    out = {}
    for path in segment_paths(metrics_dir):
        header, rows = read_segment(path)
        assert header["run"] == path.parent.name
        out[path.name] = rows
    return out


def all_rows(metrics_dir: Path) -> list[Row]:
    return [row for rows in journal_rows(metrics_dir).values() for row in rows]


def test_alone_starts_its_own_run_with_source_api(tmp_path):
    result = run_script(
        """
        import os, llamamon
        llamamon.log({"loss": 0.41, "learning_rate": 3e-4}, step=120)
        llamamon.log(loss=0.40, step=121)
        print(os.environ["LLAMAMON_RUN_ID"])
        """,
        tmp_path,
    )
    run_id = result.stdout.strip()
    meta = json.loads((tmp_path / ".metrics" / "runs" / f"{run_id}.json").read_text())
    assert meta["source"] == "api"
    assert meta["end"] is not None
    assert meta["end"] >= meta["start"]
    assert meta["samples"] == 4  # 3 values + 1 step row
    rows = all_rows(tmp_path / ".metrics")
    got = sorted((r.metric, r.value, r.step, r.group) for r in rows)
    assert got == [
        ("learning_rate", 3e-4, 120, "training"),
        ("loss", 0.40, 121, "training"),
        ("loss", 0.41, 120, "training"),
        ("step", 121.0, 121, "training"),
    ]


def test_joins_the_recorders_run_from_the_environment(tmp_path):
    metrics = tmp_path / "elsewhere"
    run_id = "20260101T000000Z-host-abcd"
    run_script(
        """
        import llamamon
        llamamon.log(loss=1.5, step=1)
        """,
        tmp_path,
        LLAMAMON_RUN_ID=run_id,
        LLAMAMON_METRICS_DIR=str(metrics),
    )
    assert not (metrics / "runs").exists()  # the recorder owns the run's metadata
    (path,) = segment_paths(metrics)
    assert path.parent.name == run_id
    assert [(r.metric, r.value) for r in read_segment(path)[1] if r.metric != "step"] == [("loss", 1.5)]


def test_many_threads_lose_and_duplicate_nothing(tmp_path):
    # Flushes run all along (a thread drains as fast as it can), so points are taken from the buffer while
    # other threads add to it: a point split or shifted would pair a value with another point's step.
    run_script(
        """
        import sys, threading, llamamon
        sys.setswitchinterval(1e-5)
        done = threading.Event()
        def drain():
            while not done.is_set():
                llamamon.flush()
        def work(i):
            for j in range(20000):
                if j % 3 == 0:
                    llamamon.log({f"t{i}": float(j)}, step=j)
                elif j % 3 == 1:
                    llamamon.log(step=j, **{f"t{i}": float(j)})
                else:
                    llamamon.log({f"t{i}": float(j), f"u{i}": float(j)}, step=j)
        llamamon.log(start=1.0)
        drainer = threading.Thread(target=drain)
        drainer.start()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        done.set()
        drainer.join()
        """,
        tmp_path,
    )
    rows = [r for r in all_rows(tmp_path / ".metrics") if r.metric not in ("step", "start")]
    assert len(rows) == 8 * (20000 + 20000 // 3)
    assert all(r.value == float(r.step) for r in rows)
    for i in range(8):
        assert sorted(r.value for r in rows if r.metric == f"t{i}") == [float(j) for j in range(20000)]
        assert sorted(r.value for r in rows if r.metric == f"u{i}") == [float(j) for j in range(2, 20000, 3)]


def test_forked_child_writes_its_own_segment_and_parent_buffer_is_not_duplicated(tmp_path):
    result = run_script(
        """
        import os, llamamon
        for j in range(100):
            llamamon.log(loss=float(j), step=j)   # still buffered when we fork
        pid = os.fork()
        if pid == 0:
            for j in range(50):
                llamamon.log(child_metric=float(j), step=j)
            raise SystemExit(0)   # normal exit: atexit flushes the child's buffer
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        llamamon.log(loss=100.0, step=100)
        print(os.environ["LLAMAMON_RUN_ID"], pid)
        """,
        tmp_path,
    )
    run_id, child_pid = result.stdout.split()
    segments = journal_rows(tmp_path / ".metrics")
    child = {name: rows for name, rows in segments.items() if name.startswith(f"{child_pid}-")}
    parent = {name: rows for name, rows in segments.items() if not name.startswith(f"{child_pid}-")}
    assert child
    assert parent
    child_rows = [r for rows in child.values() for r in rows if r.metric != "step"]
    parent_rows = [r for rows in parent.values() for r in rows if r.metric != "step"]
    assert sorted(r.value for r in child_rows) == [float(j) for j in range(50)]
    assert {r.metric for r in child_rows} == {"child_metric"}
    assert sorted(r.value for r in parent_rows) == [float(j) for j in range(101)]
    meta = json.loads((tmp_path / ".metrics" / "runs" / f"{run_id}.json").read_text())
    assert meta["pid"] != int(child_pid)
    assert meta["samples"] == sum(len(rows) for rows in parent.values())


def test_multiprocessing_fork_worker_is_flushed_despite_os_exit(tmp_path):
    run_script(
        """
        import multiprocessing as mp, llamamon
        def worker(n):
            for j in range(n):
                llamamon.log(worker_metric=float(j))
        if __name__ == "__main__":
            llamamon.log(loss=1.0)
            p = mp.get_context("fork").Process(target=worker, args=(30,))
            p.start(); p.join()
            assert p.exitcode == 0
        """,
        tmp_path,
    )
    rows = all_rows(tmp_path / ".metrics")
    assert sorted(r.value for r in rows if r.metric == "worker_metric") == [float(j) for j in range(30)]


def test_rank_environment_becomes_labels_and_world_size_a_tag(tmp_path):
    result = run_script(
        """
        import os, llamamon
        llamamon.log(loss=0.5)
        print(os.environ["LLAMAMON_RUN_ID"])
        """,
        tmp_path,
        RANK="3",
        LOCAL_RANK="1",
        WORLD_SIZE="4",
        SLURM_NODEID="1",
    )
    (row,) = all_rows(tmp_path / ".metrics")
    assert row.labels == (("local_rank", "1"), ("node_rank", "1"), ("rank", "3"))
    meta = json.loads((tmp_path / ".metrics" / "runs" / f"{result.stdout.strip()}.json").read_text())
    assert meta["tags"] == {"world_size": "4"}


def test_config_aliases_and_metrics_path_are_used(tmp_path):
    (tmp_path / "monitoring.yaml").write_text('monitoring:\n  metrics_path: "m"\naliases:\n  my_loss: loss\n')
    run_script("import llamamon; llamamon.log(my_loss=2.0, val_loss=1.0)", tmp_path)
    assert sorted((r.metric, r.value) for r in all_rows(tmp_path / "m")) == [
        ("loss", 2.0),
        ("validation_loss", 1.0),
    ]


def test_unwritable_metrics_folder_warns_once_and_never_breaks_the_job(tmp_path):
    (tmp_path / "blocked").write_text("a file, not a folder")
    result = run_script(
        """
        import llamamon
        for i in range(1000):
            llamamon.log(loss=float(i))
        print("finished")
        """,
        tmp_path,
        LLAMAMON_METRICS_DIR=str(tmp_path / "blocked"),
    )
    assert result.stdout.strip() == "finished"
    assert result.stderr.count("llamamon.log: cannot") == 1


# -- conversion (in-process, no I/O) ------------------------------------------------------------------


def test_converter_resolves_aliases_keeps_non_finite_and_skips_non_numbers(caplog):
    conv = Converter()
    entries = [
        (1.0, None, {"step": 7, "lr": 1e-3, "loss": float("nan"), "bad": "x", "flag": True}),
        (2.0, 8, {"eval_loss": float("inf"), "bad": object()}),
        (3.0, 9, "grad_norm", 2),  # the flat form log() uses for a single metric
        (4.0, None, "step", 10),
    ]
    data, count = conv.encode(_flat(entries), "", {"flag": "my_flag"})
    rows = [json.loads(line) for line in data.decode().splitlines()]  # what the journal's readers parse
    assert count == len(rows)
    got = {(metric, step): value for _, _, metric, value, _, step in rows}
    assert got[("learning_rate", 7)] == 1e-3
    assert math.isnan(got[("loss", 7)])
    assert got[("my_flag", 7)] == 1.0
    assert got[("validation_loss", 8)] == math.inf
    assert got[("grad_norm", 9)] == 2.0
    assert got[("step", 10)] == 10.0  # one step row per batch: the last step seen
    assert ("bad", 7) not in got
    assert sum("bad" in m for m in caplog.messages) == 1  # warned once per name
    assert {group for _, group, metric, *_ in rows if metric == "my_flag"} == {"custom"}


_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.sampled_from(["0.5", "x", None]),
)
_steps = st.one_of(st.none(), st.integers(-3, 2**63 + 5), st.sampled_from([3.0, float("nan"), "12"]))
_keys = st.sampled_from(["loss", "lr", "eval_loss", "tokens_per_second", "step", "custom thing"])
_entries = st.lists(
    st.one_of(
        st.tuples(st.floats(1e9, 2e9), _steps, _keys, _values),
        st.tuples(st.floats(1e9, 2e9), _steps, st.dictionaries(_keys, _values, max_size=4)),
    ),
    min_size=1,
    max_size=30,
)


def _flat(entries: list[tuple]) -> list:
    """The buffer log() fills for these calls: (time, step, name, value) or (time, step, {name: value})."""
    return [item for entry in entries for item in (entry if len(entry) == 4 else (*entry[:2], SEVERAL, entry[2]))]


def _rows(data: bytes) -> list[tuple]:
    rows, _blocks, bad = _read_lines(data.splitlines(), keep_blocks=False)
    assert bad == 0
    return sorted((r.time, r.group, r.metric, repr(r.value), r.labels, -1 if r.step is None else r.step) for r in rows)


@settings(max_examples=400, deadline=None)
@given(_entries, st.sampled_from(["", labels_to_str(make_labels(rank="1"))]))
def test_column_blocks_hold_the_same_rows_as_the_line_path(entries, labels):
    flat = _flat(entries)
    data, count = Converter().encode(flat, labels, {"lr": "learning_rate"})
    lines = Converter()
    line_data, line_count = lines._lines(flattened(flat), labels, {"lr": "learning_rate"})
    last = last_step(flat)
    if last is not None:
        line_data += encode_fields([(last[0], "training", "step", float(last[1]), labels, last[1])])
        line_count += 1
    assert count == line_count
    assert _rows(data) == _rows(line_data)


def test_a_batch_of_numbers_is_written_as_one_column_block():
    entries = [(1e9 + i, i, "loss", 0.5 * i) for i in range(1000)]
    entries += [(1e9 + 1000, 1000, {"loss": 1, "lr": np_like(3e-4)})]
    data, count = Converter().encode(_flat(entries), "", None)
    lines = data.splitlines()
    assert len(lines) == 2  # the block, then the step row
    assert lines[0].startswith(b"{")
    assert count == 1003
    assert ("learning_rate", repr(3e-4), 1000) in [(r[2], r[3], r[5]) for r in _rows(data)]
    # one value that is not a number sends the batch down the line path, which skips just that value
    data, count = Converter().encode(_flat([*entries, (1e9 + 1001, 1001, "loss", "n/a")]), "", None)
    assert not data.startswith(b"{")
    assert count == 1003


class np_like:  # stands in for a numpy scalar: a number only through __float__
    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value


def test_step_and_rank_helpers():
    assert as_step(3) == 3
    assert as_step(3.0) == 3
    assert as_step(float("nan")) is None
    assert as_step(-1) is None
    assert as_step("12") == 12
    assert rank_labels({}) == ()
    assert rank_labels({"RANK": "0", "WORLD_SIZE": "2"}) == (("rank", "0"),)
    # The node's index in the job, from torchrun's or SLURM's variable (NODE_RANK first); never alone.
    assert rank_labels({"RANK": "5", "GROUP_RANK": "2", "SLURM_NODEID": "9"}) == (("node_rank", "2"), ("rank", "5"))
    assert rank_labels({"RANK": "5", "NODE_RANK": "1", "GROUP_RANK": "2"}) == (("node_rank", "1"), ("rank", "5"))
    assert rank_labels({"LOCAL_RANK": "0", "SLURM_NODEID": "3"}) == (("local_rank", "0"), ("node_rank", "3"))
    assert rank_labels({"NODE_RANK": "1"}) == ()


def records(*, finite: bool, labels: st.SearchStrategy) -> st.SearchStrategy:
    """Up to 20 (time, group, metric, value, labels, step) rows; times and values finite or also NaN and infinite."""
    number = st.floats(allow_nan=not finite, allow_infinity=not finite)
    groups = st.sampled_from(["training", "custom", "inference"])
    steps = st.one_of(st.none(), st.integers(0, 2**62))
    return st.lists(st.tuples(number, groups, st.text(max_size=12), number, labels, steps), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    records(
        finite=False,
        labels=st.dictionaries(st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5), max_size=2),
    )
)
def test_encode_fields_writes_the_same_bytes_as_json_dumps(records):
    rows = [Row(t, g, m, v, make_labels(lab), s) for t, g, m, v, lab, s in records]
    fields = [(t, g, m, v, labels_to_str(make_labels(lab)), s) for t, g, m, v, lab, s in records]
    assert encode_fields(fields) == json_row_lines(rows)


@settings(max_examples=300, deadline=None)
@given(records(finite=True, labels=st.text(max_size=12)))
def test_line_templates_write_the_same_bytes_as_encode_fields(records):
    # names and labels may hold "%" (and "%r"): the templates must escape them, not format into them
    lines = []
    for t, group, metric, value, labels, step in records:
        with_step, without = line_templates(group, metric, labels)
        lines.append(without % (t, value) if step is None else with_step % (t, value, step))
    assert "".join(lines).encode() == encode_fields(records)
