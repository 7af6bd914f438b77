"""`python -m bench --help` runs: the benchmark suite stays importable (benchmarks themselves are not tests)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, llamamon_env


def test_bench_help_lists_every_benchmark():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=REPO,
        env=llamamon_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python -m bench" in done.stdout
    for name in ("recorder", "weight", "logging", "storage", "read", "startup", "scripts"):
        assert name in done.stdout


def test_bench_suites_import():
    done = subprocess.run(
        [sys.executable, "-c", "from bench.run_all import suites; print(sorted(suites()))"],
        cwd=REPO,
        env=llamamon_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == str(
        sorted(["recorder", "weight", "logging", "storage", "read", "startup", "scripts"])
    )
