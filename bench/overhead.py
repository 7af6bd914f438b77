"""What recording costs: CPU per sample of `llamamon record` against a bare psutil loop, and `--help` time.

    python bench/overhead.py [--repeat 3]

The short form of two benchmarks of the suite (``python -m bench`` runs them in full, with the peers):
``bench/recorder_cost.py`` for the recorder (a busy child recorded at --interval 1 and 0.1; the monitor's
CPU after a warm-up, per sample it stored, against a bare loop making the same psutil calls in the same
run) and ``bench/startup.py`` for ``llamamon --help`` (against ``python -c "import click"``).
Targets: recorder <= 1.5x the bare loop per sample; --help < 150 ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians of per-round ratios")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from bench import recorder_cost, startup
    from bench.results import median, median_ratio

    for interval, warmup, window in ((1.0, 2.0, 10.0), (0.1, 1.5, 5.0)):
        pairs = []
        for _ in range(args.repeat):
            runs = {}
            for tool in ("llamamon", "floor"):
                with tempfile.TemporaryDirectory(prefix="llamamon-bench-") as tmp:
                    cpu, samples = recorder_cost.measure(tool, interval, warmup, window, Path(tmp))
                runs[tool] = cpu / max(samples, 1)
            pairs.append((runs["llamamon"], runs["floor"]))
        print(
            f"--interval {interval:g}: recorder {median([a for a, _ in pairs]) * 1e3:.2f} ms CPU/sample; "
            f"bare psutil loop {median([b for _, b in pairs]) * 1e3:.2f} ms; "
            f"ratio {median_ratio(pairs):.2f}x (target <= 1.5x)"
        )
    times = startup.measure(max(args.repeat, 5))
    help_ms = median([w for w, _ in times["llamamon --help"]]) * 1e3
    click_ms = median([w for w, _ in times["python -c 'import click'"]]) * 1e3
    help_cpu = median([c for _, c in times["llamamon --help"]]) * 1e3
    print(
        f"llamamon --help {help_ms:.0f} ms wall, {help_cpu:.0f} ms CPU; python -c 'import click' {click_ms:.0f} ms "
        f"(target < 150 ms)"
    )


if __name__ == "__main__":
    main()
