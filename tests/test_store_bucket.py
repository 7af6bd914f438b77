"""metrics_path: s3://bucket/prefix against a real S3 API (moto's server, a subprocess; tests/s3_server.py).

Every llamamon command here is a real ``python -m llamamon`` process; what reached the bucket is read back
through a fresh mirror (a new LLAMAMON_CACHE_DIR), so the rows counted came from the server, not from the
recording host's folder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_llamamon
from loopback import wait_until
from s3_server import SECRET_KEY, MotoServer, TcpProxy, s3_env

from llamamon.units import format_bytes

pytestmark = pytest.mark.slow

BUCKET = "llamamon-test"
URL = f"s3://{BUCKET}/team/metrics"
# A job that prints 20 metric lines (the recorder parses them into training rows) over about a second.
JOB = [
    sys.executable,
    "-c",
    "import json, time\nfor i in range(20):\n    print(json.dumps({'loss': 1 / (i + 1), 'step': i}), flush=True)\n"
    "    time.sleep(0.05)",
]


@pytest.fixture(autouse=True)
def _bucket_config(tmp_path: Path) -> None:
    """Commands but ``record`` find the bucket in monitoring.yaml (record is given --metrics-dir): both ways."""
    (tmp_path / "monitoring.yaml").write_text(f"monitoring:\n  metrics_path: {URL}\n", encoding="utf-8")


@pytest.fixture
def moto(tmp_path: Path):
    server = MotoServer(tmp_path)
    server.create_bucket(BUCKET)
    yield server
    server.stop()


def record(tmp_path: Path, port: int, cache: str, host: str, *job: str, timeout: float = 90):
    env = s3_env(port, tmp_path / cache, LLAMAMON_HOST=host)
    return run_llamamon(
        "record", "--metrics-dir", URL, "--interval", "0.2", "--no-gpu", "--", *(job or JOB),
        cwd=tmp_path, env=env, timeout=timeout,
    )  # fmt: skip


def llamamon(tmp_path: Path, port: int, cache: str, *args: str, timeout: float = 90):
    return run_llamamon(*args, cwd=tmp_path, env=s3_env(port, tmp_path / cache), timeout=timeout)


def bucket_rows(tmp_path: Path, port: int, cache: str = "fresh") -> tuple[int, int, int]:
    """(rows llamamon reads, distinct rows, rows in every object) of the whole bucket, through a fresh mirror.

    The third counts every object a plain ``scan_parquet("**/*.parquet")`` sees: equal to the first when no
    superseded object was left behind in the bucket.
    """
    code = f"""
        import polars as pl
        from llamamon.store.location import open_location
        from llamamon.store.reader import scan
        location = open_location({URL!r})
        location.pull()
        rows = scan(location.root).collect()
        every = pl.scan_parquet(str(location.root) + "/group=*/**/*.parquet", hive_partitioning=False).collect()
        key = ["time", "host", "metric", "labels", "step", "value", "run"]
        print(rows.height, rows.select(key).unique().height, every.height)
    """
    from conftest import run_python

    out = run_python(code, tmp_path, **_env(port, tmp_path / cache))
    assert out.returncode == 0, out.stderr
    rows, distinct, every = map(int, out.stdout.split())
    return rows, distinct, every


def local_rows(tmp_path: Path, cache: str) -> int:
    """Rows in a recording host's own mirror: what it recorded, the truth the bucket must match."""
    from llamamon.store.reader import scan

    mirrors = list((tmp_path / cache / "buckets").rglob("runs"))
    assert len(mirrors) == 1
    return scan(mirrors[0].parent).collect().height


def _env(port: int, cache: Path) -> dict[str, str]:
    env = s3_env(port, cache)
    return {k: env[k] for k in env if k.startswith(("AWS_", "LLAMAMON_"))}


def check_clean(result: subprocess.CompletedProcess[bytes]) -> str:
    """Neither output holds a traceback or the secret key; returns stderr."""
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert SECRET_KEY not in err + result.stdout.decode()
    return err


