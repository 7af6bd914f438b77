"""The built-in training_straggler rule over a simulated multi-node job: 4 nodes x 2 ranks, each node its own
run (as each node's `llamamon record` makes one), written with the store's writer, judged by the real
`llamamon alerts test` and by the history evaluator in process.

One rank 30% slower than the others fires, naming that rank and host; a balanced job whose steps jitter
by +-10% never does, and its ratio to the median stays far from the threshold (the margin is what makes
"never" hold for other seeds too). With two ranks the median is their mean, so a rank fires only when it
is 2R - 1 = 1.5 times slower than the other (docs/alerts.md). Last, the same job as 8 real processes
logging with llamamon.log under the launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE, a host each
node), their clock injected so that 30 minutes of steps take a second.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_llamamon
from report_store import run_info, save_run

from llamamon.config import load_config
from llamamon.rules import history, lang
from llamamon.rules.builtin import builtin_rules
from llamamon.rules.model import Rule
from llamamon.samples import Row, make_labels
from llamamon.store.writer import write_partitions

T0 = 1_795_000_000.0
MINUTES = 30
STEP_S = 0.5  # a balanced rank's mean step time
LOG_EVERY = 5  # steps between two logs, as a Trainer's logging_steps
NODES, PER_NODE = 4, 2


def _run_id(node: int) -> str:
    return f"20261118T000000Z-node{node}-0001"


def write_job(metrics_dir: Path, *, slow: dict[int, float], seed: int, nodes: int = NODES) -> None:
    """Every rank's `step` logged every LOG_EVERY steps for MINUTES; ``slow``: global rank -> step time factor.

    Each step takes STEP_S x factor x (1 +- 10% uniform jitter), drawn per step and per rank.
    """
    rng = random.Random(seed)
    for node in range(nodes):
        host, run = f"node{node}", _run_id(node)
        rows = []
        for local in range(PER_NODE):
            rank = node * PER_NODE + local
            labels = make_labels({"rank": str(rank), "local_rank": str(local)})
            t, step = T0 + rng.uniform(0, 5), 0  # the nodes start a few seconds apart
            while t < T0 + MINUTES * 60:
                if step % LOG_EVERY == 0:
                    rows.append(Row(t, "training", "step", float(step), labels, step))
                t += STEP_S * slow.get(rank, 1.0) * rng.uniform(0.9, 1.1)
                step += 1
        write_partitions(metrics_dir, run, host, "w-1", rows)
        save_run(metrics_dir, run_info(run, T0, T0 + MINUTES * 60 + 1, host=host, name="job1"))


def straggler_rule() -> list[Rule]:
    return [r for r in builtin_rules(load_config()) if r.name == "training_straggler"]


def replayed(metrics_dir: Path, rules: list[Rule]) -> list:
    from llamamon.store.reader import scan

    return history.replay(rules, scan(metrics_dir), step_s=10.0)


def alerts_test(metrics_dir: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    cfg = tmp_path / "monitoring.yaml"
    cfg.write_text("alerts:\n  rules: {}\n")
    args = ("alerts", "test", "--all", "--json", "--config", str(cfg), "--metrics-dir", str(metrics_dir))
    done = run_llamamon(*args, cwd=tmp_path, timeout=120)
    assert "Traceback" not in done.stderr.decode(), done.stderr.decode()
    return done.returncode, [a for a in json.loads(done.stdout) if a["rule"] == "training_straggler"]


def test_a_rank_30_percent_slower_fires_naming_its_rank_and_host(metrics_dir: Path, tmp_path: Path) -> None:
    write_job(metrics_dir, slow={5: 1.3}, seed=1)
    code, fired = alerts_test(metrics_dir, tmp_path)
    assert code == 1  # a warning fails the gate (default --fail-on warning)
    assert len(fired) == 1, fired
    (alert,) = fired
    assert (alert["labels"]["rank"], alert["labels"]["local_rank"], alert["host"]) == ("5", "1", "node2")
    assert alert["run"] == _run_id(2)
    assert alert["value"] == pytest.approx(1.3, abs=0.05)  # x slower than the median rank
    assert "Rank 5 on node2 is 1.3" in alert["annotations"]["summary"]
    # persistently: it fires once its windows and `for` (10m + 10m at most) have passed, and stays firing
    assert T0 + 600 <= alert["fired_at"] <= T0 + 1200
    assert alert["resolved_at"] is None or alert["resolved_at"] >= T0 + MINUTES * 60


def test_a_balanced_job_with_jitter_never_fires(metrics_dir: Path, tmp_path: Path) -> None:
    write_job(metrics_dir, slow={}, seed=2)
    code, fired = alerts_test(metrics_dir, tmp_path)
    assert (code, fired) == (0, [])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_balanced_job_stays_silent_with_a_threshold_far_below_the_default(metrics_dir: Path, seed: int) -> None:
    """The margin: at 1.1 (the default is 1.25) the jitter, averaged over 10 minutes, still never fires."""
    write_job(metrics_dir, slow={}, seed=seed)
    (rule,) = straggler_rule()
    assert rule.condition.text.endswith("> 1.25")
    tight = replace(rule, condition=lang.parse(rule.condition.text.removesuffix("1.25") + "1.1"))
    assert replayed(metrics_dir, [rule, tight]) == []
    # (and the same tight rule does fire on a rank only 15% slower: the check above can fail)
    other = metrics_dir.parent / "slow"
    write_job(other, slow={3: 1.15}, seed=seed)
    assert [dict(a.labels)["rank"] for a in replayed(other, [tight])] == ["3"]


@pytest.mark.parametrize(("factor", "fires"), [(1.45, False), (1.6, True)])
def test_two_ranks_fire_only_past_twice_the_ratio_less_one(metrics_dir: Path, factor: float, fires: bool) -> None:
    write_job(metrics_dir, slow={1: factor}, seed=6, nodes=1)
    alerts = replayed(metrics_dir, straggler_rule())
    assert [dict(a.labels)["rank"] for a in alerts] == (["1"] if fires else [])


def test_a_single_process_job_without_ranks_never_fires(metrics_dir: Path) -> None:
    """A job without a rank label (one process) is not compared with anything, even with other runs beside it."""
    for node, step_s in ((0, 0.5), (1, 2.0)):
        rows = [Row(T0 + i * step_s * 5, "training", "step", float(i * 5), (), i * 5) for i in range(400)]
        write_partitions(metrics_dir, _run_id(node), f"node{node}", "w-1", rows)
    assert replayed(metrics_dir, straggler_rule()) == []


JOB = """
import os, random, time
import llamamon, llamamon.api

