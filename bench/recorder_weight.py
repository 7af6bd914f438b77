"""Recorder weight: what a user pays per job, all in (start-up, imports, the keeper, Parquet), beside psrecord.

    python -m bench.recorder_weight [--quick] [--repeat 5] [--flat-minutes 30]

Three figures, issue 20's targets:

* **CPU of a 10 s recording at 0.1 s, all in**: ``llamamon record -q --no-gpu --interval 0.1 -- sleep 10``
  against ``psrecord --interval 0.1 --include-children 'sleep 10'``, alternating, one ratio per round.
  The CPU is ``wait4``'s rusage of the monitor: its own user+sys plus every descendant it reaped (the job,
  llamamon's output keeper). ``sleep`` itself costs ~1 ms, the same for both.
* **Peak memory of every recorder process**: the monitor's process tree is polled every 20 ms; each
  process's peak is its ``VmHWM`` (the kernel's own high-water mark, so a peak between polls still counts),
  each process named by its role (``main``; ``keeper``; ``pyarrow child``, a Python child that maps pyarrow,
  which record no longer has: it would show a regression); the
  job (``sleep``) is not counted. "Summed" adds the per-process peaks, an upper bound: forked children share
  pages with ``main`` until they write them. The peak sum of PSS (``/proc/PID/smaps_rollup``, shared pages
  split between sharers) is printed beside it.
* **Memory stays flat**: ``record --interval 0.1`` around a job logging 1,000 points/s through
  ``llamamon.log`` for ``--flat-minutes`` (``--quick``: 2); the main process's RSS every 10 s; the figure is
  its growth from the end of the first minute to the end.

What owns the memory is in the note: the peak RSS (``VmHWM``) of ``python -c`` importing each heavy module alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.recorder_cost import tree
from bench.startup import child_env

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.02
# What a job logging 1,000 points/s looks like: ten metrics every 10 ms, until killed.
LOGGING_JOB = """
import time, llamamon
step = 0
while True:
    llamamon.log(step=step, **{f"m{i}": step * 0.001 + i for i in range(10)})
    step += 1
    time.sleep(0.01)
"""
IMPORTS = (
    "pass",
    "import psutil",
    "import llamamon.cli",
    "import asyncio, ssl",
    "import yaml",
    "import pyarrow.parquet",
)


def _proc_kib(pid: int, file: str, field: str) -> int | None:
    """One ``field: N kB`` line of ``/proc/PID/<file>`` (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _role(pid: int, root: int) -> str | None:
    """``main``, ``keeper`` or ``pyarrow child``; None for the job (or a process already gone)."""
    if pid == root:
        return "main"
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    if not Path(exe).name.startswith("python"):
        return None  # the recorded job (sleep)
    if "pyarrow" in maps:
        return "pyarrow child"
    return "keeper"


def watched(argv: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``argv`` to its end; its all-in CPU and wall seconds, and each process's peak memory (KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks: dict[int, int] = {}
    roles: dict[int, str | None] = {}
    pss_peak = 0
    usage = None
    while usage is None:
        pss = 0
        for pid in tree(proc.pid):
            if pid not in roles:
                roles[pid] = _role(pid, proc.pid)
            if roles[pid] is None:
                continue
            hwm = _proc_kib(pid, "status", "VmHWM:")
            if hwm is not None:
                peaks[pid] = max(peaks.get(pid, 0), hwm)
            pss += _proc_kib(pid, "smaps_rollup", "Pss:") or 0
        pss_peak = max(pss_peak, pss)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == 0:
            usage = None
            time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    by_role: dict[str, int] = {}
    for pid, kib in peaks.items():  # peaks holds only pids with a role
        by_role[roles[pid]] = max(by_role.get(roles[pid], 0), kib)
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_kib": by_role,
        "summed_kib": sum(peaks.values()),
        "pss_summed_kib": pss_peak,
        "rc": proc.returncode,
    }


def ten_second_runs(repeat: int, seconds: float) -> dict[str, list[dict]]:
    py = sys.executable
    out: dict[str, list[dict]] = {"llamamon": [], "psrecord": []}
    with tempfile.TemporaryDirectory(prefix="llamamon-weight-") as tmp:
        env, cwd = child_env(tmp), Path(tmp)
        argvs = {
            "llamamon": [
                *(py, "-m", "llamamon", "record", "-q", "--no-gpu", "--interval", "0.1"),
                *("--metrics-dir", str(cwd / "m"), "--", "sleep", str(seconds)),
            ],
            "psrecord": [
                *(py, "-m", "psrecord", "--interval", "0.1", "--include-children", f"sleep {seconds}"),
                *("--log", str(cwd / "psrecord.log")),
            ],
        }
        for argv in argvs.values():  # warm the page cache and bytecode, unmeasured
            subprocess.run(argv, env=env, cwd=cwd, capture_output=True)
        for r in range(repeat):
            names = list(argvs) if r % 2 == 0 else list(reversed(argvs))
            for name in names:
                out[name].append(watched(argvs[name], env, cwd))
    return out


def flat_memory(minutes: float) -> dict:
    """The main process's RSS every 10 s while it records a job logging 1,000 points/s."""
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="llamamon-flat-") as tmp:
        env, cwd = child_env(tmp), Path(tmp)
        argv = [py, "-m", "llamamon", "record", "-q", "--no-gpu", "--interval", "0.1", "--metrics-dir"]
        argv += [str(cwd / "m"), "--", py, "-c", LOGGING_JOB]
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples: list[tuple[float, int]] = []
        start = time.monotonic()
        try:
            while time.monotonic() - start < minutes * 60:
                time.sleep(10.0)  # first sample at 10 s: at 0 s the process may not have exec'd python yet
                rss = _proc_kib(proc.pid, "status", "VmRSS:")
                if rss is not None:
                    samples.append((time.monotonic() - start, rss))
        finally:
            for pid in tree(proc.pid)[1:]:
                with contextlib.suppress(OSError):
                    if b"llamamon.log(" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, 15)  # end the job; record then ends as it does after any job
            proc.wait(timeout=120)
    after_first = [kib for t, kib in samples if t >= 60.0] or [samples[-1][1]]
    return {"samples": samples, "growth_kib": after_first[-1] - after_first[0]}


