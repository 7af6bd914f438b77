"""What recording costs: CPU per sample of `llamamon record` against a bare psutil loop, and `--help` time.

    python bench/overhead.py [--seconds 12]

For --interval 1 and 0.1 the recorder records a busy child (one core spinning). The child itself reads the
recorder's CPU time (user+sys of every thread of the recorder process; not the child, not the keeper) at
two moments after a warm-up, and the store says how many samples were taken in between: that quotient is
the steady-state CPU per sample. The whole-run figure (startup, imports, final Parquet flush included,
divided by all samples) is printed too. The baseline, measured in the same run against the same kind of
child, is a bare loop making the psutil calls the system and process-tree collectors make (and finding the
tree the same way), with nothing stored: the ratio is what llamamon adds around psutil. Then the wall time of
`llamamon --help` against `python -c "import click"` (best of 7 each).
Targets: recorder <= 1.5x the baseline per sample; --help < 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

# The busy child: spins; after `warmup` s and at the end it reads its parent's (the recorder's) CPU time.
CHILD = r"""
import json, os, sys, time
warmup, seconds, report = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
parent = os.getppid()

def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except OSError:
            pass
    return total

start = time.monotonic()
marks = []
x = 0
while True:
    x += 1
    if x % 20000 == 0:
        now = time.monotonic() - start
        if not marks and now >= warmup:
            marks.append((time.time(), cpu_ns(parent)))
        if now >= seconds:
            marks.append((time.time(), cpu_ns(parent)))
            break
with open(report, "w") as fh:
    json.dump(marks, fh)
"""


def cpu_ns(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except OSError:
            pass
    return total


def tree_pids(root: int) -> list[int]:
    """The tree below root the way the process collector finds it (/proc/PID/task/TID/children)."""
    order, stack = [], [root]
    while stack:
        pid = stack.pop()
        order.append(pid)
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                stack.extend(int(c) for c in fh.read().split())
    return order


def baseline(interval: float, seconds: float, warmup: float) -> float:
    """CPU seconds per sample of a bare loop doing the collectors' psutil calls on a busy child.

    Like the recorder's figure, it counts the whole steady loop (sleeps' wake-ups included), not only the
    psutil calls, so the two are measured the same way.
    """
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        metrics_dir = str(REPO)
        psutil.cpu_percent(interval=None)
        procs: dict[int, psutil.Process] = {}

        def sample() -> None:
            psutil.cpu_times()
            psutil.virtual_memory()
            psutil.swap_memory()
            psutil.disk_usage(metrics_dir)
            psutil.disk_io_counters(perdisk=False)
            psutil.net_io_counters(pernic=True)
            psutil.getloadavg()
            for pid in tree_pids(child.pid):
                proc = procs.get(pid) or procs.setdefault(pid, psutil.Process(pid))
                with proc.oneshot():
                    proc.cpu_times()
                    proc.memory_info()
                    proc.num_threads()
                    proc.ppid()
                proc.io_counters()

        start = time.monotonic()
        k = 0
        counted = 0
        first = None
        while True:
            due = start + k * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if time.monotonic() - start >= seconds:
                break
            if first is None and time.monotonic() - start >= warmup:
                first = time.process_time()  # from here on every sample and every wake-up is counted
            sample()
            if first is not None:
                counted += 1
            k += 1
        used = time.process_time() - first
        return used / max(counted, 1)
    finally:
        child.kill()
        child.wait()


def recorder(interval: float, seconds: float, warmup: float) -> tuple[float, float, int]:
    """(steady CPU s per sample, whole-run CPU s per sample, samples) of `llamamon record`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "marks.json"
        folder = Path(tmp) / "m"
        argv = [sys.executable, "-m", "llamamon", "record", "-q", "--no-gpu", "--interval", str(interval)]
        argv += [
            "--metrics-dir",
            str(folder),
            "--",
            sys.executable,
            "-c",
            CHILD,
            str(warmup),
            str(seconds),
            str(report),
        ]
        proc = subprocess.Popen(argv, env=ENV, cwd=tmp)
        ps = psutil.Process(proc.pid)
        last_cpu = 0.0
        while proc.poll() is None:
            try:
                times = ps.cpu_times()
                last_cpu = times.user + times.system
            except psutil.Error:
                break
            time.sleep(0.05)
        if proc.returncode != 0:
            raise SystemExit(f"llamamon record exited {proc.returncode}")
        (t1, c1), (t2, c2) = json.loads(report.read_text())
        sys.path.insert(0, str(REPO))
        import polars as pl

        from llamamon.store.reader import scan

        times = scan(folder, groups=["system"]).filter(pl.col("metric") == "memory_used").collect()["time"]
        stamps = [t.timestamp() for t in times]
        between = sum(1 for t in stamps if t1 < t <= t2)
        steady = (c2 - c1) / 1e9 / max(between, 1)
        whole = last_cpu / max(len(stamps), 1)  # last reading before exit: a slight underestimate
        return steady, whole, len(stamps)


def wall(argv: list[str], runs: int = 7) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=ENV, stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each recorded job")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, psutil {psutil.__version__}, {os.cpu_count()} CPUs")
    for interval in (1.0, 0.1):
        warmup = 2.0
        base = baseline(interval, args.seconds, warmup)
        steady, whole, samples = recorder(interval, args.seconds, warmup)
        print(
            f"--interval {interval:g}: recorder {steady * 1e3:.2f} ms CPU/sample steady "
            f"({whole * 1e3:.2f} ms/sample over the whole run, {samples} samples); "
            f"bare psutil loop {base * 1e3:.2f} ms/sample; ratio {steady / base:.2f}x (target <= 1.5x)"
        )
    click_s = wall([sys.executable, "-c", "import click"])
    help_s = wall([sys.executable, "-m", "llamamon", "--help"])
    print(
        f"llamamon --help {help_s * 1e3:.0f} ms vs python -c 'import click' {click_s * 1e3:.0f} ms "
        f"(+{(help_s - click_s) * 1e3:.0f} ms; target < 150 ms)"
    )


if __name__ == "__main__":
    main()
