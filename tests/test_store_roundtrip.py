"""Write rows, read them back with llamamon's reader, plain polars globbing and DuckDB."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamamon.catalog import GROUPS
from llamamon.fsutil import atomic_write
from llamamon.samples import Row, labels_to_str, make_labels
from llamamon.store import open_store
from llamamon.store.reader import SCHEMA, scan
from llamamon.store.writer import StoreWriter

try:
    import duckdb  # an optional reader, not a llamamon dependency
except ImportError:
    duckdb = None

RUN = "20261127T120000Z-testhost-abcd"
T0 = 1_764_244_800.0  # 2025-11-27T12:00:00Z


def _key(time_us, group, metric, value, labels, step):
    v = "nan" if math.isnan(value) else value
    return (int(time_us), group, metric, v, labels, step)


def _expected(rows):
    return Counter(
        _key(round(r.time * 1_000_000), r.group, r.metric, r.value, labels_to_str(r.labels), r.step) for r in rows
    )


def _from_frame(df: pl.DataFrame):
    return Counter(
        _key(us, g, m, v, lab, s)
        for us, g, m, v, lab, s in zip(
            df["time"].dt.epoch("us"),
            df["group"],
            df["metric"],
            df["value"],
            df["labels"],
            df["step"],
            strict=True,
        )
    )


row_strategy = st.builds(
    Row,
    time=st.integers(min_value=int(T0 * 1e6) - 86_400_000_000, max_value=int(T0 * 1e6) + 86_400_000_000).map(
        lambda us: us / 1_000_000
    ),
    group=st.sampled_from(GROUPS),
    metric=st.text(min_size=1, max_size=20),
    value=st.floats(allow_nan=True, allow_infinity=True),
    labels=st.dictionaries(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8), max_size=3).map(
        make_labels
    ),
    step=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_strategy, max_size=40), st.integers(min_value=1, max_value=3))
def test_round_trip_random_rows(rows, flushes):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / ".metrics"
        with StoreWriter(root, RUN, "testhost") as writer:
            for i in range(flushes):
                writer.append(rows[i::flushes])
                writer.flush()
        df = scan(root).collect()
        assert df.schema == pl.Schema(SCHEMA)
        assert _from_frame(df) == _expected(rows)
        assert set(df["host"]) <= {"testhost"}
        assert set(df["run"]) <= {RUN}
        if rows:
            direct = pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True).collect()
            assert _from_frame(direct) == _expected(rows)
            if duckdb is not None:
                assert _from_duckdb(duckdb, root) == _expected(rows)


def _from_duckdb(duckdb, root):
    result = duckdb.connect().execute(
        f'select epoch_us(time), "group", metric, value, labels, step '
        f"from read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    )
    return Counter(_key(*row) for row in result.fetchall())


def test_duckdb_reads_the_store_directly(metrics_dir):
    if duckdb is None:
        pytest.skip("duckdb is not installed (an optional reader, not a llamamon dependency)")
    rows = [Row(T0 + i, "system", "cpu_usage", i / 100, make_labels(core=str(i % 2))) for i in range(50)] + [
        Row(T0 + 3, "training", "loss", float("nan"), make_labels(phase="训练"), step=3),
        Row(T0 + 4, "training", "loss", float("inf"), (), step=4),
        Row(T0 + 86_400, "gpu", "gpu_utilization", 0.5, make_labels(gpu="0")),
    ]
    with StoreWriter(metrics_dir, RUN, "testhost") as writer:
        writer.append(rows)
    con = duckdb.connect()
    result = con.execute(
        f'select epoch_us(time), "group", metric, value, labels, step, cast(date as varchar), run '
        f"from read_parquet('{metrics_dir}/**/*.parquet', hive_partitioning=true)"
    ).fetchall()
    got = Counter(_key(t, g, m, v, lab, s) for t, g, m, v, lab, s, _d, _r in result)
    assert got == _expected(rows)
    assert {(d, r) for *_x, d, r in result} == {("2025-11-27", RUN), ("2025-11-28", RUN)}


def test_empty_or_missing_store_gives_empty_frame_with_schema(tmp_path):
    for root in (tmp_path / "missing", open_store(tmp_path / "empty")):
        df = scan(root).collect()
        assert df.height == 0
        assert df.schema == pl.Schema(SCHEMA)
        # Typed columns work in expressions even with no rows.
        assert df.filter(pl.col("time").dt.year() > 2000).height == 0


def test_filters_by_group_run_and_since(metrics_dir):
    other = "20261127T130000Z-testhost-0001"
    with StoreWriter(metrics_dir, RUN, "h") as a, StoreWriter(metrics_dir, other, "h") as b:
        a.append([Row(T0 - 86_400, "system", "cpu_usage", 1.0), Row(T0 + 10, "gpu", "gpu_utilization", 2.0)])
        b.append([Row(T0 + 20, "system", "cpu_usage", 3.0)])
    assert sorted(scan(metrics_dir).collect()["value"]) == [1.0, 2.0, 3.0]
    assert sorted(scan(metrics_dir, groups=["system"]).collect()["value"]) == [1.0, 3.0]
    assert sorted(scan(metrics_dir, runs=[other]).collect()["value"]) == [3.0]
    assert sorted(scan(metrics_dir, since=T0 + 15).collect()["value"]) == [3.0]
    assert scan(metrics_dir, runs=["nope"]).collect().height == 0


def test_a_file_appears_whole_or_not_at_all(metrics_dir):
    """A writer dying mid-file leaves no *.parquet behind, and its hidden temporary is ignored by every reader."""
    with StoreWriter(metrics_dir, RUN, "h") as writer:
        writer.append([Row(T0, "system", "cpu_usage", 1.0)])
    part = next(metrics_dir.glob("group=system/date=*/run=*"))

    def half_then_die(fh):
        fh.write(b"PAR1" + b"\0" * 100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(part / "dying.parquet", half_then_die)
    assert sorted(p.name for p in part.iterdir()) == sorted(p.name for p in part.glob("*.parquet"))
    assert not (part / "dying.parquet").exists()
    # A temporary left by a kill -9 (atomic_write cannot clean up then) does not match the readers' glob.
    (part / ".dying.parquet.x1y2.tmp").write_bytes(b"PAR1" + b"\0" * 100)
    assert scan(metrics_dir).collect()["value"].to_list() == [1.0]
    assert pl.scan_parquet(f"{metrics_dir}/**/*.parquet", hive_partitioning=True).collect().height == 1
