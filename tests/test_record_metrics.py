"""`llamamon record` with training/inference metrics: llamamon.log() joining the run, output parsing,
Prometheus scraping and guarded user collectors, all through the real CLI in a subprocess."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from llamamon.store.reader import scan
from tests.conftest import llamamon_env, run_llamamon


def record(tmp_path, script: str, *options: str, env=None):
    (tmp_path / "job.py").write_text(textwrap.dedent(script))
    result = run_llamamon(
        "record", "--interval", "0.2", "--no-gpu", *options, "--", sys.executable, "job.py", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr.decode()
    runs = sorted((tmp_path / ".metrics" / "runs").glob("*.json"))
    assert len(runs) == 1  # the job's metrics joined the recorder's run instead of starting their own
    run = json.loads(runs[0].read_text())
    rows = scan(tmp_path / ".metrics", runs=[run["id"]]).collect()
    return result, run, rows


def metric(rows: pl.DataFrame, name: str) -> list[tuple[int | None, float]]:
    found = rows.filter(pl.col("metric") == name).select("step", "value").iter_rows()
    return sorted(found, key=lambda r: (r[0] is not None, r[0] or 0, r[1]))


def test_log_api_joins_the_recorders_run(tmp_path):
    _, run, rows = record(
        tmp_path,
        """
        import llamamon
        for step in range(1, 6):
            llamamon.log({"loss": 1.0 / step, "lr": 1e-3}, step=step)
        """,
        "--no-parse",
    )
    assert run["source"] == "record"
    assert metric(rows, "loss") == [(s, 1.0 / s) for s in range(1, 6)]
    assert set(rows.filter(pl.col("metric") == "learning_rate")["group"]) == {"training"}
    assert not list((tmp_path / ".metrics" / "_journal").glob("*/*.jsonl"))  # folded at the end of the run


JOB_OUTPUT = r"""
import os, sys
out = sys.stdout.buffer
out.write(b"starting\n")
out.write(b'{"step": 10, "loss": 1.25}\n')
out.write(b"{'loss': 0.5, 'grad_norm': 1.2, 'learning_rate': 4.8e-05, 'epoch': 0.12}\n")
out.write(b" 10%|#   | 5/50\r 12%|#   | 6/50\r")                           # progress-bar redraws
out.write(b"{'eval_loss': '0.43', 'eval_runtime': 12.3, 'epoch': 1.0}\n")
out.write(b'{"step": 11, "lo')                                            # a line split across writes
out.flush()
out.write(b'ss": 1.0}\n')
out.write(b"\xff\xfe not utf-8 \x00\n")
out.write(b"x" * (2 << 20) + b"\n")                                       # a 2 MB line
out.write(b"step 120 | loss 0.413 | lr 3.0e-04\n")
out.write(b"no newline at the end")
out.flush()
sys.stderr.write('{"step": 12, "loss": 0.9}\n')
"""


def expected_stdout() -> bytes:
    return (
        b"starting\n"
        b'{"step": 10, "loss": 1.25}\n'
        b"{'loss': 0.5, 'grad_norm': 1.2, 'learning_rate': 4.8e-05, 'epoch': 0.12}\n"
        b" 10%|#   | 5/50\r 12%|#   | 6/50\r"
        b"{'eval_loss': '0.43', 'eval_runtime': 12.3, 'epoch': 1.0}\n"
        b'{"step": 11, "loss": 1.0}\n'
        b"\xff\xfe not utf-8 \x00\n" + b"x" * (2 << 20) + b"\n"
        b"step 120 | loss 0.413 | lr 3.0e-04\n"
        b"no newline at the end"
    )


def test_metric_lines_in_the_output_are_recorded_and_the_bytes_pass_unchanged(tmp_path):
    (tmp_path / "monitoring.yaml").write_text(
        'parsers:\n  - pattern: "step (?P<step>\\\\d+) \\\\| loss (?P<loss>\\\\S+) \\\\| lr (?P<lr>\\\\S+)"\n'
    )
    result, _, rows = record(tmp_path, JOB_OUTPUT)
    assert result.stdout == expected_stdout()
    assert b'{"step": 12, "loss": 0.9}\n' in result.stderr
    assert metric(rows, "loss") == [(None, 0.5), (10, 1.25), (11, 1.0), (12, 0.9), (120, 0.413)]
    assert metric(rows, "validation_loss") == [(None, 0.43)]
    assert metric(rows, "learning_rate") == [(None, 4.8e-05), (120, 3.0e-04)]
    assert set(rows.filter(pl.col("metric") == "loss")["group"]) == {"training"}
    assert metric(rows, "eval_runtime") == [(None, 12.3)]


def test_no_parse_turns_it_off(tmp_path):
    result, _, rows = record(tmp_path, JOB_OUTPUT, "--no-parse")
    assert result.stdout == expected_stdout()
    assert rows.filter(pl.col("group") == "training").height == 0


def test_a_job_that_claims_its_output_is_parsed_only_until_the_claim(tmp_path):
    """What the job printed before ``claim_output`` is kept; from then on only what it logs is stored, once."""
    result, _, rows = record(
        tmp_path,
        """
        import os, time, llamamon, llamamon.api
        print('{"step": 1, "loss": 2.0, "accuracy": 0.1}', flush=True)
        time.sleep(0.5)  # the recorder stores the parsed line before the claim exists
        llamamon.api.claim_output()
        llamamon.api.claim_output()  # a second claim (another rank) must not move the first one's time
        claim = os.environ["LLAMAMON_OUTPUT_CLAIM"]
        with open("claim.txt", "w") as fh:
            fh.write(claim + "\\n" + open(claim).read())
        for step in range(2, 5):
            llamamon.log({"loss": 1.0 / step}, step=step)
            print({"loss": round(1.0 / step, 2), "accuracy": 0.5}, flush=True)
            time.sleep(0.3)
        """,
    )
    claim_path, claim_time = (tmp_path / "claim.txt").read_text().split("\n")
    assert metric(rows, "loss") == [(1, 2.0), (2, 0.5), (3, 1.0 / 3), (4, 0.25)]
    assert metric(rows, "accuracy") == [(1, 0.1)]  # printed only after the claim: parsing is off for the run
    first_loss = rows.filter(pl.col("metric") == "loss")["time"].dt.epoch("us").min() / 1e6
    assert first_loss < float(claim_time)  # the parsed step-1 line, stored before the claim
    assert not Path(claim_path).parent.exists()  # record removed its claim folder
    assert b"no longer parsed" in result.stderr


COLLECTORS = """
import asyncio, time
from llamamon import MetricsCollector

