"""Recorder cost: CPU the *monitor* spends per sample while recording the same busy job, against its peers.

    python -m bench.recorder_cost [--quick] [--repeat 3]

Monitors, each recording a child that spins one core, at --interval 1 s and 0.1 s:

* llamamon: ``llamamon record --no-gpu --interval I -- <busy child>``;
* psrecord: ``psrecord <pid> --include-children --interval I --log FILE``;
* glances: ``glances -q --export csv -t I`` with only the plugins that read what llamamon records
  (cpu, mem, memswap, load, network, diskio, fs, processlist) — cheaper for glances than its defaults;
* floor: a bare psutil loop in its own process making the psutil calls llamamon's system and
  process-tree collectors make (tree found through /proc/<pid>/task/<tid>/children), writing one line
  per sample and nothing else.

The monitor's CPU is user+sys of its process (all threads) plus its helper processes (llamamon's
keeper), never the recorded job: read from psutil after a warm-up (start-up and imports excluded) and
again after the measuring window. Samples in the window are counted from what each monitor wrote
(log/CSV lines; llamamon's stored ``memory_used`` rows by timestamp), so a monitor that cannot keep up
is charged per sample it really took. Tools run back to back in a rotating order within each run; the
ratios are per run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
MARK = "llamamon-bench-busy"
# Spins one core until the stop file appears (checked every 200k iterations: a stat, not a busy syscall loop).
BUSY = """
import os, sys
stop, i = sys.argv[1], 0
while True:
    i += 1
    if i % 200000 == 0 and os.path.exists(stop):
        break
"""
GLANCES_PLUGINS = "cpu,mem,memswap,load,network,diskio,fs,processlist"
TOOLS = ("llamamon", "llamamon-noexport", "psrecord", "glances", "floor")
# llamamon with monitoring.export_format: none, i.e. without the Prometheus .prom file (rewritten every
# monitoring.textfile_refresh, 5 s by default)
NOEXPORT_CONFIG = "monitoring:\n  export_format: none\n"


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAMON_")}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return out


def busy_argv(stop: Path) -> list[str]:
    return [sys.executable, "-c", BUSY, str(stop), MARK]


# -- the floor: a bare psutil loop (run as `python bench/recorder_cost.py --floor PID INTERVAL LOG DIR`) --


def tree(root: int) -> list[int]:
    """``root`` and its descendants, found the way llamamon's process-tree collector finds them."""
    order, stack = [], [root]
    while stack:
        pid = stack.pop()
        order.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return order


def floor_loop(root: int, interval: float, log: str, metrics_dir: str) -> None:
    procs: dict[int, psutil.Process] = {}

    psutil.cpu_percent(interval=None)
    start = time.monotonic()
    k = 0
    with open(log, "w") as out:
        while psutil.pid_exists(root):
            psutil.cpu_times()
            psutil.virtual_memory()
            psutil.swap_memory()
            psutil.disk_usage(metrics_dir)
            psutil.disk_io_counters(perdisk=False)
            psutil.net_io_counters(pernic=True)
            psutil.getloadavg()
            rss = 0
            for pid in tree(root):
                try:
                    proc = procs.get(pid) or procs.setdefault(pid, psutil.Process(pid))
                    with proc.oneshot():
                        proc.cpu_times()
                        rss += proc.memory_info().rss
                        proc.num_threads()
                        proc.ppid()
                    proc.io_counters()
                except psutil.Error:
                    procs.pop(pid, None)
            out.write(f"{time.time():.3f} {rss}\n")
            out.flush()
            k += 1
            delay = start + k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)


# -- measuring one monitor ---------------------------------------------------------------------------------


