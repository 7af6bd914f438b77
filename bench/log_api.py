"""What ``llamamon.log`` costs a training loop, against a list.append floor and tensorboardX, in one run.

Every case runs in a fresh interpreter (so the background flush and the flush at exit are included)
and logs N points: N single-metric calls, and N/8 calls with a dict of 8 metrics (tensorboardX, about
100x slower per call, logs fewer points by default; per-point figures stay comparable).
Reported per case:

* ``thread us``: CPU time of the thread that runs the logging loop, per call: what the training thread pays
  (the issue's "per call in the training thread"). The background flusher's CPU is not in it;
* ``call us``: wall time of the logging loop per call. In a loop that does nothing but log, the flusher's
  work is serialized with the loop by the GIL, so this is the thread's CPU plus the flush's; in a real step
  the flush mostly runs while CUDA, numpy or I/O has released the GIL;
* ``cpu us/pt``: the child's total CPU (all threads, exit included) minus that of the same interpreter
  doing an empty loop with the same imports, per point: the all-in cost.

Also ``python -c 'import llamamon'`` against bare ``python -c pass`` (best of several runs).
Targets: < 1 us per call in the training thread, < 3 us CPU per point all in, < 30 ms import.

    python bench/log_api.py [--points 3000000]     (tensorboardX from the ``bench`` extra, if installed)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETUP = {
    "list.append": "buf = []\nlog = buf.append",
    "llamamon.log": "import llamamon\nlog = llamamon.log",
    # The same calls with the background flush held back to exit: the hot path alone, i.e. what the training
    # thread pays when the flusher runs while the GPU (or numpy, or I/O) has released the GIL.
    "llamamon.log deferred": "import llamamon, llamamon.api\nllamamon.api.FLUSH_INTERVAL = 1e9\nlog = llamamon.log",
    "tensorboardX": "from tensorboardX import SummaryWriter\nw = SummaryWriter(logdir='tb')\nlog = w.add_scalar",
}
CALL = {
    ("list.append", 1): "log((i, 0.5))",
    ("list.append", 8): "log((i, d))",
    ("llamamon.log", 1): "log(loss=0.5, step=i)",
    ("llamamon.log", 8): "log(d, step=i)",
    ("llamamon.log deferred", 1): "log(loss=0.5, step=i)",
    ("llamamon.log deferred", 8): "log(d, step=i)",
    ("tensorboardX", 1): "log('loss', 0.5, i)",
    ("tensorboardX", 8): "for k, v in d.items(): log(k, v, i)",
}
TEARDOWN = {"tensorboardX": "w.close()"}

CHILD = """
import json, time
{setup}
d = {{f"metric_{{k}}": 0.5 + k for k in range(8)}}
calls = {calls}
t0 = time.perf_counter()
c0 = time.thread_time()
for i in range(calls):
    {call}
thread = time.thread_time() - c0
wall = time.perf_counter() - t0
{teardown}
print(json.dumps({{"wall": wall, "thread": thread}}), flush=True)
"""


def run_child(lib: str, width: int, points: int, empty: bool) -> tuple[float, float, float]:
    """(loop wall seconds, loop thread CPU seconds, total child CPU seconds) of one case in a fresh interpreter."""
    calls = points // width
    code = CHILD.format(
        setup=SETUP[lib],
        calls=calls,
        call="pass" if empty else CALL[(lib, width)],
        teardown="" if empty else TEARDOWN.get(lib, ""),
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("LLAMAMON_RUN_ID", None)
    env.pop("LLAMAMON_METRICS_DIR", None)
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True, check=False
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(f"{lib} x{width} failed:\n{result.stderr}")
        if lib.startswith("llamamon.log") and not empty:
            from llamamon.store.segment_reader import read_segment

            rows = sum(len(read_segment(p)[1]) for p in Path(tmp, ".metrics", "_journal").rglob("*.jsonl"))
            if rows < points:  # (plus one "step" row per flush)
                raise SystemExit(f"llamamon.log x{width}: only {rows} of {points} points reached the journal")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    loop = json.loads(result.stdout.strip().splitlines()[-1])
    return loop["wall"], loop["thread"], cpu


def import_ms(statements: list[str], repeat: int) -> list[float]:
    """Best wall time (ms) of ``python -c STMT`` for each statement, runs interleaved so load spikes hit all."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    best = [float("inf")] * len(statements)
    for _ in range(repeat):
        for i, stmt in enumerate(statements):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], env=env, check=True)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b * 1000 for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 3,000,000 rather than the 1,000,000: a million single calls take ~0.8 s, less than the 1 s
    # between background flushes, so whether a flush shared the loop's GIL was down to timing.
    parser.add_argument("--points", type=int, default=3_000_000)
    parser.add_argument(
        "--tb-points", type=int, default=100_000, help="points for tensorboardX (about 100x slower per call)"
    )
    parser.add_argument("--repeat", type=int, default=15, help="runs of each import timing (best is kept)")
    args = parser.parse_args()
    libs = ["list.append", "llamamon.log", "llamamon.log deferred"]
    try:
        import tensorboardX  # noqa: F401

        libs.append("tensorboardX")
    except ImportError:
        print("tensorboardX not installed (pip install '.[bench]'): skipped", file=sys.stderr)

    print(
        f"{args.points:,} points per case ({args.tb_points:,} for tensorboardX); Python {sys.version.split()[0]}; {os.cpu_count()} CPUs"
    )
    print(f"{'case':<26}{'calls':>10}{'thread us':>10}{'call us':>10}{'us/point':>10}{'cpu us/pt':>11}")
    results = {}
    for width in (1, 8):
        for lib in libs:
            points = args.tb_points if lib == "tensorboardX" else args.points
            *_, idle_cpu = run_child(lib, width, points, empty=True)
            wall, thread, cpu = run_child(lib, width, points, empty=False)
            calls = points // width
            per_call = wall / calls * 1e6
            per_point_cpu = max(cpu - idle_cpu, 0.0) / points * 1e6
            results[(lib, width)] = (per_call, per_point_cpu)
            name = f"{lib} x{width}"
            print(
                f"{name:<26}{calls:>10,}{thread / calls * 1e6:>10.3f}{per_call:>10.3f}"
                f"{wall / points * 1e6:>10.3f}{per_point_cpu:>11.3f}"
            )
    floor = results[("list.append", 1)][0]
    mine = results[("llamamon.log", 1)][0]
    hot = results[("llamamon.log deferred", 1)][0]
    print(
        f"llamamon.log x1 call = {mine / floor:.1f}x list.append in wall time ({hot / floor:.1f}x with the flush "
        "deferred)",
        end="",
    )
    if ("tensorboardX", 1) in results:
        tb_call, tb_cpu = results[("tensorboardX", 1)]
        print(
            f"; tensorboardX add_scalar is {tb_call / mine:.1f}x slower per call, "
            f"{tb_cpu / max(results[('llamamon.log', 1)][1], 1e-9):.1f}x more CPU per point",
            end="",
        )
    print()
    bare, light = import_ms(["pass", "import llamamon"], args.repeat)
    print(f"python -c pass: {bare:.1f} ms; python -c 'import llamamon': {light:.1f} ms (+{light - bare:.1f} ms)")


if __name__ == "__main__":
    main()