def test_two_hosts_one_bucket_runs_report_and_gate_from_a_fresh_mirror(tmp_path, moto):
    a = record(tmp_path, moto.port, "host-a", "node-a")
    b = record(tmp_path, moto.port, "host-b", "node-b", sys.executable, "-c", "import time; time.sleep(0.5); exit(3)")
    assert (a.returncode, b.returncode) == (0, 3), a.stderr + b.stderr
    check_clean(a), check_clean(b)

    listed = llamamon(tmp_path, moto.port, "reader", "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert sorted(r["host"] for r in runs) == ["node-a", "node-b"], (listed.stderr, a.stderr)
    run_a = next(r["id"] for r in runs if r["host"] == "node-a")

    report = llamamon(tmp_path, moto.port, "reader", "report", "--run", run_a, "-o", "r.html")
    assert report.returncode == 0, report.stderr
    assert "loss" in (tmp_path / "r.html").read_text(encoding="utf-8")
    gate = llamamon(tmp_path, moto.port, "reader", "alerts", "test", "--all", "--json")
    assert gate.returncode in (0, 1), gate.stderr  # 1: an alert fired, which a gate may say; not a crash
    check_clean(gate)

    rows, distinct, every = bucket_rows(tmp_path, moto.port)
    assert rows == distinct == every == local_rows(tmp_path, "host-a") + local_rows(tmp_path, "host-b")
    assert rows > 20


def test_watch_and_export_read_the_bucket(tmp_path, moto):
    assert record(tmp_path, moto.port, "host-a", "node-a").returncode == 0
    run = json.loads(llamamon(tmp_path, moto.port, "reader", "runs", "--json").stdout)[0]["id"]
    watched = llamamon(tmp_path, moto.port, "watcher", "watch", "--once", "--no-gpu", "--run", run)
    assert watched.returncode == 0, watched.stderr
    check_clean(watched)
    mirror = tmp_path / "watcher" / "buckets" / BUCKET / "team" / "metrics"
    assert list(mirror.glob(f"group=*/date=*/run={run}/*.parquet"))  # the watched run's data was pulled
    exported = llamamon(tmp_path, moto.port, "exporter", "export", "csv", "--run", run, "-o", "-")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.decode().count("\n") > 20


def test_report_of_one_run_downloads_only_that_runs_objects(tmp_path, moto):
    record(tmp_path, moto.port, "host-a", "node-a")
    record(tmp_path, moto.port, "host-b", "node-b")
    listed = json.loads(llamamon(tmp_path, moto.port, "reader", "runs", "--json").stdout)
    run_a = next(r["id"] for r in listed if r["host"] == "node-a")
    assert llamamon(tmp_path, moto.port, "reader", "report", "--run", run_a, "-o", "r.html").returncode == 0
    mirror = tmp_path / "reader" / "buckets" / BUCKET / "team" / "metrics"
    pulled = {p.parent.name for p in mirror.glob("group=*/date=*/run=*/*.parquet")}
    assert pulled == {f"run={run_a}"}
    assert len(list((mirror / "runs").glob("*.json"))) == 2  # every run's metadata, to choose from


def test_a_pull_of_many_runs_lists_days_but_downloads_only_those_runs(tmp_path, moto):
    from conftest import run_python, write_samples

    mirror = tmp_path / "host-a" / "buckets" / BUCKET / "team" / "metrics"
    now = time.time()
    runs = [f"20261207T00000{i}Z-node-a-000{i}" for i in range(7)]
    for i, run in enumerate(runs):
        write_samples(mirror, [(now - 50 + i, "cpu_percent", float(i))], run=run, host="node-a")
    assert llamamon(tmp_path, moto.port, "host-a", "runs").returncode == 0  # ships all seven
    code = f"""
        from llamamon.store.location import open_location
        from llamamon.store.reader import scan
        location = open_location({URL!r})
        location.pull(set({runs[:6]!r}))
        print(location.bucket.downloaded_objects, scan(location.root).collect()["run"].n_unique())
    """
    out = run_python(code, tmp_path, **_env(moto.port, tmp_path / "fresh"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["13", "6"]  # seven run files and six data files; the seventh run's data stays
    assert not list((tmp_path / "fresh").rglob(f"run={runs[6]}"))


def test_kill_9_while_shipping_loses_nothing_and_doubles_nothing(tmp_path, moto):
    # The recordings go out while the network is down (a stopped proxy), so their files all wait ...
    proxy = TcpProxy(moto.port, delay=0.05)
    proxy.stop()
    for _i in range(4):
        assert record(tmp_path, proxy.port, "host-a", "node-a").returncode == 0
    waiting = wait_ledger = tmp_path / "host-a" / "buckets" / BUCKET / "team" / "metrics" / "_shipped.jsonl"
    assert not waiting.exists()
    # ... then a command ships them through a slow link and is killed after a few PUTs.
    proxy.start()
    env = s3_env(proxy.port, tmp_path / "host-a")
    shipping = subprocess.Popen([sys.executable, "-m", "llamamon", "runs"], cwd=tmp_path, env=env)
    wait_until(lambda: wait_ledger.exists() and len(wait_ledger.read_text().splitlines()) >= 3, timeout=60)
    shipping.send_signal(signal.SIGKILL)
    shipping.wait(timeout=10)
    doctor = json.loads(llamamon(tmp_path, proxy.port, "host-a", "doctor", "--no-gpu", "--json").stdout)
    assert doctor["bucket"]["waiting_files"] > 0  # killed mid-way: some left for the next command
    assert llamamon(tmp_path, proxy.port, "host-a", "runs").returncode == 0
    doctor = json.loads(llamamon(tmp_path, proxy.port, "host-a", "doctor", "--no-gpu", "--json").stdout)
    assert doctor["bucket"]["waiting_files"] == 0
    rows, distinct, every = bucket_rows(tmp_path, moto.port)
    assert rows == distinct == every == local_rows(tmp_path, "host-a")


def test_server_unreachable_during_a_run_every_row_arrives_once(tmp_path, moto):
    proxy = TcpProxy(moto.port)
    go = tmp_path / "go"
    job = [sys.executable, "-c", JOB[2] + f"\nimport os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"]
    env = s3_env(proxy.port, tmp_path / "host-a", LLAMAMON_HOST="node-a")
    argv = [sys.executable, "-m", "llamamon", "record", "--metrics-dir", URL, "--interval", "0.2", "--no-gpu", "--"]
    rec = subprocess.Popen([*argv, *job], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        # The run's metadata is shipped as it starts; then the network goes away until after the run.
        wait_until(lambda: _objects(moto, "runs/"), timeout=60)
        proxy.stop()
        go.touch()
        _, err = rec.communicate(timeout=120)
    finally:
        rec.kill()
    assert rec.returncode == 0
    assert f"wait locally for {URL}" in err.decode()
    proxy.start()
    assert llamamon(tmp_path, proxy.port, "host-a", "runs").returncode == 0  # the next command ships the rest
    rows, distinct, every = bucket_rows(tmp_path, moto.port)
    assert rows == distinct == every == local_rows(tmp_path, "host-a")
    assert rows >= 20


def _objects(moto: MotoServer, under: str) -> list[str]:
    return [key for key in _object_sizes(moto) if key.startswith(under)]


def _object_sizes(moto: MotoServer) -> dict[str, int]:
    """{key under the store's prefix: size} of every object in the bucket."""
    from pyarrow import fs

    s3 = fs.S3FileSystem(endpoint_override=moto.endpoint, scheme="http", access_key="x", secret_key="y")
    base = f"{BUCKET}/team/metrics/"
    selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
    return {i.path[len(base) :]: i.size for i in s3.get_file_info(selector) if i.type == fs.FileType.File}


def test_compact_and_gc_delete_only_the_objects_they_removed(tmp_path, moto):
    from conftest import write_samples

    # Three flush files in each partition of one run on host A, shipped by its next command.
    mirror_a = tmp_path / "host-a" / "buckets" / BUCKET / "team" / "metrics"
    run, now = "20261207T000000Z-node-a-0001", time.time() - 3 * 86400  # gc removes whole days
    for part in range(3):
        rows = [(now - 100 + part * 10 + i, "cpu_percent", 10.0 + i) for i in range(10)]
        write_samples(mirror_a, [*rows, *((t, "loss", 1.0) for t, _, _ in rows)], run=run, host="node-a")
    assert llamamon(tmp_path, moto.port, "host-a", "runs").returncode == 0
    assert len(_objects(moto, "group=")) == 6
    before = bucket_rows(tmp_path, moto.port, "before")
    assert before == (60, 60, 60)

    # compact on another machine: one object per partition, the superseded ones deleted from the bucket.
    result = llamamon(tmp_path, moto.port, "ops", "compact", "--older-than", "0s")
    assert result.returncode == 0, result.stderr
    assert len(_objects(moto, "group=")) == 2
    assert bucket_rows(tmp_path, moto.port, "after-compact") == before
    # Host A's mirror follows when it next reads the run: the replaced files leave it, the new one arrives.
    assert llamamon(tmp_path, moto.port, "host-a", "export", "csv", "--run", run, "-o", "a.csv").returncode == 0
    assert len(list(mirror_a.glob("group=*/date=*/run=*/*.parquet"))) == 2

    # A mirror file deleted by hand is not deleted from the bucket (gc keeping 30 days removes nothing).
    mirror = tmp_path / "ops" / "buckets" / BUCKET / "team" / "metrics"
    next(mirror.glob("group=*/date=*/run=*/*.parquet")).unlink()
    assert llamamon(tmp_path, moto.port, "ops", "gc", "--keep", "30d").returncode == 0
    assert bucket_rows(tmp_path, moto.port, "after-gc") == before
    # gc past the run's end, from a machine that never read the bucket: it decides from the listing and the
    # runs' metadata, so it downloads no data object. A dry run says what would go and deletes nothing.
    gc_only = tmp_path / "gc-only" / "buckets" / BUCKET / "team" / "metrics"
    dry = llamamon(tmp_path, moto.port, "gc-only", "gc", "--keep", "1d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    size = sum(s for k, s in _object_sizes(moto).items() if k.startswith(("group=", f"runs/{run}.json")))
    assert f"would free {format_bytes(size)}" in dry.stdout.decode()
    assert len(_objects(moto, "group=")) == 2
    result = llamamon(tmp_path, moto.port, "gc-only", "gc", "--keep", "1d")
    assert result.returncode == 0, result.stderr
    assert _objects(moto, "group=") == []
    assert _objects(moto, "runs/") == []
    assert [p for p in gc_only.rglob("*") if p.is_file() and "group=" in str(p)] == []
    # The machine that had read the run no longer lists it.
    listed = llamamon(tmp_path, moto.port, "ops", "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


# -- bad input --------------------------------------------------------------------------------------


def _one_line(result: subprocess.CompletedProcess[bytes], *words: str) -> None:
    err = check_clean(result)
    assert result.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def test_unreachable_bucket_is_one_line_and_record_still_runs_the_job(tmp_path):
    from s3_server import free_port

    closed = free_port()
    _one_line(llamamon(tmp_path, closed, "c", "runs"), URL, "cannot connect")
    _one_line(llamamon(tmp_path, closed, "c", "report", "--latest"), URL, "cannot connect")
    rec = record(tmp_path, closed, "c", "node-a", sys.executable, "-c", "print('job ran'); exit(7)")
    assert rec.returncode == 7
    assert b"job ran" in rec.stdout
    err = check_clean(rec)
    assert f"{URL}: uploading" in err
    assert "cannot connect" in err
    doctor = json.loads(llamamon(tmp_path, closed, "c", "doctor", "--no-gpu", "--json").stdout)
    assert doctor["bucket"]["url"] == URL
    assert doctor["bucket"]["waiting_files"] >= 2  # a data file and the run's metadata at least


def test_missing_bucket_is_one_line(tmp_path, moto):
    result = run_llamamon(
        "runs", "--metrics-dir", "s3://no-such-bucket/x", cwd=tmp_path, env=s3_env(moto.port, tmp_path / "c")
    )
    _one_line(result, "s3://no-such-bucket/x", "does not exist")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3://Bad_Bucket/x", ("invalid bucket name",)),
        ("s3://bucket/x?secret_key=abc", ("unknown option 'secret_key'",)),
        ("gs://bucket/x", ("only s3://",)),
        ("s3://AKIA:pw@bucket/x", ("credentials do not belong in the URL",)),
    ],
)
def test_malformed_urls_are_config_errors(tmp_path, url, words):
    result = run_llamamon("runs", "--metrics-dir", url, cwd=tmp_path, env=s3_env(1, tmp_path / "c"))
    _one_line(result, *words)
    assert "abc" not in result.stderr.decode()
    assert "pw@" not in result.stderr.decode()


# moto authorizes HEAD requests as actions of their own, s3:HeadBucket and s3:HeadObject; AWS authorizes them as
# s3:ListBucket and s3:GetObject, which List* and Get* already allow. Still no Put or Delete of any kind.
READ_ONLY = ["s3:Get*", "s3:List*", "s3:HeadBucket", "s3:HeadObject"]


@pytest.fixture
def moto_with_auth(tmp_path: Path):
    """A moto server enforcing IAM after its setup calls: a bucket, a user allowed to read it only, and a user
    allowed everything (who records what the reader then reads); yields (server, reader, writer), each user
    as (access key id, secret)."""
    server = MotoServer(tmp_path, auth_after=7)  # the seven calls below
    import boto3

    session = boto3.session.Session(aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1")
    endpoint = f"http://{server.endpoint}"
    session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    iam = session.client("iam", endpoint_url=endpoint)
    users = []
    for name, actions in (("reader", READ_ONLY), ("writer", ["s3:*"])):
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        users.append((key["AccessKeyId"], key["SecretAccessKey"]))
    yield server, *users
    server.stop()


def test_wrong_credentials_and_denied_writes_are_one_line(tmp_path, moto_with_auth):
    server, (key_id, secret), _ = moto_with_auth
    unknown = s3_env(
        server.port, tmp_path / "c", AWS_ACCESS_KEY_ID="AKIAUNKNOWNKEY000000", AWS_SECRET_ACCESS_KEY=secret
    )
    result = run_llamamon("runs", cwd=tmp_path, env=unknown)
    _one_line(result, URL, "credentials were rejected (unknown access key)")
    wrong = s3_env(server.port, tmp_path / "c", AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY="not-the-secret")
    _one_line(run_llamamon("runs", cwd=tmp_path, env=wrong), URL, "credentials were rejected (wrong secret key)")
    assert secret not in result.stderr.decode()

    # The user may read but not write: record's uploads are refused, the job is not affected.
    reader = s3_env(server.port, tmp_path / "c", AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    rec = run_llamamon(
        "record", "--metrics-dir", URL, "--no-gpu", "--", sys.executable, "-c", "exit(5)", cwd=tmp_path, env=reader
    )
    assert rec.returncode == 5
    err = check_clean(rec)
    assert f"{URL}: uploading" in err
    assert "access denied" in err
    assert secret not in err


def test_read_only_credentials_are_enough_for_every_reading_command(tmp_path, moto_with_auth):
    """runs, report, alerts test and export need only Get and List on the bucket (a CI job's read-only key):
    a reading command writes nothing there."""
    server, (reader_id, reader_secret), (writer_id, writer_secret) = moto_with_auth
    writer = s3_env(
        server.port, tmp_path / "w", AWS_ACCESS_KEY_ID=writer_id, AWS_SECRET_ACCESS_KEY=writer_secret,
        LLAMAMON_HOST="node-a",
    )  # fmt: skip
    rec = run_llamamon(
        "record", "--metrics-dir", URL, "--interval", "0.2", "--no-gpu", "--", *JOB, cwd=tmp_path, env=writer,
        timeout=90,
    )  # fmt: skip
    assert rec.returncode == 0, rec.stderr
    assert "uploading" not in rec.stderr.decode()

    reader = s3_env(server.port, tmp_path / "r", AWS_ACCESS_KEY_ID=reader_id, AWS_SECRET_ACCESS_KEY=reader_secret)
    results = []
    listed = run_llamamon("runs", "--json", cwd=tmp_path, env=reader)
    results.append(listed)
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["host"] == "node-a"
    report = run_llamamon("report", "--run", run["id"], "-o", "r.html", cwd=tmp_path, env=reader)
    results.append(report)
    assert report.returncode == 0, report.stderr
    assert "loss" in (tmp_path / "r.html").read_text(encoding="utf-8")
    gate = run_llamamon("alerts", "test", "--run", run["id"], "--json", cwd=tmp_path, env=reader)
    results.append(gate)
    assert gate.returncode in (0, 1), gate.stderr  # 1: an alert fired, which a gate may say; not a crash
    assert isinstance(json.loads(gate.stdout), (list, dict))
    exported = run_llamamon("export", "prometheus", "--run", run["id"], "-o", "run.prom", cwd=tmp_path, env=reader)
    results.append(exported)
    assert exported.returncode == 0, exported.stderr
    assert "llamamon_" in (tmp_path / "run.prom").read_text(encoding="utf-8")
    for result in results:
        out = check_clean(result) + result.stdout.decode()
        assert reader_secret not in out
        assert "access denied" not in out
        assert "uploading" not in out