def _cpu(procs: list[psutil.Process]) -> float:
    """CPU seconds of every thread of these processes, from /proc/<pid>/task/*/schedstat (ns resolution;
    psutil's cpu_times counts 10 ms clock ticks, too coarse for a few ms per sample)."""
    total = 0
    for proc in procs:
        try:
            tids = os.listdir(f"/proc/{proc.pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except OSError:
                pass
    return total / 1e9


def _monitor_procs(monitor: psutil.Process, job: set[int]) -> list[psutil.Process]:
    """The monitor and its helpers (llamamon's keeper), never the recorded job's tree."""
    try:
        return [monitor, *(p for p in monitor.children(recursive=True) if p.pid not in job)]
    except psutil.Error:
        return [monitor]


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _tail(path: Path) -> str:
    return path.read_bytes()[-2000:].decode(errors="replace")


def _wait_until(deadline: float) -> None:
    # A benchmark's clock, not synchronisation: the windows are defined in wall time.
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def _first_sample(proc: subprocess.Popen, log: Path | None, folder: Path, limit: float = 60.0) -> float:
    """When the monitor's first sample became visible (start-up and imports are not what we measure)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"monitor exited ({proc.returncode}) before its first sample")
        if log is not None:
            if _lines(log) >= 2:  # a header line, then a sample (psrecord, glances); the floor writes no header
                return time.monotonic()
        elif any(p.stat().st_size > 0 for p in (folder / "_journal").rglob("*.jsonl")):
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"no sample within {limit:g} s")


def _job_pids(monitor: psutil.Process, busy_pid: int | None) -> set[int]:
    if busy_pid is not None:
        return {busy_pid}
    found: set[int] = set()
    try:
        for p in monitor.children(recursive=True):
            try:
                if MARK in p.cmdline():
                    found.add(p.pid)
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return found


def measure(tool: str, interval: float, warmup: float, window: float, tmp: Path) -> tuple[float, int]:
    """(monitor CPU seconds in the window, samples it took in the window)."""
    folder = tmp / "m"
    stop = tmp / "stop"
    busy = None
    if tool.startswith("llamamon"):
        if tool == "llamamon-noexport":
            (tmp / "monitoring.yaml").write_text(NOEXPORT_CONFIG)
        argv = [sys.executable, "-m", "llamamon", "record", "-q", "--no-gpu", "--interval", str(interval)]
        argv += ["--metrics-dir", str(folder), "--", *busy_argv(stop)]
        log = None
    else:
        busy = subprocess.Popen(busy_argv(stop))
        log = tmp / f"{tool}.log"
        if tool == "psrecord":
            argv = [sys.executable, "-m", "psrecord", str(busy.pid), "--include-children"]
            argv += ["--interval", str(interval), "--log", str(log)]
        elif tool == "glances":
            argv = [sys.executable, "-m", "glances", "-q", "--disable-check-update", "--disable-plugin", "all"]
            argv += ["--enable-plugin", GLANCES_PLUGINS, "--export", "csv", "--export-csv-file", str(log)]
            argv += ["-t", str(interval)]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--floor", str(busy.pid), str(interval), str(log)]
            argv.append(str(tmp))
    # stderr to a file, not a pipe: a chatty monitor must never block on a full pipe.
    with open(tmp / f"{tool}.stderr", "wb") as errors:
        proc = subprocess.Popen(argv, env=env(), cwd=tmp, stdout=subprocess.DEVNULL, stderr=errors)
    monitor = psutil.Process(proc.pid)
    try:
        start = _first_sample(proc, log, folder) + warmup
        _wait_until(start)
        job = _job_pids(monitor, busy.pid if busy else None)
        helpers = _monitor_procs(monitor, job)
        c1, n1, w1 = _cpu(helpers), _lines(log) if log else 0, time.time()
        _wait_until(start + window)
        c2, n2, w2 = _cpu(helpers), _lines(log) if log else 0, time.time()
        if proc.poll() is not None:
            raise RuntimeError(f"{tool} exited early ({proc.returncode}): {_tail(tmp / f'{tool}.stderr')}")
    finally:
        stop.touch()
        if not tool.startswith("llamamon"):
            proc.terminate()
        if busy is not None:
            busy.kill()
            busy.wait()
    proc.wait(timeout=60)
    if tool.startswith("llamamon"):
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} record exited {proc.returncode}: {_tail(tmp / f'{tool}.stderr')}")
        n1, n2 = 0, _stored_samples(folder, w1, w2)
    return c2 - c1, n2 - n1


def _stored_samples(folder: Path, since: float, until: float) -> int:
    import polars as pl

    sys.path.insert(0, str(REPO))
    from llamamon.store.reader import scan

    frame = scan(folder, groups=["system"]).filter(pl.col("metric") == "memory_used").select("time").collect()
    return sum(1 for t in frame["time"] if since < t.timestamp() <= until)


def run(quick: bool = False, repeat: int | None = None) -> list:
    from bench.results import Figure, load1, median, median_ratio

    repeat = repeat or (1 if quick else 3)
    # (interval, warm-up after the first sample, window); --quick is a smoke run: 0.1 s only, short.
    plans = [(0.1, 0.5, 1.5)] if quick else [(1.0, 2.0, 10.0), (0.1, 1.5, 5.0)]
    figures = []
    for interval, warmup, window in plans:
        load_before = load1()
        per_run: list[dict[str, tuple[float, int]]] = []
        for r in range(repeat):
            order = TOOLS[r % len(TOOLS) :] + TOOLS[: r % len(TOOLS)]
            results = {}
            for tool in order:
                with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
                    results[tool] = measure(tool, interval, warmup, window, Path(tmp))
            per_run.append(results)
        per_sample = {t: [cpu / n * 1e3 for cpu, n in (run[t] for run in per_run) if n > 0] for t in TOOLS}
        value = {t: median(v) if v else None for t, v in per_sample.items()}
        ratios = {}
        for peer in ("floor", "psrecord", "glances"):
            pairs = [
                (run["llamamon"][0] / run["llamamon"][1], run[peer][0] / run[peer][1])
                for run in per_run
                if run["llamamon"][1] > 0 and run[peer][1] > 0
            ]
            if pairs:
                ratios[peer] = median_ratio(pairs)
        expected = window / interval
        samples = {t: [run[t][1] for run in per_run] for t in TOOLS}
        met = (
            "floor" in ratios
            and ratios["floor"] <= 1.5
            and all(ratios.get(p, float("inf")) < 1.0 for p in ("psrecord", "glances"))
        )
        short = [t for t in TOOLS if min(samples[t]) < 0.8 * expected]
        note = (
            f"--interval {interval:g} s: {warmup:g} s warm-up, then a {window:g} s window (~{expected:.0f} samples); "
            f"samples taken per run: " + ", ".join(f"{t} {samples[t]}" for t in TOOLS)
        )
        pairs = [
            (run["llamamon-noexport"][0] / run["llamamon-noexport"][1], run["floor"][0] / run["floor"][1])
            for run in per_run
            if run["llamamon-noexport"][1] > 0 and run["floor"][1] > 0
        ]
        if pairs:
            note += (
                f"; llamamon with monitoring.export_format: none (no Prometheus .prom file, which is otherwise "
                f"rewritten every 5 s) is {median_ratio(pairs):.2f}x the floor"
            )
        if short:
            note += f"; could not keep up with the interval: {', '.join(short)} (charged per sample really taken)"
        figures.append(
            Figure(
                name=f"Recorder CPU per sample, --interval {interval:g} s",
                unit="ms",
                llamamon=value["llamamon"],
                peers={
                    "llamamon without .prom export": value["llamamon-noexport"],
                    "psrecord": value["psrecord"],
                    "glances": value["glances"],
                    "bare psutil loop": value["floor"],
                },
                ratios={"floor" if k == "floor" else k: v for k, v in ratios.items()},
                target="< every peer; <= 1.5x floor",
                met=bool(met),
                runs=repeat,
                load=(load_before, load1()),
                note=note,
                detail={"per_run": per_run, "cpu_ms_per_sample": per_sample},
            )
        )
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--floor":
        floor_loop(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    sys.path.insert(0, str(REPO))
    from bench.results import standalone

    standalone(run, __doc__)


if __name__ == "__main__":
    main()
