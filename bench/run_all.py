"""Run every benchmark and write bench/RESULTS.md and bench/results.json (same numbers, two forms).

    python -m bench                 # the full suite: a few minutes
    python -m bench --quick         # a smoke run (well under the full suite; figures are rough)
    python -m bench --only startup --only storage

A full run writes bench/RESULTS.md and bench/results.json (committed); --quick and --only runs write to
bench/out/ (gitignored) unless --out says otherwise.

A benchmark that fails is a row saying why, not a crashed suite: the others still report.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def suites() -> dict[str, Callable[[bool], list]]:
    from bench import other_scripts, read_speed, recorder_cost, recorder_weight, startup, storage

    return {
        "recorder": recorder_cost.run,
        "weight": recorder_weight.run,
        "logging": other_scripts.logging_cost,
        "storage": storage.run,
        "read": read_speed.run,
        "startup": startup.run,
        "scripts": other_scripts.script_figures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run; figures are rough")
    parser.add_argument(
        "--only",
        action="append",
        choices=["recorder", "weight", "logging", "storage", "read", "startup", "scripts"],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for RESULTS.md and results.json (default: bench/ for a full run, bench/out/ for a "
        "--quick or --only run, so smoke figures never replace the committed ones)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # this checkout's llamamon, whatever is installed
    from bench.results import Figure, write

    command = "python -m bench" + (" --quick" if args.quick else "")
    command += "".join(f" --only {name}" for name in args.only or ())
    started = time.monotonic()
    figures: list[Figure] = []
    for name, fn in suites().items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            got = fn(args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            traceback.print_exc()
            got = [Figure(name=f"{name} benchmark", unit="", llamamon=None, note=f"failed: {exc!r}")]
        for fig in got:
            print(f"   {fig.name}: {fig.llamamon} {fig.unit} met={fig.met}", file=sys.stderr, flush=True)
        print(f"   ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        figures.extend(got)
    elapsed = time.monotonic() - started
    if args.out is None:
        args.out = REPO / "bench" / ("out" if args.quick or args.only else "")
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, figures, command, elapsed)
    print(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'} ({elapsed:.0f} s)", file=sys.stderr)