class Good(MetricsCollector):
    async def collect(self):
        return {"queue_depth": 3.0}

class Raises(MetricsCollector):
    async def collect(self):
        raise RuntimeError("sensor unplugged")

class Hangs(MetricsCollector):
    async def collect(self):
        await asyncio.sleep(3600)

class Blocks(MetricsCollector):
    async def collect(self):
        time.sleep(3600)
"""


def test_user_collectors_that_raise_or_hang_never_stop_the_recording(tmp_path):
    (tmp_path / "my_collectors.py").write_text(COLLECTORS)
    (tmp_path / "monitoring.yaml").write_text(
        "collectors:\n"
        '  - "my_collectors:Raises"\n'
        '  - "my_collectors:Hangs"\n'
        '  - "my_collectors:Blocks"\n'
        '  - "my_collectors:Good"\n'
    )
    env = llamamon_env(PYTHONPATH=f"{llamamon_env()['PYTHONPATH']}:{tmp_path}")
    result, run, rows = record(tmp_path, "import time; time.sleep(1.5)", env=env)
    assert run["exit_code"] == 0
    stderr = result.stderr.decode()
    assert stderr.count("sensor unplugged") == 1
    assert stderr.count("collector Hangs gave no answer within 0.2s") == 1
    assert stderr.count("collector Blocks gave no answer within 0.2s") == 1
    assert rows.filter(pl.col("metric") == "queue_depth").height >= 3
    assert set(rows.filter(pl.col("metric") == "queue_depth")["group"]) == {"custom"}


def test_a_collector_that_cannot_be_loaded_is_a_config_error(tmp_path):
    (tmp_path / "monitoring.yaml").write_text('collectors:\n  - "no_such_module_xyz:Thing"\n')
    result = run_llamamon("record", "--", sys.executable, "-c", "print('never runs')", cwd=tmp_path)
    assert result.returncode == 2
    assert b"never runs" not in result.stdout
    assert result.stderr.decode().strip().startswith("Error: ")
    assert "monitoring.yaml:2: collectors[0]: cannot import 'no_such_module_xyz'" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_bad_scrape_url_is_a_config_error(tmp_path):
    result = run_llamamon("record", "--scrape", "ftp://x", "--", "true", cwd=tmp_path)
    assert result.returncode == 2
    assert "--scrape: not an http(s) URL: 'ftp://x'" in result.stderr.decode()


def test_scrape_during_record(tmp_path):
    pytest.importorskip("prometheus_client", reason="prometheus_client is in the test extra")
    from tests.test_collectors_scrape import PromApp

    app = PromApp(tmp_path)
    try:
        app.send("waiting 5", "app")
        url = f"http://127.0.0.1:{app.port}/metrics"
        _, _, rows = record(tmp_path, "import time; time.sleep(1.0)", "--scrape", url, "--scrape", url)
    finally:
        app.stop()
    queue = rows.filter(pl.col("metric") == "batch_queue_size")
    assert queue.height >= 2
    assert set(queue["group"]) == {"inference"}
    assert set(queue["value"]) == {5.0}
    assert rows.filter(pl.col("metric") == "app_temperature_celsius").height >= 2


ROTATING_JOB = r"""
import os, sys, time
from pathlib import Path
import llamamon, llamamon.api, llamamon.log_destination

