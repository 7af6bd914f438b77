"""One figure of the results table, and how the table is written (Markdown for people, JSON for tools).

A figure is a median over several runs; every ratio is computed inside one run (llamamon and the peer
measured back to back) and then the median of those per-run ratios is reported, because the machine is
shared and noisy: a ratio of two medians taken minutes apart would mostly measure the neighbours.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Figure:
    name: str
    unit: str
    llamamon: float | None
    peers: dict[str, float | None] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # label -> median of per-run llamamon/peer
    target: str = ""
    met: bool | None = None
    runs: int = 0
    load: tuple[float, float] | None = None  # 1-minute load average before and after measuring
    note: str = ""
    detail: dict = field(default_factory=dict)

    def summary(self) -> str:
        """Two lines for a benchmark run alone: the figure with its peers and ratios, then the note."""
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in self.ratios.items())
        head = (
            f"{self.name}: {self.llamamon:.4g} {self.unit}; peers {self.peers}; ratios {ratios or '-'}; met {self.met}"
        )
        return f"{head}\n  {self.note}" if self.note else head


def standalone(run: Callable[..., list[Figure]], doc: str, *, repeat: bool = True) -> None:
    """``python -m bench.<name> [--quick] [--repeat N]``: one benchmark alone, its figures printed.

    ``python -m bench`` runs them all and writes the table; this is for working on one of them.
    """
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    if repeat:
        parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    for fig in run(args.quick, args.repeat) if repeat else run(args.quick):
        print(fig.summary())


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """Median of per-run ratios a/b (pairs measured in the same run)."""
    return statistics.median(a / b for a, b in pairs if b > 0)


def load1() -> float:
    return os.getloadavg()[0]


def unavailable(name: str, why: str, target: str = "") -> Figure:
    return Figure(name=name, unit="", llamamon=None, target=target, met=None, note=f"not yet available: {why}")


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[met]


def environment() -> dict:
    return {
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def to_markdown(figures: list[Figure], env: dict, command: str, elapsed: float) -> str:
    lines = [
        "# llamamon benchmark results",
        "",
        f"`{command}` on {env['when_utc']}: Python {env['python']}, {env['cpus']} CPUs, {env['platform']}; "
        f"whole suite {elapsed:.0f} s; load average at the end {', '.join(f'{x:.2f}' for x in env['load_average'])}.",
        "",
        "Each figure is the median of `runs` runs; each ratio is the median of ratios measured within one run. "
        "`load` is the 1-minute load average before → after the figure was measured (2 cores shared with "
        "other work: wall times stretch with it). A target not met is reported as measured.",
        "",
        "| figure | llamamon | peers (same run) | ratio | target | met? | runs | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        peers = "; ".join(f"{k}: {_num(v, f.unit)}" for k, v in f.peers.items()) or "—"
        ratios = "; ".join(f"{v:.2f}x {k}" for k, v in f.ratios.items()) or "—"
        load = f"{f.load[0]:.1f} → {f.load[1]:.1f}" if f.load else "—"
        lines.append(
            f"| {f.name} | {_num(f.llamamon, f.unit)} | {peers} | {ratios} | {f.target or '—'} | {_met(f.met)} "
            f"| {f.runs or '—'} | {load} |"
        )
    notes = [f"- **{f.name}**: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


def write(folder: Path, figures: list[Figure], command: str, elapsed: float) -> None:
    env = environment()
    payload = {"command": command, "environment": env, "elapsed_s": round(elapsed, 1)}
    payload["figures"] = [asdict(f) for f in figures]
    (folder / "results.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    (folder / "RESULTS.md").write_text(to_markdown(figures, env, command, elapsed))
