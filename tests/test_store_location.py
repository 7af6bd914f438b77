"""store.location and store.bucket without a server: URL parsing, the mirror's place, the ledger, what waits."""

from __future__ import annotations

import pytest
from conftest import write_samples

from llamamon.errors import ConfigError
from llamamon.store.bucket import Bucket, is_bucket_url, parse_url
from llamamon.store.location import Ledger, Location, mirror_folder, open_location

RUN = "20260101T000000Z-testhost-0001"


def test_a_plain_folder_is_todays_store_and_never_a_bucket(tmp_path):
    location = open_location(tmp_path / ".metrics")
    assert (location.root, location.bucket) == (tmp_path / ".metrics", None)
    assert location.waiting() == []
    assert location.ship() == 0


def test_urls_parse_and_hide_their_query(monkeypatch, tmp_path):
    remote = parse_url("s3://ml-metrics/team/nlp/?endpoint_override=127.0.0.1:9000&scheme=http")
    assert (remote.bucket, remote.prefix, remote.url) == ("ml-metrics", "team/nlp", "s3://ml-metrics/team/nlp")
    assert dict(remote.options) == {"endpoint_override": "127.0.0.1:9000", "scheme": "http"}
    monkeypatch.setenv("LLAMAMON_CACHE_DIR", str(tmp_path / "cache"))
    assert mirror_folder("s3://ml-metrics/team/nlp") == tmp_path / "cache" / "buckets" / "ml-metrics" / "team" / "nlp"
    assert is_bucket_url("gs://x/y")
    assert not is_bucket_url(".metrics")
    with pytest.raises(ConfigError, match=r"\.\."):
        parse_url("s3://ml-metrics/a/../b")


def test_aws_endpoint_url_is_read_and_the_urls_query_wins(monkeypatch):
    from llamamon.store.bucket import _endpoint_from_env

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert _endpoint_from_env() == {"endpoint_override": "127.0.0.1:9000", "scheme": "http"}
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert _endpoint_from_env() == {}


def test_the_ledger_survives_a_torn_last_line(tmp_path):
    data = tmp_path / "f"
    data.write_bytes(b"x")
    ledger = Ledger(tmp_path)
    ledger.record("runs/a.json", data.stat())
    ledger.record("runs/b.json", data.stat())
    ledger.forget("runs/b.json")
    with open(ledger.path, "a", encoding="utf-8") as fh:
        fh.write('{"k":"runs/c.json","s":1')  # killed mid-line
    again = Ledger(tmp_path)
    assert set(again.entries) == {"runs/a.json"}
    assert again.current("runs/a.json", data.stat())


def test_waiting_is_data_files_and_run_metadata_not_journals_or_temporaries(tmp_path):
    root = tmp_path / "mirror"
    write_samples(root, [(1.7e9, "cpu_percent", 1.0)], run=RUN)
    partition = next(root.glob("group=*/date=*/run=*"))
    (partition / ".part-0001.parquet.123.tmp").write_bytes(b"half")
    (root / "_journal" / RUN).mkdir(parents=True)
    (root / "_journal" / RUN / "1-a-000001.jsonl").write_text("[]\n")
    location = Location(root, Bucket(parse_url("s3://ml-metrics/x")))
    keys = [key for key, _, _ in location.waiting()]
    assert keys == [f"{partition.relative_to(root).as_posix()}/part-0000.parquet", f"runs/{RUN}.json"]
    # Once in the ledger at its size and mtime a file no longer waits; changed again, it does.
    run_json = root / "runs" / f"{RUN}.json"
    for key, path, _ in location.waiting():
        location.ledger.record(key, path.stat())
    assert location.waiting() == []
    run_json.write_text(run_json.read_text() + " ")
    assert [key for key, _, _ in location.waiting()] == [f"runs/{RUN}.json"]


def test_the_ledger_is_rewritten_when_mostly_superseded(tmp_path):
    data = tmp_path / "f"
    data.write_bytes(b"x")
    ledger = Ledger(tmp_path)
    for _ in range(1200):
        ledger.record("runs/a.json", data.stat())
    again = Ledger(tmp_path)
    assert len(again.path.read_text().splitlines()) == 1
    assert again.current("runs/a.json", data.stat())
