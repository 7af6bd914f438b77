"""Multi-node jobs as run groups, end to end: real ``llamamon record`` processes, one per simulated node
(``LLAMAMON_HOST`` names it), each running a real job that logs with ``llamamon.log``; then ``runs``,
``report --group`` and ``alerts test --group`` over the store they share."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from llamamon.samples import RunInfo
from llamamon.store.runs import group_status
from tests.conftest import llamamon_env, run_llamamon, run_python

PY = sys.executable

JOB = """
import os, sys, time
import llamamon
loss = float(sys.argv[1])
for step in range(6):
    llamamon.log(loss=loss, step=step)
    time.sleep(0.05)
print("group seen by the job:", os.environ.get("LLAMAMON_GROUP"))
"""

CONFIG = """
alerts:
  rules:
    loss_high:
      condition: "loss > 5"
      severity: critical
"""

# (group, host, node rank, the loss it logs): node-2 of job1 diverged; job2 is healthy.
NODES = [("job1", f"node-{i}", i, 10.0 if i == 2 else 0.5) for i in range(4)]
NODES += [("job2", f"other-{i}", i, 0.5) for i in range(2)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Six recorders at once (two jobs) and one ungrouped run, in one metrics folder."""
    root = tmp_path_factory.mktemp("groups")
    (root / "job.py").write_text(textwrap.dedent(JOB))
    (root / "monitoring.yaml").write_text(CONFIG)
    folder = root / "m"
    record = [PY, "-m", "llamamon", "record", "--no-gpu", "--interval", "0.2", "--metrics-dir", str(folder)]
    procs = [
        subprocess.Popen(
            [*record, "--group", group, "--", PY, "job.py", str(loss)],
            cwd=root,
            env=llamamon_env(LLAMAMON_HOST=host, NODE_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for group, host, rank, loss in NODES
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert b"group seen by the job: job" in out  # the job (and what it starts) knows its group
    alone = run_llamamon(
        "record", "--no-gpu", "--interval", "0.2", "--metrics-dir", str(folder), "--", PY, "job.py", "0.5", cwd=root
    )
    assert alone.returncode == 0, alone.stderr
    assert b"group seen by the job: None" in alone.stdout
    return root


def _cli(store, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_llamamon(*args, "--metrics-dir", str(store / "m"), cwd=store)


def test_runs_shows_each_group_as_one_row_with_its_hosts(store):
    done = _cli(store, "runs")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 + 3  # header, job1, job2, the ungrouped run
    (job1,) = [line for line in lines if line.startswith("group job1 ")]
    assert "4 runs, nodes 0-3" in job1
    assert "4 hosts: node-0,node-1,node-2,node-3" in job1
    assert " finished " in job1
    (job2,) = [line for line in lines if line.startswith("group job2 ")]
    assert "2 hosts: other-0,other-1" in job2
    assert b"runs --group NAME" in done.stderr


def test_runs_group_lists_the_groups_runs_and_json_carries_group_and_rank(store):
    listed = _cli(store, "runs", "--group", "job1").stdout.decode().splitlines()
    assert len(listed) == 1 + 4
    hosts = sorted(cell for line in listed[1:] for cell in line.split() if cell.startswith("node-"))
    assert hosts == ["node-0", "node-1", "node-2", "node-3"]
    runs = json.loads(_cli(store, "runs", "--json").stdout)
    assert len(runs) == 7
    by_host = {r["host"]: r for r in runs}
    assert by_host["node-3"]["run_group"] == "job1"
    assert by_host["node-3"]["node_rank"] == 3
    assert by_host["other-1"]["run_group"] == "job2"
    assert sum(r["run_group"] is None for r in runs) == 1
    only = json.loads(_cli(store, "runs", "--json", "--group", "job2").stdout)
    assert sorted(r["host"] for r in only) == ["other-0", "other-1"]


def test_report_group_covers_every_host_of_the_job_and_no_other(store):
    out = store / "job1.md"
    done = _cli(store, "report", "--group", "job1", "--markdown", "-o", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    for i in range(4):
        assert f"| host | node-{i} (run group job1, node {i}) |" in text
    assert "other-" not in text
    html = store / "job1.html"
    done = _cli(store, "report", "--group", "job1", "-o", str(html))
    assert done.returncode == 0, done.stderr
    page = html.read_text()
    assert all(f"node-{i}" in page for i in range(4))


def test_alerts_test_group_is_the_gate_over_the_whole_job(store):
    failing = _cli(store, "alerts", "test", "--group", "job1", "--fail-on", "critical")
    assert failing.returncode == 1, failing.stderr
    (row,) = [line for line in failing.stdout.decode().splitlines() if line.startswith("loss_high")]
    assert "-node-2-" in row  # the diverged node's run
    healthy = _cli(store, "alerts", "test", "--group", "job2", "--fail-on", "critical")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


@pytest.mark.parametrize("command", [("runs",), ("report", "--markdown"), ("alerts", "test")])
def test_an_unknown_group_is_one_line_naming_the_known_ones(store, command):
    done = _cli(store, *command, "--group", "job3")
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        f'Error: no run group "job3" in {store / "m"} (known: job1, job2)'
    ]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--group", "../x"), {}, "Error: --group: '../x' is not a usable run group name"),
        (("--group", "a/b"), {}, "Error: --group: 'a/b' is not a usable run group name"),
        (("--group", ""), {}, "Error: --group: a run group name cannot be empty"),
        ((), {"SLURM_JOB_ID": "../../etc"}, "Error: SLURM_JOB_ID: '../../etc' is not a usable run group name"),
    ],
)
def test_a_group_name_with_path_characters_stops_record_before_the_job(tmp_path, args, env, expected):
    marker = tmp_path / "ran"
    done = run_llamamon(
        "record", "--no-gpu", *args, "--metrics-dir", str(tmp_path / "m"), "--", PY, "-c",
        f"open({str(marker)!r}, 'w')",
        cwd=tmp_path, env=llamamon_env(**env),
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines
    assert not marker.exists()


@pytest.mark.parametrize(
    ("env", "group", "node_rank", "rank"),
    [
        ({"SLURM_JOB_ID": "4242", "SLURM_NODEID": "1", "SLURM_PROCID": "5"}, "4242", 1, 5),
        ({"TORCHELASTIC_RUN_ID": "elastic-7", "GROUP_RANK": "2", "RANK": "9"}, "elastic-7", 2, 9),
        ({"LLAMAMON_GROUP": "mine", "SLURM_JOB_ID": "4242"}, "mine", None, None),
    ],
)
def test_record_takes_the_group_and_ranks_from_the_launchers_environment(tmp_path, env, group, node_rank, rank):
    done = run_llamamon(
        "record", "--no-gpu", "--metrics-dir", str(tmp_path / "m"), "--", PY, "-c", "pass",
        cwd=tmp_path, env=llamamon_env(**env),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(run_llamamon("runs", "--json", "--metrics-dir", str(tmp_path / "m"), cwd=tmp_path).stdout)
    assert (run["run_group"], run["node_rank"], run["rank"]) == (group, node_rank, rank)


def test_a_run_the_api_owns_takes_its_group_from_the_same_variables(tmp_path):
    job = "import llamamon\nllamamon.log(loss=1.0, step=0)\n"
    done = run_python(job, tmp_path, SLURM_JOB_ID="777", SLURM_NODEID="3", SLURM_PROCID="12")
    assert done.returncode == 0, done.stderr
    bad = run_python(job, tmp_path, LLAMAMON_GROUP="a/b")  # warned about; the job runs on
    assert bad.returncode == 0, bad.stderr
    assert "no run group: LLAMAMON_GROUP: 'a/b' is not a usable run group name" in bad.stderr
    runs = json.loads(run_llamamon("runs", "--json", "--metrics-dir", str(tmp_path / ".metrics"), cwd=tmp_path).stdout)
    assert [(r["source"], r["run_group"], r["node_rank"], r["rank"]) for r in runs] == [
        ("api", "777", 3, 12),
        ("api", None, None, None),
    ]


def test_record_around_torchrun_groups_by_its_rdzv_id(tmp_path):
    """A real torchrun on CPU with two workers: torchrun gives TORCHELASTIC_RUN_ID to its workers only, so
    record reads --rdzv-id from the command it wraps; both workers log into record's run."""
    pytest.importorskip("torch")
    job = tmp_path / "worker.py"
    job.write_text("import os, llamamon\nllamamon.log(loss=float(os.environ['RANK']), step=0)\n")
    done = run_llamamon(
        "record", "--no-gpu", "--interval", "0.5", "--metrics-dir", str(tmp_path / "m"), "--",
        PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "localhost:0", "--rdzv_id=abc", str(job),
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(run_llamamon("runs", "--json", "--metrics-dir", str(tmp_path / "m"), cwd=tmp_path).stdout)
    assert run["run_group"] == "abc"
    report = tmp_path / "r.md"
    shown = run_llamamon(
        "report", "--group", "abc", "--markdown", "--metrics-dir", str(tmp_path / "m"), "-o", str(report), cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert run["id"] in report.read_text()


def test_a_groups_status_is_running_while_any_runs_else_failed_if_any_failed():
    def run(n: int, end: float | None = 2.0, code: int | None = 0) -> RunInfo:
        return RunInfo(id=f"20260101T000000Z-node-{n}-000{n}", host=f"node-{n}", start=1.0, end=end, exit_code=code)

    done, failed, live, killed = run(0), run(1, code=3), run(2, end=None, code=None), run(3, end=None, code=None)
    assert group_status([done, failed, live], {live.id}) == "running"
    assert group_status([done, failed], set()) == "failed"
    assert group_status([done, killed], set()) == "unfinished"
    assert group_status([done, run(4)], set()) == "finished"
