"""TrainingMonitor and InferenceMonitor, run in fresh interpreters and checked through the journal they write."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from llamamon.monitors import Request, derive, latency_summary, percentile
from tests.test_api_log import all_rows, run_script

FAST_CONFIG = "monitoring:\n  update_frequency: 0.2\n  thresholds:\n    inference:\n      timeout: 0.05\n"


def test_percentiles_match_linear_interpolation():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile([7.0], 0.9) == 7.0
    summary = latency_summary(values)
    assert summary["count"] == 100
    assert summary["max"] == 100.0
    assert summary["mean"] == pytest.approx(50.5)
    assert latency_summary([])["p95"] is None


def test_derive_rates_per_interval():
    reqs = []
    for i in range(10):
        r = Request(tokens_in=5)
        r.tokens_out = 4
        r.cache_hit = i < 3
        r.error = i == 9
        r.timed_out = i >= 8
        reqs.append(r)
    got = derive(reqs, elapsed=2.0)
    assert got == {
        "batch_throughput": 5.0,
        "token_throughput": 20.0,
        "cache_hit_rate": 0.3,
        "error_rate": 0.1,
        "timeout_rate": 0.2,
    }
    assert derive([], 1.0) == {"batch_throughput": 0.0, "token_throughput": 0.0}


def test_inference_monitor_end_to_end(tmp_path):
    (tmp_path / "monitoring.yaml").write_text(FAST_CONFIG)
    result = run_script(
        """
        import asyncio, json, time
        from llamamon import InferenceMonitor
        monitor = InferenceMonitor()
        for i in range(20):
            with monitor.track(tokens_in=10) as req:
                req.tokens_out = 5
                req.cache_hit = i % 4 == 0
        try:
            with monitor.track() as req:
                raise ValueError("boom")
        except ValueError:
            pass
        else:
            raise SystemExit("exception was swallowed")
        with monitor.track() as req:
            time.sleep(0.08)   # over the 50 ms timeout
            req.add_tokens(3)

        @monitor.track
        def generate(n):
            InferenceMonitor.request().add_tokens(n)
            return n

        @monitor.track(tokens_in=2)
        async def agenerate(n):
            await asyncio.sleep(0)
            InferenceMonitor.request().add_tokens(n)
            return n

        assert generate(7) == 7
        assert asyncio.run(agenerate(8)) == 8
        monitor.set_queue_size(12)
        summary = asyncio.run(monitor.get_latency_metrics(window="1m"))
        monitor.close()
        print(json.dumps({"summary": summary, "totals": monitor.totals}))
        """,
        tmp_path,
    )
    out = json.loads(result.stdout)
    summary, totals = out["summary"], out["totals"]
    assert summary["count"] == 24
    assert summary["max"] >= 80.0
    assert summary["p50"] <= summary["p90"] <= summary["p95"] <= summary["p99"] <= summary["max"]
    assert totals == {"requests": 24, "errors": 1, "timeouts": 1, "cache_hits": 5, "tokens_out": 100 + 3 + 7 + 8}

    rows = all_rows(tmp_path / ".metrics")
    latencies = [r for r in rows if r.metric == "inference_latency"]
    assert len(latencies) == 24
    assert {r.group for r in rows} == {"inference"}
    derived = {}
    for r in rows:
        derived.setdefault(r.metric, []).append(r.value)
    assert sum(derived["token_throughput"]) > 0
    assert derived["batch_queue_size"][-1] == 12.0
    # over all intervals, rates are consistent with the totals
    assert max(derived["error_rate"]) > 0
    assert max(derived["timeout_rate"]) > 0
    assert max(derived["cache_hit_rate"]) > 0


def test_training_monitor_records_system_metrics_and_summarises(tmp_path):
    (tmp_path / "monitoring.yaml").write_text(FAST_CONFIG)
    result = run_script(
        """
        import asyncio, json, time
        from llamamon import TrainingMonitor

        async def main():
            monitor = TrainingMonitor()
            async with monitor:
                for step in range(1, 41):
                    monitor.log(loss=1.0 / step if step != 30 else float("nan"), lr=1e-3 * (0.9 ** step), step=step)
                    if step % 10 == 0:
                        monitor.log(eval_loss=0.5 + abs(step - 20) / 100, step=step)
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
                return await monitor.get_training_metrics()

        print(json.dumps(asyncio.run(main())))
        """,
        tmp_path,
    )
    summary = json.loads(result.stdout)
    assert summary["loss"]["latest"] == 1.0 / 40
    assert summary["loss"]["best"] == 1.0 / 40
    assert summary["loss"]["best_step"] == 40
    assert summary["validation_loss"] == {"latest": 0.7, "best": 0.5, "best_step": 20, "step": 40}
    assert summary["learning_rate"] == pytest.approx(1e-3 * 0.9**40)
    assert summary["steps_per_second"] > 1
    rows = all_rows(tmp_path / ".metrics")
    groups = {r.group for r in rows}
    assert {"system", "process", "training"} <= groups
    assert any(r.metric == "cpu_usage" for r in rows)
    assert any(r.metric == "process_memory_rss" and r.value > 0 for r in rows)
    assert any(r.metric == "steps_per_second" for r in rows)
    losses = [r for r in rows if r.metric == "loss"]
    assert len(losses) == 40
    assert any(math.isnan(r.value) for r in losses)  # NaN kept: alertable


def test_inference_monitor_without_close_writes_its_last_interval_at_exit(tmp_path):
    run_script(
        """
        from llamamon import InferenceMonitor
        monitor = InferenceMonitor(interval=3600)   # no interval ends while the job runs
        monitor.set_queue_size(4)
        for _ in range(5):
            with monitor.track() as req:
                req.tokens_out = 2
        """,
        tmp_path,
    )
    rows = all_rows(tmp_path / ".metrics")
    assert sum(r.metric == "inference_latency" for r in rows) == 5
    assert [r.value for r in rows if r.metric == "batch_queue_size"] == [4.0]
    assert len([r for r in rows if r.metric == "batch_throughput"]) == 1


def test_training_monitor_under_record_leaves_system_metrics_to_the_recorder(tmp_path):
    metrics = tmp_path / "m"
    run_script(
        """
        import asyncio
        from llamamon import TrainingMonitor

        async def main():
            async with TrainingMonitor(interval=0.05) as monitor:
                monitor.log(loss=1.0, step=1)
                await asyncio.sleep(0.2)

        asyncio.run(main())
        """,
        tmp_path,
        LLAMAMON_RUN_ID="20260101T000000Z-host-abcd",
        LLAMAMON_METRICS_DIR=str(metrics),
    )
    rows = all_rows(metrics)
    assert {r.group for r in rows} == {"training"}
    assert any(r.metric == "loss" for r in rows)


SYNC_LOOP = """
def train(monitor, seconds=3.0):
    # A plain synchronous loop that never yields: pure Python work, no sleep, no event loop.
    end = time.monotonic() + seconds
    step = 0
    while time.monotonic() < end:
        step += 1
        sum(i * i for i in range(2000))
        if step % 50 == 0:
            monitor.log(loss=1.0 / step, step=step)
    return step
