"""Run ids, name sanitising and partition paths (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamamon.errors import ConfigError, StoreError
from llamamon.store import layout


def test_run_id_shape_and_host_slug():
    run_id = layout.new_run_id("gpu-box01.lab.example.com", 1_790_000_000.0, token="3f2a")
    assert run_id == "20260921T141320Z-gpu-box01-3f2a"
    assert layout.is_run_id(run_id)
    assert layout.new_run_id("10.0.0.7", 0.0, token="0000") == "19700101T000000Z-10-0-0-7-0000"
    assert layout.new_run_id("../../etc", 0.0, token="0000") == "19700101T000000Z-host-0000"


def test_run_ids_sort_by_start_time():
    starts = [1_700_000_000.0 + d for d in (5, 0, 86_400, 3_600, 1)]
    ids = [layout.new_run_id(host, t) for host, t in zip(["b", "a", "z", "c", "a"], starts, strict=True)]
    assert [ids[i] for i in sorted(range(5), key=lambda i: starts[i])] == sorted(ids)


def test_run_ids_unique_within_one_second_on_one_host():
    ids = {layout.new_run_id("host", 1_700_000_000.0) for _ in range(200)}
    # 4 hex digits: 200 draws collide with probability ~26%, so allow a couple, never most.
    assert len(ids) >= 195


def test_run_ids_differ_across_hosts_even_with_same_token():
    assert layout.new_run_id("a", 0, token="beef") != layout.new_run_id("b", 0, token="beef")


@given(st.text(min_size=1, max_size=80), st.floats(min_value=0, max_value=4e9))
def test_run_ids_are_always_safe_folder_names(host, start):
    run_id = layout.new_run_id(host, start)
    assert layout.is_run_id(run_id)
    assert "/" not in run_id
    assert ".." not in run_id
    assert not run_id.startswith(".")
    assert layout.check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("baseline", "baseline"),
        ("  lr 3e-4 / warmup ", "lr-3e-4-warmup"),
        ("../../etc/passwd", "etc-passwd"),
        ("a..b", "a.b"),
        ("ünïcode-名前", "ünïcode-名前"),
        ("tab\tand\nnewline", "tab-and-newline"),
        (".hidden", "hidden"),
    ],
)
def test_sanitize_run_name(name, expected):
    assert layout.sanitize_run_name(name) == expected


@given(st.text(max_size=100))
def test_sanitized_names_never_escape(name):
    try:
        clean = layout.sanitize_run_name(name)
    except ConfigError:
        return
    assert clean
    assert "/" not in clean
    assert "\\" not in clean
    assert ".." not in clean
    assert not clean.startswith(".")
    assert len(clean) <= layout.MAX_NAME
    assert all(c.isprintable() for c in clean)


def test_sanitize_run_name_rejects_empty():
    with pytest.raises(ConfigError, match="no usable characters"):
        layout.sanitize_run_name(" /// ")


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", "a\\b"])
def test_check_run_id_refuses_path_tricks(bad):
    with pytest.raises(StoreError):
        layout.check_run_id(bad)


def test_partition_paths_round_trip(tmp_path):
    path = layout.data_file(tmp_path, "gpu", "2026-11-27", "20261127T000000Z-h-0000", "1-abc-000001")
    assert path == tmp_path / "group=gpu/date=2026-11-27/run=20261127T000000Z-h-0000/1-abc-000001.parquet"
    assert layout.parse_partition(path) == ("gpu", "2026-11-27", "20261127T000000Z-h-0000")
    assert layout.parse_partition(Path("/x/y.parquet")) is None
    with pytest.raises(StoreError, match="unknown metric group"):
        layout.partition_dir(tmp_path, "alerts", "2026-11-27", "r")


def test_utc_date_is_utc():
    assert layout.utc_date(1_764_287_999.0) == "2025-11-27"
    assert layout.utc_date(1_764_288_000.0) == "2025-11-28"


def test_the_folders_beside_the_data(tmp_path):
    metrics = tmp_path / ".metrics"
    assert layout.textfile_folder(metrics) == metrics / "prometheus"
    assert layout.textfile_folder(metrics, "/var/lib/node_exporter") == Path("/var/lib/node_exporter")
    assert layout.alert_ledger_file(metrics) == metrics / "alerts" / "state.json"
    assert layout.alert_states_file(metrics, "watch") == metrics / "alerts" / "engine-watch.json"
    assert layout.compaction_dir(metrics) == metrics / "_compact"
