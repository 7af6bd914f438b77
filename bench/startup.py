"""Start-up: wall time of ``llamamon --help`` and ``llamamon record -- true`` against bare Python, same run.

    python -m bench.startup [--quick] [--repeat 10] [--python PATH]

Rounds interleave the five commands (``python -c pass``, ``python -c "import click"``, ``python -c "import
click, asyncio, psutil, yaml"`` (the libraries ``record`` needs, the floor under llamamon's own code),
``llamamon --help``, ``llamamon record -- true``) so a burst of load from neighbours stretches all of them alike; each
figure is the median over rounds, each ratio the median of per-round ratios. The CPU time of each
command (user+sys, its whole process tree) is kept next to the wall time: it moves much less with load.
``llamamon`` runs as ``python -m llamamon`` from this checkout, in an empty folder (default config),
with its bytecode cached as after ``pip install`` (which compiles every module): this environment sets
PYTHONDONTWRITEBYTECODE, which would charge every run for compiling llamamon from source, so the children
run without it and with PYTHONPYCACHEPREFIX in a temporary folder (the checkout stays clean).
``--python`` times another interpreter (a venv with this checkout installed), e.g. to see what a newer
CPython's faster imports and class creation change.
Targets (issue 20): ``--help`` < 100 ms; ``record -- true`` < 200 ms wall and <= 200 ms CPU.
``--profile`` prints where ``record -- true`` spends its time: in-process timers around the recorder's
phases (imports, store opening, collectors, ticks, the final flush) and what is left outside ``main()``
(interpreter start-up and shutdown).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs `llamamon record -q -- true` in-process with timers around the recorder's phases; prints one JSON
# list of (phase, wall ms, process CPU ms) at each boundary, at exit. argv: metrics folder.
PHASES = r"""
import json, sys, time
T0w, T0c = time.perf_counter(), time.process_time()
marks = []
def stamp(msg):
    marks.append((msg, (time.perf_counter() - T0w) * 1e3, (time.process_time() - T0c) * 1e3))
import llamamon.cli
stamp("imports: llamamon.cli")
from llamamon.runtime import recorder
from llamamon.store import writer
stamp("imports: runtime.recorder")
def wrap(owner, name, label, is_async=False):
    fn = getattr(owner, name)
    if is_async:
        async def timed(*a, **k):
            stamp("> " + label); r = await fn(*a, **k); stamp("< " + label); return r
    else:
        def timed(*a, **k):
            stamp("> " + label); r = fn(*a, **k); stamp("< " + label); return r
    setattr(owner, name, timed)
wrap(recorder.Recorder, "__init__", "Recorder(): open_store, run metadata")
wrap(recorder.Recorder, "_open_collectors", "open collectors (psutil, NVML probe)", True)
wrap(recorder.Recorder, "_tick", "tick", True)
wrap(writer.StoreWriter, "flush", "final flush (store.flush_file)")
from llamamon.runtime import parquet_route
wrap(parquet_route.ParquetRoute, "finish", "run's end: fold job journals, compact when cheap")
def report():  # main() ends the process itself (after the exit handlers), as the real command does
    stamp("main() returned")
    print(json.dumps(marks), flush=True)
import atexit
atexit.register(report)
sys.argv = ["llamamon", "record", "-q", "--metrics-dir", sys.argv[1], "--", "true"]
try:
    llamamon.cli.main()
except SystemExit:
    pass
"""


# The libraries `record` cannot start without, imported and nothing else: the floor under llamamon's own code.
DEPENDENCIES = "python -c 'import click, asyncio, psutil, yaml'"


def commands(folder: Path, py: str) -> dict[str, list[str]]:
    return {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import click'": [py, "-c", "import click"],
        DEPENDENCIES: [py, "-c", "import click, asyncio, psutil, yaml"],
        "llamamon --help": [py, "-m", "llamamon", "--help"],
        "llamamon record -- true": [py, "-m", "llamamon", "record", "--metrics-dir", str(folder / "m"), "--", "true"],
    }


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and everything it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def child_env(tmp: str) -> dict[str, str]:
    """The environment of a timed child: this checkout first on the path, bytecode cached under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAMON_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
    return env


def measure(repeat: int, py: str) -> dict[str, list[tuple[float, float]]]:
    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        env = child_env(tmp)
        cmds = commands(Path(tmp), py)
        for argv in cmds.values():  # warm the page cache and __pycache__ once, unmeasured
            timed(argv, env, Path(tmp))
        out: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        names = list(cmds)
        for r in range(repeat):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                out[name].append(timed(cmds[name], env, Path(tmp)))
    return out