"""


def _sample_gaps(rows) -> list[float]:
    times = sorted({r.time for r in rows if r.metric == "cpu_usage"})
    return [b - a for a, b in itertools.pairwise(times)]


def _assert_sampled_at_the_interval(rows, interval: float, seconds: float) -> None:
    gaps = _sample_gaps(rows)
    # About seconds / interval samples (15); bounds generous for a loaded 2-core machine.
    assert len(gaps) + 1 >= 5, gaps
    median = sorted(gaps)[len(gaps) // 2]
    assert interval / 2 <= median <= interval * 3, gaps


def test_training_monitor_samples_a_synchronous_loop_on_its_thread(tmp_path):
    result = run_script(
        "import time\nfrom llamamon import TrainingMonitor\n"
        + SYNC_LOOP
        + """
with TrainingMonitor(interval=0.2) as monitor:
    steps = train(monitor)
print(steps, monitor.training_metrics()["step"])
""",
        tmp_path,
    )
    steps, last = map(int, result.stdout.split())
    assert last == steps - steps % 50
    rows = all_rows(tmp_path / ".metrics")
    _assert_sampled_at_the_interval(rows, 0.2, 3.0)
    assert any(r.metric == "process_memory_rss" for r in rows)


def test_async_training_monitor_samples_while_the_loop_is_blocked(tmp_path):
    # `async with` around a synchronous loop: the event loop is busy the whole time.
    run_script(
        "import asyncio, time\nfrom llamamon import TrainingMonitor\n"
        + SYNC_LOOP
        + """
async def main():
    async with TrainingMonitor(interval=0.2) as monitor:
        train(monitor)

asyncio.run(main())
""",
        tmp_path,
    )
    _assert_sampled_at_the_interval(all_rows(tmp_path / ".metrics"), 0.2, 3.0)
