"""The training/inference examples run and record what they claim (shortened with their own options)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from llamamon.collectors.stdout import OutputParser
from tests.conftest import REPO, llamamon_env, run_llamamon
from tests.test_api_log import all_rows


def run_example(name: str, *args: str, cwd) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        cwd=cwd,
        env=llamamon_env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result


def test_train_example_logs_loss_lr_and_validation(tmp_path):
    result = run_example("train.py", "--steps", "120", "--eval-every", "60", cwd=tmp_path)
    assert b"done: 120 steps" in result.stdout
    rows = all_rows(tmp_path / ".metrics")
    losses = sorted((r.step, r.value) for r in rows if r.metric == "loss")
    assert [s for s, _ in losses] == list(range(1, 121))
    assert sum(v for _, v in losses[-20:]) < sum(v for _, v in losses[:20])  # it learns
    assert [r.step for r in rows if r.metric == "validation_loss"] == [60, 120]
    lrs = [r.value for r in sorted((r for r in rows if r.metric == "learning_rate"), key=lambda r: r.step)]
    assert max(lrs) > lrs[-1]  # the schedule decays


def test_recorded_train_example_fires_the_same_alerts_live_as_alerts_test(tmp_path):
    # The README's first command with the shipped rules: what `record` fires live is what the CI gate finds.
    # (It once ended every run with a live loss_plateau that `alerts test` did not find.)
    script = str(REPO / "examples" / "train.py")
    done = run_llamamon(
        "record", "--no-gpu", "--", sys.executable, script, "--steps", "600", "--eval-every", "100", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr.decode()
    live = set(re.findall(r"alert FIRING \w+ (\w+)", done.stderr.decode()))
    gate = run_llamamon("alerts", "test", "--latest", "--json", cwd=tmp_path)
    assert gate.returncode in (0, 1), gate.stderr.decode()
    assert live == {a["rule"] for a in json.loads(gate.stdout)}


def test_serve_example_records_requests_and_derived_metrics(tmp_path):
    result = run_example("serve.py", "--requests", "120", "--interval", "0.5", cwd=tmp_path)
    assert b"served 120 requests" in result.stdout
    rows = all_rows(tmp_path / ".metrics")
    assert sum(r.metric == "inference_latency" for r in rows) == 120
    metrics = {r.metric for r in rows}
    assert {"batch_throughput", "token_throughput", "cache_hit_rate", "error_rate", "batch_queue_size"} <= metrics
    assert max(r.value for r in rows if r.metric == "cache_hit_rate") > 0


def test_recorded_serve_example_shows_its_queue_growing(tmp_path):
    # Its docstring says arrivals outpace the workers; it once served everything at once with a queue of 0.
    import polars as pl

    from llamamon.store.reader import scan

    script = str(REPO / "examples" / "serve.py")
    args = ("--requests", "160", "--interval", "0.5")
    done = run_llamamon("record", "--no-gpu", "--interval", "0.5", "--", sys.executable, script, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert b"served 160 requests" in done.stdout
    queue = (
        scan(tmp_path / ".metrics", groups=["inference"])
        .filter(pl.col("metric") == "batch_queue_size")
        .sort("time")
        .collect()
    )
    values = queue["value"].to_list()
    peak = values.index(max(values))
    assert max(values) >= 15, values  # 160 requests at 40/s against ~30/s served: about 40 waiting at the end
    assert peak >= 3, values  # it grows over several intervals, not in one burst
    assert values[0] <= max(values) / 3, values
    assert values[-1] < max(values), values  # then the workers drain it


def test_hf_trainer_log_example_lines_are_recognised(tmp_path):
    for extra in ((), ("--string-numbers",)):
        result = run_example("hf_trainer_log.py", "--steps", "100", *extra, cwd=tmp_path)
        parser = OutputParser()
        samples = parser.feed(result.stdout) + parser.close()
        names = {s.metric for s in samples}
        assert {"loss", "learning_rate", "grad_norm", "epoch", "validation_loss"} <= names
        assert parser.metric_lines == 10 + 2 + 1
        assert OutputParser().feed(result.stderr) == []  # the progress bar is not metrics
