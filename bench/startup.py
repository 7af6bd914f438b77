"""Start-up: wall time of ``llamamon --help`` and ``llamamon record -- true`` against bare Python, same run.

    python -m bench.startup [--quick] [--repeat 10]

Rounds interleave the four commands (``python -c pass``, ``python -c "import click"``, ``llamamon --help``,
``llamamon record -- true``) so a burst of load from neighbours stretches all of them alike; each
figure is the median over rounds, each ratio the median of per-round ratios. The CPU time of each
command (user+sys, its whole process tree) is kept next to the wall time: it moves much less with load.
``llamamon`` runs as ``python -m llamamon`` from this checkout, in an empty folder (default config).
Targets: ``--help`` < 150 ms, ``record -- true`` < 400 ms.
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


def commands(folder: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import click'": [py, "-c", "import click"],
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


def measure(repeat: int) -> dict[str, list[tuple[float, float]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAMON_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
        cmds = commands(Path(tmp))
        for argv in cmds.values():  # warm the page cache and __pycache__ once, unmeasured
            timed(argv, env, Path(tmp))
        out: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        names = list(cmds)
        for r in range(repeat):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                out[name].append(timed(cmds[name], env, Path(tmp)))
    return out


def run(quick: bool = False, repeat: int | None = None) -> list:
    from bench.results import Figure, load1, median, median_ratio

    repeat = repeat or (3 if quick else 10)
    before = load1()
    data = measure(repeat)
    load = (before, load1())
    ms = {name: median([w for w, _ in runs]) * 1e3 for name, runs in data.items()}
    cpu_ms = {name: median([c for _, c in runs]) * 1e3 for name, runs in data.items()}
    figures = []
    for name, limit in (("llamamon --help", 150.0), ("llamamon record -- true", 400.0)):
        ratios = {
            base: median_ratio([(a[0], b[0]) for a, b in zip(data[name], data[base], strict=True)])
            for base in ("python -c pass", "python -c 'import click'")
        }
        figures.append(
            Figure(
                name=f"Start-up: `{name}` wall time",
                unit="ms",
                llamamon=ms[name],
                peers={
                    "python -c pass": ms["python -c pass"],
                    "python -c 'import click'": ms["python -c 'import click'"],
                },
                ratios=ratios,
                target=f"< {limit:.0f} ms",
                met=ms[name] < limit,
                runs=repeat,
                load=load,
                note=f"CPU time (user+sys, median): {name} {cpu_ms[name]:.0f} ms; "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in cpu_ms.items() if k.startswith("python")),
                detail={"wall_ms": {k: [w * 1e3 for w, _ in v] for k, v in data.items()}, "cpu_ms_median": cpu_ms},
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    for fig in run(args.quick, args.repeat):
        print(f"{fig.name}: {fig.llamamon:.0f} ms; {fig.peers}; ratios {fig.ratios}; met {fig.met}; {fig.note}")


if __name__ == "__main__":
    main()
