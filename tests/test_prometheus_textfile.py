"""TextfileWriter: one .prom file per run or watch, rewritten atomically, marked inactive at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from llamamon.prometheus.text import parse
from llamamon.prometheus.textfile import TextfileWriter, prune, textfile_name
from llamamon.samples import Sample, make_labels
from llamamon.store.layout import textfile_folder
from tests.conftest import llamamon_env

RUN_ID = "20260901T101500Z-gpu-box-3f2a"


def values(path: Path) -> dict[tuple[str, tuple], float]:
    return {(p.name, p.labels): p.value for f in parse(path.read_text(encoding="utf-8")) for p in f.points}


def test_file_name():
    assert textfile_name("gpu-box.lan", RUN_ID) == f"llamamon-gpu-box.lan-{RUN_ID}.prom"
    assert textfile_name("a/b c", "watch") == "llamamon-a_b_c-watch.prom"


def test_refresh_limits_rewrites_but_every_sample_counts(tmp_path):
    now = [0.0]
    writer = TextfileWriter(tmp_path, "gpu-box", RUN_ID, clock=lambda: 100.0, refresh=5.0, monotonic=lambda: now[0])
    labels = (("host", "gpu-box"), ("run", RUN_ID))
    latency = ("llamamon_inference_latency_seconds_count", labels)

    assert writer.due()
    writer.write([Sample("loss", 2.0), Sample("inference_latency", 120.0)])  # the first write is never held back
    assert values(writer.path)[("llamamon_loss", labels)] == 2.0
    before = writer.path.stat().st_mtime_ns

    now[0] = 4.9
    assert not writer.due()
    writer.write([Sample("loss", 1.0), Sample("inference_latency", 80.0)])
    assert writer.path.stat().st_mtime_ns == before
    assert values(writer.path)[("llamamon_loss", labels)] == 2.0

    now[0] = 5.0
    assert writer.due()
    writer.write([Sample("inference_latency", 40.0)])
    after = values(writer.path)
    assert after[("llamamon_loss", labels)] == 1.0  # the held-back tick's value arrived with this rewrite
    assert after[latency] == 3.0  # and its observation was counted

    now[0] = 6.0
    writer.write([Sample("loss", 0.5)])
    writer.finish(grace=60)  # with a grace the end is always written, however recent the last rewrite
    final = values(writer.path)
    assert final[("llamamon_loss", labels)] == 0.5
    assert final[("llamamon_run_active", labels)] == 0.0


def test_write_every_tick_then_finish(tmp_path):
    clock = iter([100.0, 110.0, 120.0]).__next__
    writer = TextfileWriter(tmp_path / "prom", "gpu-box", RUN_ID, clock=clock)
    assert writer.path == tmp_path / "prom" / f"llamamon-gpu-box-{RUN_ID}.prom"
    labels = (("host", "gpu-box"), ("run", RUN_ID))

    writer.write([Sample("loss", 2.0, step=1), Sample("gpu_utilization", 0.5, make_labels(gpu=0))])
    first = values(writer.path)
    assert first[("llamamon_run_active", labels)] == 1.0
    assert first[("llamamon_loss", labels)] == 2.0
    assert first[("llamamon_last_sample_timestamp_seconds", labels)] == 100.0
    assert first[("llamamon_gpu_utilization_ratio", (("gpu", "0"), *labels))] == 0.5
    assert ("llamamon_alerts_firing", (*labels, ("severity", "warning"))) not in first

    writer.write([Sample("loss", 1.5, time=105.0, step=2)], alerts_firing={"critical": 1})
    second = values(writer.path)
    assert second[("llamamon_loss", labels)] == 1.5
    assert second[("llamamon_step", labels)] == 2.0
    assert second[("llamamon_gpu_utilization_ratio", (("gpu", "0"), *labels))] == 0.5  # latest value stays
    assert second[("llamamon_last_sample_timestamp_seconds", labels)] == 105.0
    assert second[("llamamon_alerts_firing", (*labels, ("severity", "critical")))] == 1.0
    assert second[("llamamon_alerts_firing", (*labels, ("severity", "warning")))] == 0.0

    writer.finish(grace=60)
    final = values(writer.path)
    assert final[("llamamon_run_active", labels)] == 0.0
    assert final[("llamamon_loss", labels)] == 1.5
    assert [p.name for p in (tmp_path / "prom").iterdir()] == [writer.path.name]  # no temp files left
    text = writer.path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert all(len(line.split(" ")) == 2 for line in text.splitlines() if not line.startswith("#")), "no timestamps"


def test_watch_writer_with_own_labels(tmp_path):
    writer = TextfileWriter(tmp_path, "gpu-box", "watch", labels={"host": "gpu-box"})
    writer.write([Sample("cpu_usage", 0.25)])
    assert values(writer.path)[("llamamon_cpu_usage_ratio", (("host", "gpu-box"),))] == 0.25
    assert writer.path.name == "llamamon-gpu-box-watch.prom"


def test_readers_never_see_a_partial_file(tmp_path):
    writer = TextfileWriter(tmp_path, "h", "r")
    many = [Sample("custom_metric", float(i), make_labels(shard=i)) for i in range(300)]
    writer.write(many)
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            writer.write([Sample("loss", float(n))])

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        for _ in range(30):
            got = values(writer.path)  # parses: a half-written file would not, or would lack shards
            assert sum(name == "llamamon_custom_metric" for name, _ in got) == 300
    finally:
        stop.set()
        thread.join()


WRITER_SCRIPT = """
import sys
from llamamon.prometheus.textfile import TextfileWriter
from llamamon.samples import Sample, make_labels
writer = TextfileWriter(sys.argv[1], "h", "r")
n = 0
while True:
    n += 1
    writer.write([Sample("custom_metric", float(n), make_labels(shard=i)) for i in range(2000)])
    if n == 1:
        print("first", flush=True)
