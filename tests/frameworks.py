"""Helpers for the framework tests (tests/test_frameworks_*.py): real PyTorch and Transformers jobs, from
tests/jobs/, recorded by ``llamamon record`` in a subprocess and read back from the store."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import polars as pl

from llamamon.store.reader import scan
from tests.conftest import REPO, llamamon_env, missing_integration, run_llamamon

JOBS = REPO / "tests" / "jobs"

# No hub, no telemetry, no cache in the home folder; one thread per process on a 2-core machine.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def require_modules(*names: str) -> None:
    """Skip with a reason when a framework is not installed, or fail where CI requires it."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if not missing:
        return
    missing_integration(
        f"{', '.join(missing)} not installed (python -m pip install -e '.[frameworks]'; .ci/run installs it)"
    )


def record_job(cwd: Path, *command: str, options: tuple[str, ...] = (), timeout: float = 180):
    """``llamamon record [options] -- command`` in ``cwd``; (result, run metadata, every stored row)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = llamamon_env(HF_HOME=str(cwd / "hf-home"), **OFFLINE)
    result = run_llamamon(
        "record", "--interval", "0.2", "--no-gpu", *options, "--", *command, cwd=cwd, env=env, timeout=timeout
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    runs = sorted((cwd / ".metrics" / "runs").glob("*.json"))
    assert len(runs) == 1, runs  # the job's metrics joined the recorder's run
    run = json.loads(runs[0].read_text())
    rows = scan(cwd / ".metrics", runs=[run["id"]]).collect()
    return result, run, rows


def python_job(name: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, str(JOBS / name), *args)


def stored(rows: pl.DataFrame, metrics: set[str]) -> Counter:
    """(metric, step, value, labels) of the stored rows of these metrics, as a multiset."""
    picked = rows.filter(pl.col("metric").is_in(sorted(metrics)))
    return Counter(picked.select("metric", "step", "value", "labels").iter_rows())


def training_names(rows: pl.DataFrame) -> set[str]:
    return set(rows.filter(pl.col("group") == "training")["metric"])
