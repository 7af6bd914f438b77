"""Benchmark a multi-node job in a bucket: 64 hosts x 8 ranks x 2 h at 1 s, `report --group` and
`alerts test --group` against one polars scan of the same objects.

The store is what 64 `llamamon record` runs of one job (run group ``bench-job``) leave, each host with
8 GPUs and 8 ranks logging a step a second, beside 16 runs of another job that a command on
``bench-job`` must not read. Everything is uploaded to a real S3 API server (moto's server mode on
loopback), and each command starts from an empty local mirror, so what it downloads is what it read.

Prints wall time, peak memory (child processes' max RSS) and bytes read for the baseline and both
commands; targets: within 3x the scan and under 2 GiB, and only the group's objects read.

    python bench/many_hosts.py [--hosts 64] [--ranks 8] [--hours 2] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llamamon.samples import labels_to_str, make_labels

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
GROUP = "bench-job"
OTHER = "other-job"
BUCKET = "llamamon-bench"
SYSTEM = ["cpu_usage", "memory_usage", "memory_used", "load1", "disk_read_throughput", "network_rx_throughput"]
PROCESS = ["process_cpu_usage", "process_memory_rss"]
GPU = ["gpu_utilization", "gpu_memory_used", "gpu_power"]


def _table(times: np.ndarray, host: str, series: list[tuple[str, str, np.ndarray]], steps=None) -> pa.Table:
    n = len(times)
    metric = np.concatenate([np.full(n, m, dtype=object) for m, _, _ in series])
    labels = np.concatenate([np.full(n, lbl, dtype=object) for _, lbl, _ in series])
    return pa.table(
        {
            "time": pa.array(np.tile(times, len(series)), pa.timestamp("us", tz="UTC")),
            "host": pa.array(np.full(n * len(series), host, dtype=object), pa.string()),
            "metric": pa.array(metric, pa.string()),
            "value": pa.array(np.concatenate([v for _, _, v in series]), pa.float64()),
            "labels": pa.array(labels, pa.string()),
            "step": pa.nulls(n * len(series), pa.int64())
            if steps is None
            else pa.array(np.tile(steps, len(series)), pa.int64()),
        }
    )


def write_run(root: Path, run: str, host: str, group: str, node: int, ranks: int, hours: int, rng) -> int:
    """One host's run: system, process and per-GPU series at 1 s, and per-rank step/loss/step_time
    (``rank`` = node * ranks + local rank), one file per metric group and hour as compaction leaves them."""
    rows = 0
    slow_rank = 5 if node == 3 else None  # one straggler in the job, the report and the rule should name it
    for hour in range(hours):
        t0 = START + dt.timedelta(hours=hour)
        sec = np.arange(3600, dtype=np.int64)
        times = sec * 1_000_000 + int(t0.timestamp() * 1_000_000)
        n = len(times)
        system = [(m, "", np.clip(rng.normal(0.5, 0.1, n), 0, 1)) for m in SYSTEM]
        process = [(m, "", rng.normal(1e9, 1e7, n)) for m in PROCESS]
        gpu = [(m, labels_to_str(make_labels(gpu=g)), rng.normal(0.9, 0.05, n)) for g in range(ranks) for m in GPU]
        training = []
        steps = []
        for local in range(ranks):
            rank = node * ranks + local
            lbl = labels_to_str(make_labels(local_rank=local, node_rank=node, rank=rank))
            base = 1.3 if local == slow_rank else 1.0
            step_time = rng.normal(base, 0.05, n)
            step = hour * 3600 + sec
            training += [
                ("step", lbl, step.astype(np.float64)),
                ("loss", lbl, (2.0 / np.sqrt(1 + step) + rng.normal(0, 0.01, n)).astype(np.float32).astype(np.float64)),
                ("step_time", lbl, step_time),
            ]
            steps.append(step)
        for name, series in (("system", system), ("process", process), ("gpu", gpu)):
            folder = root / f"group={name}" / f"date={t0:%Y-%m-%d}" / f"run={run}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(_table(times, host, series), folder / f"bench-{hour:06d}.parquet")
            rows += n * len(series)
        folder = root / "group=training" / f"date={t0:%Y-%m-%d}" / f"run={run}"
        folder.mkdir(parents=True, exist_ok=True)
        t = pa.concat_tables([_table(times, host, training[3 * r : 3 * r + 3], steps[r]) for r in range(ranks)])
        pq.write_table(t, folder / f"bench-{hour:06d}.parquet")
        rows += t.num_rows
    info = {
        "id": run,
        "host": host,
        "start": START.timestamp(),
        "end": START.timestamp() + hours * 3600,
        "exit_code": 0,
        "name": group,
        "run_group": group,
        "source": "record",
        "interval": 1.0,
    }
    (root / "runs").mkdir(exist_ok=True)
    (root / "runs" / f"{run}.json").write_text(json.dumps(info))
    return rows


def build_store(root: Path, hosts: int, ranks: int, hours: int) -> int:
    rng = np.random.default_rng(16)
    rows = 0
    for node in range(hosts):
        host = f"node-{node:02d}"
        rows += write_run(root, f"20260101T000000Z-{host}-{node:04x}", host, GROUP, node, ranks, hours, rng)
    for other in range(16):
        host = f"box-{other:02d}"
        rows += write_run(root, f"20260101T000000Z-{host}-{other + 0x1000:04x}", host, OTHER, other, 1, hours, rng)
    return rows


BASELINE = """
import sys, json, polars as pl
keys, opts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
df = (
    pl.scan_parquet(keys, storage_options=opts, hive_partitioning=True)
    .group_by("metric").agg(pl.col("value").mean(), pl.len())
    .collect()
)
print(df.height, int(df["len"].sum()))
"""


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Wall seconds and peak RSS (GiB) of one child process (ru_maxrss of children is a running maximum,
    so commands are measured from the smallest expected to the largest)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto's S3 server on loopback, as the tests start it (tests/s3_server.py)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("moto server did not start")

    def filesystem(self):
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
            allow_delayed_open=True,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


def upload(s3, root: Path, prefix: str) -> tuple[int, int]:
    """Every file of the local store as one object each; (objects, bytes)."""
    s3.create_dir(BUCKET)
    objects = size = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        with s3.open_output_stream(f"{BUCKET}/{prefix}/{path.relative_to(root).as_posix()}") as out:
            out.write(data)
        objects += 1
        size += len(data)
    return objects, size


def group_keys(root: Path, group: str) -> tuple[list[str], int]:
    """The data objects of ``group``'s runs (what a scan of that job reads) and their bytes."""
    runs = {p.stem for p in (root / "runs").glob("*.json") if json.loads(p.read_text()).get("run_group") == group}
    files = [p for p in root.glob("group=*/date=*/run=*/*.parquet") if p.parent.name[4:] in runs]
    return [p.relative_to(root).as_posix() for p in files], sum(p.stat().st_size for p in files)


