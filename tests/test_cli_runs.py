"""Runs with their name, tags and config (``llamamon.init``), listed, filtered, resumed and exported as CSV.

Jobs run in real interpreters, under the real ``llamamon record`` where the scenario says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import textwrap

from llamamon.cli import cli
from llamamon.samples import Row, RunInfo, make_labels
from llamamon.store.runs import write_run
from llamamon.store.writer import StoreWriter
from tests.conftest import run_llamamon, run_python

PY = sys.executable

INIT_JOB = """
import llamamon
llamamon.init(name="job-name", tags={"seed": 7}, config={"lr": 3e-4, "layers": [2, 2], "warmup": float("nan")})
llamamon.log(loss=0.5, step=1)
"""


def _runs_json(folder, *args: str) -> list[dict]:
    result = run_llamamon("runs", "--json", "--metrics-dir", str(folder), *args, cwd=folder.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_init_under_record_annotates_the_recorders_run(tmp_path):
    folder = tmp_path / "m"
    done = run_llamamon(
        "record", "--no-gpu", "--interval", "0.2", "--name", "rec", "--tag", "team=nlp", "--metrics-dir", str(folder),
        "--", PY, "-c", textwrap.dedent(INIT_JOB), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (meta_path,) = (folder / "runs").glob("*.json")  # one run: the job joined the recorder's
    meta = json.loads(meta_path.read_text())  # as the recorder left it at exit
    assert meta["source"] == "record"
    assert meta["end"] is not None
    assert meta["name"] == "job-name"
    assert meta["tags"] == {"team": "nlp", "seed": "7"}
    assert meta["config"] == {"lr": 3e-4, "layers": [2, 2], "warmup": "nan"}
    (listed,) = _runs_json(folder, "--tag", "seed=7")
    assert list(listed) == sorted(listed)  # stable keys
    assert listed["config"] == meta["config"]
    assert listed["tags"] == meta["tags"]
    table = run_llamamon("runs", "--metrics-dir", str(folder), cwd=tmp_path).stdout.decode()
    assert "seed=7,team=nlp" in table.splitlines()[1]


def test_init_alone_starts_a_run_and_resume_adds_to_it(tmp_path):
    first = run_python(INIT_JOB + "print(llamamon.api.current_run()[0])", tmp_path)
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip()
    resumed = run_python(
        """
        import llamamon
        print(llamamon.init(resume="job-na", config={"lr": 1e-4}))
        llamamon.log(loss=0.25, step=2)
        """,
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == run_id  # the name prefix named it
    folder = tmp_path / ".metrics"
    (listed,) = _runs_json(folder)
    assert listed["id"] == run_id
    assert listed["state"] == "finished"
    assert listed["config"] == {"lr": 1e-4, "layers": [2, 2], "warmup": "nan"}
    assert listed["samples"] == 4  # two processes, a loss and a step row each
    csv_out = run_llamamon("export", "csv", "--run", "job", "--metrics-dir", str(folder), cwd=tmp_path)
    assert csv_out.returncode == 0, csv_out.stderr
    losses = [r for r in csv.DictReader(io.StringIO(csv_out.stdout.decode())) if r["metric"] == "loss"]
    assert [(r["step"], r["value"]) for r in losses] == [("1", "0.5"), ("2", "0.25")]


def test_resume_under_record_keeps_the_recorders_run(tmp_path):
    folder = tmp_path / "m"
    job = "import llamamon\nllamamon.init(resume='20200101T000000Z-h-0000')\nllamamon.log(loss=1.0, step=1)"
    done = run_llamamon("record", "--no-gpu", "--metrics-dir", str(folder), "--", PY, "-c", job, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"resume='20200101T000000Z-h-0000' ignored" in done.stderr
    (listed,) = _runs_json(folder)
    assert listed["source"] == "record"
    csv_out = run_llamamon("export", "csv", "--metrics-dir", str(folder), cwd=tmp_path).stdout.decode()
    assert [r["value"] for r in csv.DictReader(io.StringIO(csv_out)) if r["metric"] == "loss"] == ["1.0"]


def test_resume_of_an_unknown_run_is_one_line(tmp_path):
    result = run_python("import llamamon\nllamamon.init(resume='nope')", tmp_path)
    assert result.returncode == 1
    assert 'no run matches "nope"' in result.stderr.splitlines()[-1]


def _store(metrics_dir) -> list[Row]:
    t0 = 1_788_249_600.123456
    rows = [
        Row(t0, "training", "loss", 0.1 + 0.2, step=1),
        Row(t0 + 1e-6, "training", "loss", 1 / 3, step=2),
        Row(t0 + 2, "training", "loss", math.nan, step=3),
        Row(t0 + 3, "training", "learning_rate", 1.1867936095484036e-08, step=3),
        Row(t0 + 4, "gpu", "gpu_utilization", 0.900390625, make_labels(gpu=0)),
        Row(t0 + 5, "custom", "val/acc", -math.inf, make_labels(split='quo"te,x', gpu=1)),
    ]
    with StoreWriter(metrics_dir, "20260901T080000Z-box-0001", "box") as writer:
        writer.append(rows)
    write_run(metrics_dir, RunInfo(id="20260901T080000Z-box-0001", host="box", start=t0, end=t0 + 9, name="exact"))
    return rows


def test_export_csv_is_exact(metrics_dir, runner, tmp_path):
    rows = _store(metrics_dir)
    result = runner.invoke(cli, ["export", "csv", "--run", "ex", "--metrics-dir", str(metrics_dir)])
    assert result.exit_code == 0, result.output
    reader = csv.reader(io.StringIO(result.stdout))
    header = next(reader)
    assert header == ["time", "step", "metric", "value", "gpu", "split"]
    got = list(reader)
    assert [r[2] for r in got] == [r.metric for r in rows]
    for line, row in zip(got, rows, strict=True):
        value = float(line[3])
        assert value == row.value or (math.isnan(value) and math.isnan(row.value))
        assert line[1] == ("" if row.step is None else str(row.step))
        assert dict(row.labels) == {k: v for k, v in zip(header[4:], line[4:], strict=True) if v}
    assert got[0][3] == "0.30000000000000004"
    assert got[0][0] == "2026-09-01T08:00:00.123456Z"
    assert got[1][0] == "2026-09-01T08:00:00.123457Z"
    out = tmp_path / "run.csv"
    assert runner.invoke(cli, ["export", "csv", "-o", str(out), "--metrics-dir", str(metrics_dir)]).exit_code == 0
    assert out.read_text() == result.stdout  # --latest is the default


def test_runs_filters_and_bad_input(metrics_dir, runner):
    _store(metrics_dir)
    base = ["runs", "--json", "--metrics-dir", str(metrics_dir)]
    assert [r["name"] for r in json.loads(runner.invoke(cli, [*base, "--status", "finished"]).stdout)] == ["exact"]
    assert json.loads(runner.invoke(cli, [*base, "--name", "ex*", "--status", "failed"]).stdout) == []
    assert json.loads(runner.invoke(cli, [*base, "--name", "x*"]).stdout) == []
    bad = run_llamamon(*base, "--tag", "novalue", cwd=metrics_dir.parent)
    assert bad.returncode == 2
    assert bad.stderr.decode().strip().splitlines() == ["Error: --tag: expected KEY=VALUE (got 'novalue')"]