"""


def test_killing_a_writer_mid_write_leaves_a_whole_file(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, env=llamamon_env()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        # Let it get well into later rewrites, then kill it wherever it is.
        target = tmp_path / "llamamon-h-r.prom"
        deadline = time.monotonic() + 10
        while values(target)[("llamamon_custom_metric", (("host", "h"), ("run", "r"), ("shard", "0")))] < 3:
            assert time.monotonic() < deadline, "the writer did not get to its third rewrite"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    got = values(target)
    shards = {v for (name, _), v in got.items() if name == "llamamon_custom_metric"}
    assert len([n for n, _ in got if n == "llamamon_custom_metric"]) == 2000
    assert len(shards) == 1  # every series from the same rewrite: never half of one and half of another
    assert [p.name for p in tmp_path.glob("*.prom")] == [target.name]


def test_a_finished_run_file_goes_at_once_or_after_its_grace(tmp_path):
    gone = TextfileWriter(tmp_path, "gpu-box", RUN_ID)
    gone.write([Sample("batch_queue_size", 166.0)])
    gone.finish()  # no grace: nothing of the finished run is left for node_exporter to serve
    assert not gone.path.exists()

    second = "20260901T111500Z-gpu-box-0002"
    kept = TextfileWriter(tmp_path, "gpu-box", second)
    kept.write([Sample("batch_queue_size", 166.0)])
    kept.finish(grace=30)
    assert values(kept.path)[("llamamon_run_active", (("host", "gpu-box"), ("run", second)))] == 0.0
    written = kept.path.stat().st_mtime
    assert prune(tmp_path, 30, now=written + 29) == []  # its final values can still be scraped
    assert prune(tmp_path, 30, now=written + 30) == [kept.path]
    assert not kept.path.exists()


def test_prune_removes_a_killed_writers_file_and_keeps_a_live_ones(tmp_path):
    live = TextfileWriter(tmp_path, socket.gethostname(), "watch", labels={"host": socket.gethostname()})
    live.write([Sample("cpu_usage", 0.25)])
    # A recorder killed with -9 leaves its file saying run_active 1; its pid is gone (or another process').
    code = (
        "import sys; from llamamon.prometheus.textfile import TextfileWriter; from llamamon.samples import Sample; "
        f"TextfileWriter(sys.argv[1], {socket.gethostname()!r}, {RUN_ID!r}).write([Sample('batch_queue_size', 166.0)])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=llamamon_env(), timeout=60)
    dead = tmp_path / textfile_name(socket.gethostname(), RUN_ID)
    assert values(dead)[("llamamon_run_active", (("host", socket.gethostname()), ("run", RUN_ID)))] == 1.0
    # Another host's live-looking file is not judged by a pid that means nothing here.
    other = tmp_path / textfile_name("elsewhere", RUN_ID)
    other.write_bytes(dead.read_bytes())
    assert prune(tmp_path, 0) == [dead]
    assert live.path.exists()
    assert other.exists()


def test_gc_removes_leftover_prom_files_whatever_keep_says(tmp_path):
    metrics = tmp_path / ".metrics"
    writer = TextfileWriter(textfile_folder(metrics), "gpu-box", RUN_ID)
    writer.write([Sample("batch_queue_size", 166.0)])
    writer.finish(grace=1)
    os.utime(writer.path, (time.time() - 10, time.time() - 10))
    dry = subprocess.run(
        [sys.executable, "-m", "llamamon", "gc", "--keep", "3650d", "--dry-run", "--metrics-dir", str(metrics)],
        capture_output=True,
        text=True,
        env=llamamon_env(),
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {writer.path}" in dry.stdout
    assert writer.path.exists()
    (tmp_path / "monitoring.yaml").write_text("monitoring:\n  textfile_grace: 1s\n")
    done = subprocess.run(
        [sys.executable, "-m", "llamamon", "gc", "--keep", "3650d", "--metrics-dir", str(metrics)],
        capture_output=True,
        text=True,
        env=llamamon_env(),
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"removed {writer.path}" in done.stdout
    assert not writer.path.exists()