def cached_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--hours", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the generated store in bench/out/")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (python -m bench)")
    args = ap.parse_args()
    root = OUT / f"many-hosts-{args.hosts}x{args.ranks}x{args.hours}h"
    if not (root / "runs").exists():
        t = time.perf_counter()
        rows = build_store(root, args.hosts, args.ranks, args.hours)
        print(f"store: {rows:,} rows written in {time.perf_counter() - t:.1f}s")
    work = Path(tempfile.mkdtemp(prefix="llamamon-bench-"))
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    env.pop("LLAMAMON_CONFIG", None)
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    moto = Moto(env, work / "moto.log")
    try:
        t = time.perf_counter()
        objects, total = upload(moto.filesystem(), root, "store")
        print(f"bucket: {objects} objects, {total / 1024**2:.0f} MiB uploaded in {time.perf_counter() - t:.1f}s")
        keys, group_size = group_keys(root, GROUP)
        print(
            f"{GROUP}: {len(keys)} data objects, {group_size / 1024**2:.0f} MiB ({group_size / total:.0%} of the bucket)"
        )
        opts = {
            "aws_endpoint_url": f"http://127.0.0.1:{moto.port}",
            "aws_access_key_id": "bench",
            "aws_secret_access_key": "bench-secret",
            "aws_region": "us-east-1",
            "aws_allow_http": "true",
        }
        urls = [f"s3://{BUCKET}/store/{k}" for k in keys]
        base_wall, base_peak, proc = measure([sys.executable, "-c", BASELINE, json.dumps(urls), json.dumps(opts)], env)
        if proc.returncode:
            sys.exit(proc.stderr.decode()[-2000:])
        print(
            f"baseline: one polars scan of the group's objects: {base_wall:6.2f} s  peak {base_peak:5.2f} GiB"
            f"  ({proc.stdout.decode().strip()})"
        )
        url = f"s3://{BUCKET}/store?endpoint_override=127.0.0.1:{moto.port}&scheme=http"
        figures = {}
        commands = {
            "alerts test --group": ["alerts", "test", "--group", GROUP],
            "report --group": ["report", "--group", GROUP, "-o", str(work / "report.html")],
        }
        for label, argv in commands.items():
            cache = work / f"cache-{label.split()[0]}"
            cmd_env = dict(env, LLAMAMON_CACHE_DIR=str(cache))
            wall, peak, proc = measure([sys.executable, "-m", "llamamon", *argv, "--metrics-dir", url], cmd_env)
            if proc.returncode not in (0, 1):  # alerts test exits 1 when a rule fires
                sys.exit(f"{label}: exit {proc.returncode}\n{proc.stderr.decode()[-3000:]}")
            read = cached_bytes(cache)
            figures[label] = (wall, peak, read, proc.returncode)
            print(
                f"llamamon {label:20s} {wall:6.2f} s  peak {peak:5.2f} GiB  read {read / 1024**2:6.1f} MiB"
                f" ({read / group_size:.0%} of the group, {read / total:.0%} of the bucket)  exit {proc.returncode}"
            )
        load = os.getloadavg()[0]
        print(f"cores: {os.cpu_count()}, load average {load:.1f} (wall times stretch when other work shares the cores)")
        for label, (wall, peak, read, _) in figures.items():
            ok = wall <= 3 * base_wall and peak < 2 and read <= group_size * 1.01
            print(
                f"{label}: {wall / base_wall:.2f}x the scan, {peak:.2f} GiB peak: "
                f"{'met' if ok else 'NOT met'} (<= 3x, < 2 GiB, reads only the group)"
            )
        if args.json:
            out = []
            for label, (wall, peak, read, _) in figures.items():
                what = (
                    f"`llamamon {label}`, {args.hosts} hosts x {args.ranks} ranks x {args.hours} h at 1 s in a bucket"
                )
                out.append(
                    {
                        "name": f"Many hosts: {what} (wall time)",
                        "unit": "s",
                        "llamamon": wall,
                        "peers": {"one polars scan of the group's objects": base_wall},
                        "ratios": {"scan": wall / base_wall},
                        "target": "<= 3x the scan",
                        "met": wall <= 3 * base_wall,
                        "note": f"read {read / 1024**2:.0f} MiB of the group's {group_size / 1024**2:.0f} MiB "
                        f"(bucket {total / 1024**2:.0f} MiB)",
                    }
                )
                out.append(
                    {
                        "name": f"Many hosts: {what} (peak memory)",
                        "unit": "GiB",
                        "llamamon": peak,
                        "peers": {"one polars scan of the group's objects": base_peak},
                        "ratios": {"scan": peak / base_peak},
                        "target": "< 2 GiB",
                        "met": peak < 2,
                    }
                )
            print(json.dumps({"figures": out}))
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