llamamon.log_destination.SEGMENT_BYTES = 2000  # a few hundred points per segment
for step in range(3000):
    llamamon.log(loss=1.0 / (step + 1), step=step)
    if step % 100 == 99:
        llamamon.api.flush()
llamamon.api.flush()
current = llamamon.api._flusher.destination.journal.path
folder = Path(os.environ["LLAMAMON_METRICS_DIR"], "_journal", os.environ["LLAMAMON_RUN_ID"])
finished = [p for p in folder.glob("*.jsonl") if p != current]
assert len(finished) >= 5, finished
deadline = time.monotonic() + 30
while any(p.exists() for p in finished):  # the recorder folds them while this job still runs
    assert time.monotonic() < deadline, "finished journal segments were not folded during the run"
    time.sleep(0.05)
print("folded during the run", len(finished))
"""


def test_the_jobs_finished_journal_segments_are_folded_while_it_runs(tmp_path, monkeypatch, capfd):
    from llamamon.cli import main
    from llamamon.runtime import parquet_route

    monkeypatch.setattr(parquet_route, "FLUSH_INTERVAL_S", 0.5)  # the fold's period too
    monkeypatch.chdir(tmp_path)
    for name, value in llamamon_env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "job.py").write_text(ROTATING_JOB)
    with pytest.raises(SystemExit) as done:
        main(["record", "-q", "--interval", "0.2", "--no-gpu", "--no-parse", "--", sys.executable, "job.py"])
    assert done.value.code == 0, capfd.readouterr().err
    assert "folded during the run" in capfd.readouterr().out
    rows = scan(tmp_path / ".metrics").collect()
    assert metric(rows, "loss") == [(s, 1.0 / (s + 1)) for s in range(3000)]  # each point once
    assert not list((tmp_path / ".metrics" / "_journal").glob("*/*.jsonl"))
