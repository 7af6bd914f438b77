"""CPU time per sample of llamamon's system + process-tree collectors against bare psutil loops.

    python bench/collectors.py [--ticks 300] [--extra 300]

Measured in one run, on one machine, alternating rounds so drift hits every variant alike:

* llamamon: ``SystemCollector.collect()`` + ``ProcessTreeCollector.collect()`` (members read from
  /proc/<pid>/stat and /proc/<pid>/io, /proc/<pid>/task/<tid>/children discovery), through asyncio as the
  recorder calls them;
* bare walk: a plain psutil loop over the same fields that finds the tree with
  ``Process.children(recursive=True)`` each sample (what psrecord-style tools do);
* bare cached: the same loop with Process objects kept and no discovery at all (a lower bound: it
  would miss every process started after the first sample).

Each case runs with the machine as it is (~70 processes on the dev box) and again with ``--extra``
sleeping processes added (~370), to show whether the cost grows with what else runs on the machine.
The recorded tree is 5 processes: a root and 4 children, one of them busy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamamon.collectors.process import ProcessTreeCollector
from llamamon.collectors.system import SystemCollector

TREE = r"""
import os, sys, time
for i in range(4):
    if os.fork() == 0:
        if i == 0:
            while True:
                pass
        time.sleep(3600)
        os._exit(0)
print("ready", flush=True)
time.sleep(3600)
"""


def system_fields(metrics_dir: str) -> None:
    psutil.cpu_times()
    psutil.virtual_memory()
    psutil.swap_memory()
    psutil.disk_usage(metrics_dir)
    psutil.disk_io_counters()
    psutil.net_io_counters(pernic=True)
    psutil.getloadavg()


def process_fields(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            with proc.oneshot():
                proc.cpu_times()
                proc.memory_info()
                proc.num_threads()
                proc.ppid()
            proc.io_counters()
        except psutil.Error:
            pass


def bare_walk(root: int, metrics_dir: str, ticks: int) -> float:
    start = time.process_time()
    for _ in range(ticks):
        system_fields(metrics_dir)
        parent = psutil.Process(root)
        process_fields([parent, *parent.children(recursive=True)])
    return (time.process_time() - start) / ticks


def bare_cached(root: int, metrics_dir: str, ticks: int) -> float:
    parent = psutil.Process(root)
    procs = [parent, *parent.children(recursive=True)]
    start = time.process_time()
    for _ in range(ticks):
        system_fields(metrics_dir)
        process_fields(procs)
    return (time.process_time() - start) / ticks


def llamamon_collectors(root: int, metrics_dir: str, ticks: int, which: str = "both") -> float:
    async def main() -> float:
        system = SystemCollector(metrics_dir)
        tree = ProcessTreeCollector(root)
        await system.open()
        await tree.open()
        await system.collect()  # the first sample waits out the rate window once; not part of the steady cost
        await tree.collect()
        start = time.process_time()
        for _ in range(ticks):
            if which in ("both", "system"):
                await system.collect()
            if which in ("both", "process"):
                await tree.collect()
        spent = time.process_time() - start
        await tree.close()
        await system.close()
        return spent / ticks

    return asyncio.run(main())


def measure(root: int, metrics_dir: str, ticks: int, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {}
    variants = {
        "llamamon system+process": lambda: llamamon_collectors(root, metrics_dir, ticks),
        "  llamamon system only": lambda: llamamon_collectors(root, metrics_dir, ticks, "system"),
        "  llamamon process only": lambda: llamamon_collectors(root, metrics_dir, ticks, "process"),
        "bare psutil, children(recursive=True)": lambda: bare_walk(root, metrics_dir, ticks),
        "bare psutil, cached, no discovery": lambda: bare_cached(root, metrics_dir, ticks),
    }
    for _ in range(rounds):
        for name, run in variants.items():
            results.setdefault(name, []).append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def report(title: str, figures: dict[str, float]) -> None:
    ours = figures["llamamon system+process"]
    print(f"\n{title}: {len(psutil.pids())} processes on the machine")
    for name, seconds in figures.items():
        ratio = "" if name.startswith("llamamon") or name.startswith("  ") else f"   llamamon = {ours / seconds:.2f}x"
        print(f"  {name:<40} {seconds * 1e3:7.3f} ms CPU per sample{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300, help="samples per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is printed")
    parser.add_argument("--extra", type=int, default=300, help="sleeping processes added for the second case")
    args = parser.parse_args()

    metrics_dir = os.getcwd()
    tree = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        if tree.stdout is None or tree.stdout.readline().strip() != "ready":
            raise SystemExit("the benchmark's process tree did not start")
        print(f"python {sys.version.split()[0]}, psutil {psutil.__version__}, {psutil.cpu_count()} CPUs")
        print(f"recorded tree: {1 + len(psutil.Process(tree.pid).children(recursive=True))} processes, one busy")
        report("as the machine is", measure(tree.pid, metrics_dir, args.ticks, args.rounds))
        for _ in range(args.extra):
            sleepers.append(subprocess.Popen(["sleep", "3600"]))
        report(f"with {args.extra} extra sleeping processes", measure(tree.pid, metrics_dir, args.ticks, args.rounds))
    finally:
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()
        os.killpg(tree.pid, 9)
        tree.wait()
        if tree.stdout is not None:
            tree.stdout.close()


if __name__ == "__main__":
    main()
