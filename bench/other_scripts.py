"""Figures owned by the other benchmark scripts, taken into the one results table without redoing them.

* Logging cost: ``bench/log_api.py`` (``run_child``): µs per call of ``llamamon.log`` in the training
  thread against tensorboardX ``add_scalar`` and a ``list.append`` floor, each in a fresh interpreter,
  with the loop's wall time and the hot path alone (flush deferred) beside it; and CPU per point all in.
* Alerts: ``bench/alerts.py``; report: ``bench/report.py`` — run as subprocesses; their figures are
  read from the JSON line they print with ``--json``.

A script that is not there yet (or lacks what is read from it) gives a row saying so, never a guess.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def logging_cost(quick: bool) -> list:
    from bench.results import Figure, load1, median, median_ratio, unavailable

    name = "Logging cost per call in the training thread (single-metric calls)"
    all_in_name = "Logging CPU per point, all in (flush and exit included)"
    target = "< 1 µs per call in the training thread"
    all_in_target = "< 3 µs CPU per point"
    if not (REPO / "bench" / "log_api.py").exists():
        return [unavailable(name, "bench/log_api.py is not on this branch yet", target)]
    try:
        log_api = importlib.import_module("bench.log_api")
        run_child = log_api.run_child
    except (ImportError, AttributeError) as exc:
        return [unavailable(name, f"bench/log_api.py has no usable run_child ({exc})", target)]
    try:
        import tensorboardX  # noqa: F401

        has_tb = True
    except ImportError:
        has_tb = False
    # Why 3,000,000 points and not the 1,000,000: a million calls take ~0.8 s, so the 1 s background
    # flush fell inside the loop in some runs and after it in others (0.72 against 1.14 us in one suite run).
    # Three million put two or more flushes inside every run: the steady state of a loop that only logs.
    points = 300_000 if quick else 3_000_000
    tb_points = 10_000 if quick else 100_000
    repeat = 1 if quick else 3
    before = load1()
    per_run = []
    for _ in range(repeat):
        one = {}
        for lib in ("list.append", "llamamon.log", "llamamon.log deferred", *(("tensorboardX",) if has_tb else ())):
            n = tb_points if lib == "tensorboardX" else points
            try:
                wall, thread, cpu = run_child(lib, 1, n, empty=False)
                idle_cpu = run_child(lib, 1, n, empty=True)[2] if lib in ("llamamon.log", "tensorboardX") else 0.0
            except SystemExit as exc:  # run_child's way of saying the child failed
                last = str(exc).strip().splitlines()[-1:] or ["?"]
                return [unavailable(name, f"bench/log_api.py: {lib} failed ({last[0][:200]})", target)]
            one[lib] = {
                "wall": wall / n * 1e6,
                "thread": thread / n * 1e6,
                "all_in": max(cpu - idle_cpu, 0.0) / n * 1e6,
            }
        per_run.append(one)

    def med(lib: str, key: str) -> float:
        return median([r[lib][key] for r in per_run])

    def ratio(lib: str, key: str) -> float:
        return median_ratio([(r["llamamon.log"][key], r[lib][key]) for r in per_run])

    thread = med("llamamon.log", "thread")
    wall = med("llamamon.log", "wall")
    all_in = med("llamamon.log", "all_in")
    peers = {"list.append (thread CPU)": med("list.append", "thread")}
    ratios = {"list.append": ratio("list.append", "thread")}
    if has_tb:
        peers["tensorboardX add_scalar (thread CPU)"] = med("tensorboardX", "thread")
        ratios["tensorboardX"] = ratio("tensorboardX", "thread")
    peers["llamamon.log wall per call, loop that only logs"] = wall
    peers["llamamon.log wall per call, flush deferred"] = med("llamamon.log deferred", "wall")
    no_tb = "" if has_tb else "; tensorboardX not installed (pip install '.[bench]')"
    return [
        Figure(
            name=name,
            unit="µs",
            llamamon=thread,
            peers=peers,
            ratios=ratios,
            target=target,
            met=thread < 1.0 and (not has_tb or thread < peers["tensorboardX add_scalar (thread CPU)"]),
            runs=repeat,
            load=(before, load1()),
            note=(
                f"bench/log_api.py run_child: CPU time (time.thread_time) of the thread running the logging loop, per "
                f"call, in a fresh interpreter, {points:,} points ({tb_points:,} for tensorboardX), so that two or "
                f"more background flushes run during the loop. The flusher's own CPU is not in this figure; it is in "
                f"the all-in row. Wall time per call of the same loop is {wall:.2f} µs: in a loop that does nothing "
                f"but log, the GIL serializes the flush with the loop, so the wall time is the two added; in a "
                f"training step the flush mostly runs while CUDA, numpy or I/O has released the GIL" + no_tb
            ),
            detail={"per_run_us": per_run},
        ),
        Figure(
            name=all_in_name,
            unit="µs",
            llamamon=all_in,
            peers={"tensorboardX add_scalar": med("tensorboardX", "all_in")} if has_tb else {},
            ratios={"tensorboardX": ratio("tensorboardX", "all_in")} if has_tb else {},
            target=all_in_target,
            met=all_in < 3.0,
            runs=repeat,
            load=(before, load1()),
            note=(
                "bench/log_api.py run_child: the child's CPU (every thread, the flush at exit included, from "
                "getrusage) minus that of the same interpreter running an empty loop with the same imports, per "
                "point" + no_tb
            ),
        ),
    ]


def _script_json(script: str, args: list[str], timeout: float) -> dict | str:
    """The last JSON object line a script prints with ``--json``, or why there is none."""
    path = REPO / "bench" / script
    if not path.exists():
        return f"bench/{script} is not on this branch yet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAMON_")}
    env["PYTHONPATH"] = str(REPO)
    try:
        done = subprocess.run(
            [sys.executable, str(path), "--json", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"bench/{script} took longer than {timeout:.0f} s"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"bench/{script} printed no JSON line (exit {done.returncode}: {tail[0][:200]})"


def script_figures(quick: bool) -> list:
    """Rows from bench/alerts.py, bench/report.py and bench/many_hosts.py (their --json line: a list of figure dicts)."""
    from bench.results import Figure, load1, unavailable

    figures = []
    days = "1" if quick else "7"
    for script, title, args in (
        # --keep: the synthetic store is generated once into bench/out/ (gitignored) and reused.
        (
            "alerts.py",
            "Alerts: evaluate the rules over the store",
            ["--days", days, "--keep", f"bench/out/alerts-{days}d"],
        ),
        ("report.py", "Report: `llamamon report --html` over the store", ["--days", days, "--keep"]),
        (
            "many_hosts.py",
            "Many hosts: `report --group` and `alerts test --group` over a bucket",
            ["--hosts", "8", "--ranks", "2", "--hours", "1"] if quick else ["--keep"],
        ),
    ):
        before = load1()
        got = _script_json(script, args, timeout=900)
        if isinstance(got, str):
            figures.append(unavailable(title, got))
            continue
        for fig in got.get("figures", []):
            figures.append(
                Figure(
                    name=fig.get("name", title),
                    unit=fig.get("unit", ""),
                    llamamon=fig.get("llamamon"),
                    peers=fig.get("peers", {}),
                    ratios=fig.get("ratios", {}),
                    target=fig.get("target", ""),
                    met=fig.get("met"),
                    runs=fig.get("runs", 1),
                    load=(before, load1()),
                    note=f"from bench/{script} {' '.join(args)}" + (f"; {fig['note']}" if fig.get("note") else ""),
                )
            )
    return figures