def import_rss() -> dict[str, int]:
    out = {}
    for stmt in IMPORTS:
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report this bench's own peak
        code = f"{stmt}\nprint([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0])"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        out[stmt] = int(done.stdout.strip() or 0)
    return out


def run(quick: bool = False, repeat: int | None = None, flat_minutes: float | None = None) -> list:
    from bench.results import Figure, load1, median, median_ratio

    repeat = repeat or (3 if quick else 5)
    flat_minutes = flat_minutes or (2.0 if quick else 30.0)
    before = load1()
    data = ten_second_runs(repeat, 10.0)
    load = (before, load1())
    imports = import_rss()
    owners = "; ".join(f"`python -c '{k}'` {v / 1024:.1f} MiB" for k, v in imports.items())
    lm, ps = data["llamamon"], data["psrecord"]
    cpu_ratio = median_ratio([(a["cpu_s"], b["cpu_s"]) for a, b in zip(lm, ps, strict=True)])
    roles = sorted({role for run in lm for role in run["peak_kib"]})
    role_mib = {role: median([run["peak_kib"].get(role, 0) for run in lm]) / 1024 for role in roles}
    summed = median([run["summed_kib"] for run in lm]) / 1024
    pss = median([run["pss_summed_kib"] for run in lm]) / 1024
    ps_summed = median([run["summed_kib"] for run in ps]) / 1024
    flat = flat_memory(flat_minutes)
    figures = [
        Figure(
            name="Recorder weight: CPU of `record --interval 0.1 -- sleep 10`, all in",
            unit="s",
            llamamon=median([r["cpu_s"] for r in lm]),
            peers={"psrecord --interval 0.1 --include-children": median([r["cpu_s"] for r in ps])},
            ratios={"psrecord": cpu_ratio},
            target="<= 1.0x psrecord",
            met=cpu_ratio <= 1.0,
            runs=repeat,
            load=load,
            note="user+sys of the monitor and every process it reaped (wait4), start-up and exit included",
            detail={"llamamon": lm, "psrecord": ps},
        ),
        Figure(
            name="Recorder weight: peak memory of the recorder's processes, summed",
            unit="MiB",
            llamamon=summed,
            peers={"psrecord (one process)": ps_summed},
            ratios={"psrecord": summed / ps_summed if ps_summed else float("nan")},
            target="<= 40 MiB summed",
            met=summed <= 40.0,
            runs=repeat,
            load=load,
            note="per process (median VmHWM): "
            + ", ".join(f"{role} {mib:.1f} MiB" for role, mib in role_mib.items())
            + f"; summed PSS peak {pss:.1f} MiB. What owns it (VmHWM of python importing it alone): {owners}",
            detail={"per_role_mib": role_mib, "pss_summed_mib": pss, "import_rss_kib": imports},
        ),
        Figure(
            name=f"Recorder weight: main process RSS growth over {flat_minutes:g} min at 1,000 points/s",
            unit="MiB",
            llamamon=flat["growth_kib"] / 1024,
            target="<= 2 MiB after the first minute" + (" (a short run: --quick)" if quick else ""),
            met=flat["growth_kib"] <= 2048,
            runs=1,
            note="RSS every 10 s (MiB): " + ", ".join(f"{t:.0f}s {kib / 1024:.1f}" for t, kib in flat["samples"]),
            detail=flat,
        ),
    ]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--flat-minutes", type=float, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    for figure in run(args.quick, args.repeat, args.flat_minutes):
        print(figure.summary())


if __name__ == "__main__":
    main()