# The job's clock, injected: 30 simulated minutes of steps that end now, written in well under a second,
# flushed every 60 steps as the background flush would every second of a real job (a step row each).
rank = int(os.environ["RANK"])
rng = random.Random(rank)
factor = float(os.environ.get("SLOW_FACTOR", "1"))
clock = [time.time() - 1800]
llamamon.api._time = lambda: clock[0]
step = 0
while clock[0] < time.time():
    if step % 5 == 0:
        llamamon.log(loss=1.0 / (1 + step), step=step)
    if step % 60 == 0:
        llamamon.api.flush()
    clock[0] += 0.5 * factor * rng.uniform(0.9, 1.1)
    step += 1
"""


@pytest.mark.parametrize("slow", [None, 5])
def test_a_job_of_8_ranks_on_4_nodes_logging_with_the_launchers_environment(tmp_path: Path, slow: int | None) -> None:
    """8 real processes logging with llamamon.log, each with RANK/LOCAL_RANK/WORLD_SIZE as torchrun sets
    them and its node's host name (LLAMAMON_HOST), each its own run in one metrics folder: the rank made
    30% slower is the one alert, named by rank and host; the balanced job has none."""
    import subprocess
    import sys

    from conftest import llamamon_env

    script = tmp_path / "job.py"
    script.write_text(JOB)
    procs = []
    for rank in range(NODES * PER_NODE):
        env = llamamon_env(RANK=str(rank), LOCAL_RANK=str(rank % PER_NODE), WORLD_SIZE=str(NODES * PER_NODE))
        env["LLAMAMON_HOST"] = f"node{rank // PER_NODE}"
        env["SLOW_FACTOR"] = "1.3" if rank == slow else "1"
        procs.append(subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stderr=subprocess.PIPE))
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), b"".join(errors).decode()
    code, fired = alerts_test(tmp_path / ".metrics", tmp_path)
    got = sorted((a["labels"]["rank"], a["labels"]["local_rank"], a["host"]) for a in fired)
    assert (code, got) == ((1, [("5", "1", "node2")]) if slow else (0, []))