# What happens between two timed phases (read off recorder.py and cli/record.py).
GAPS = {
    ("process start", "imports: llamamon.cli"): "import llamamon.cli (click, the command modules)",
    ("imports: llamamon.cli", "imports: runtime.recorder"): "import runtime.recorder (asyncio, psutil, config + yaml)",
    ("imports: runtime.recorder", "> Recorder(): open_store, run metadata"): "click parsing, load_config",
    (
        "< Recorder(): open_store, run metadata",
        "> open collectors (psutil, NVML probe)",
    ): "spawn the job and the keeper, write_run, start the sampler thread",
    ("< tick", "> tick"): "stop requested (the job is done)",
    ("< tick", "> final flush (store.flush_file)"): "final alert evaluation, close the collectors",
    ("< final flush (store.flush_file)", "> run's end: fold job journals, compact when cheap"): "join the sampler",
    ("< run's end: fold job journals, compact when cheap", "main() returned"): "end the child, write_run",
}


def phases(repeat: int, py: str = sys.executable) -> list[tuple[str, float, float]]:
    """Median (wall ms, CPU ms) spent in each phase of `record -- true`, plus the process around it."""
    import json
    import statistics

    runs = []
    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        env = child_env(tmp)
        subprocess.run([py, "-c", PHASES, str(Path(tmp) / "warm")], env=env, cwd=tmp, capture_output=True)
        for k in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(
                [py, "-c", PHASES, str(Path(tmp) / f"m{k}")],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                check=True,
            )
            wall = (time.perf_counter() - start) * 1e3
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1e3
            runs.append((wall, cpu, json.loads(done.stdout.strip().splitlines()[-1])))
    labels = [m[0] for m in runs[0][2]]
    runs = [r for r in runs if [m[0] for m in r[2]] == labels]  # same phases (e.g. number of ticks) only
    out = []
    for i, label in enumerate(labels):
        before = labels[i - 1] if i else "process start"
        if label.startswith("< ") and before == "> " + label[2:]:
            name = label[2:]
        else:
            name = GAPS.get((before, label), f"between '{before.lstrip('<> ')}' and '{label.lstrip('<> ')}'")
        walls = [r[2][i][1] - (r[2][i - 1][1] if i else 0.0) for r in runs]
        cpus = [r[2][i][2] - (r[2][i - 1][2] if i else 0.0) for r in runs]
        out.append((name, statistics.median(walls), statistics.median(cpus)))
    last = [(r[0] - r[2][-1][1], r[1] - r[2][-1][2]) for r in runs]
    out.append(
        (
            "interpreter start-up and shutdown (outside main)",
            statistics.median(w for w, _ in last),
            statistics.median(c for _, c in last),
        )
    )
    return out


def run(quick: bool = False, repeat: int | None = None, py: str = sys.executable) -> list:
    from bench.results import Figure, load1, median, median_ratio

    repeat = repeat or (3 if quick else 10)
    before = load1()
    data = measure(repeat, py)
    load = (before, load1())
    profile = phases(3 if quick else 5, py)
    ms = {name: median([w for w, _ in runs]) * 1e3 for name, runs in data.items()}
    cpu_ms = {name: median([c for _, c in runs]) * 1e3 for name, runs in data.items()}
    figures = []
    # (command, wall limit ms, CPU limit ms or None)
    for name, limit, cpu_limit in (("llamamon --help", 100.0, None), ("llamamon record -- true", 200.0, 200.0)):
        ratios = {
            base: median_ratio([(a[0], b[0]) for a, b in zip(data[name], data[base], strict=True)])
            for base in ("python -c pass", "python -c 'import click'", DEPENDENCIES)
        }
        figures.append(
            Figure(
                name=f"Start-up: `{name}` wall time",
                unit="ms",
                llamamon=ms[name],
                peers={base: ms[base] for base in ("python -c pass", "python -c 'import click'", DEPENDENCIES)},
                ratios=ratios,
                target=f"< {limit:.0f} ms" + (f" wall and <= {cpu_limit:.0f} ms CPU" if cpu_limit else ""),
                met=ms[name] < limit and (cpu_limit is None or cpu_ms[name] <= cpu_limit),
                runs=repeat,
                load=load,
                note=f"CPU time (user+sys, median): {name} {cpu_ms[name]:.0f} ms; "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in cpu_ms.items() if k.startswith("python"))
                + (
                    ". Where `record -- true` spends it (median wall / CPU ms per phase, in-process timers): "
                    + "; ".join(f"{label} {w:.0f}/{c:.0f}" for label, w, c in profile)
                    if "record" in name
                    else ""
                ),
                detail={
                    "wall_ms": {k: [w * 1e3 for w, _ in v] for k, v in data.items()},
                    "cpu_ms_median": cpu_ms,
                    **({"phases_wall_cpu_ms": profile} if "record" in name else {}),
                },
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="only the phases of `record -- true`")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter the timed commands run on (one with llamamon installed)",
    )
    args = parser.parse_args()
    if args.profile:
        for label, wall, cpu in phases(args.repeat or 5, args.python):
            print(f"{label:<70} {wall:7.0f} ms wall {cpu:7.0f} ms CPU")
        return
    for fig in run(args.quick, args.repeat, args.python):
        print(f"{fig.name}: {fig.llamamon:.0f} ms; {fig.peers}; ratios {fig.ratios}; met {fig.met}; {fig.note}")


if __name__ == "__main__":
    main()
