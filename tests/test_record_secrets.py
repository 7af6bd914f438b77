"""A secret on the job's command line never reaches a file llamamon writes.

The reproducer of the hostile-input report, widened to every form the masking claims: the job gets its
real arguments, while every file the run produces (the store, runs/, the .prom files, the HTML and
Markdown reports, a JUnit file, `runs --json`) is searched for the secrets byte for byte.
"""

from __future__ import annotations

import json
import sys

import pytest

from llamamon.masking import mask_command
from tests.conftest import run_llamamon

SECRETS = ["s3cr3tXYZ", "s3cr3tTOK", "s3cr3tPW", "s3cr3tURL", "s3cr3tQRY", "s3cr3tENV", "s3cr3tOWN", "s3cr3tPASS"]
JOB = "import json, sys; json.dump(sys.argv[1:], open('argv.json', 'w')); print({'loss': 1.5, 'epoch': 1.0})"
ARGS = [
    "--api-key=s3cr3tXYZ",
    "--hf_token",
    "s3cr3tTOK",
    "-p",
    "s3cr3tPW",
    "--db",
    "postgres://me:s3cr3tURL@db.local:5432/x?sslmode=require&access_token=s3cr3tQRY",
    "WANDB_API_KEY=s3cr3tENV",
    "--hf-auth",
    "s3cr3tOWN",
    "--Client-Password",
    "-s3cr3tPASS",
    "--epochs",
    "3",
]


def test_mask_command_forms():
    masked = mask_command(["python", "train.py", *ARGS], extra=["--hf-auth"])
    assert masked == [
        "python",
        "train.py",
        "--api-key=***",
        "--hf_token",
        "***",
        "-p",
        "***",
        "--db",
        "postgres://me:***@db.local:5432/x?sslmode=require&access_token=***",
        "WANDB_API_KEY=***",
        "--hf-auth",
        "***",
        "--Client-Password",
        "***",
        "--epochs",
        "3",
    ]
    # a flag that looks secret but takes no value leaves the next option alone; -p's value is not an option
    assert mask_command(["--no-token-check", "--lr", "1e-3", "-p", "-v"]) == [
        "--no-token-check",
        "--lr",
        "1e-3",
        "-p",
        "-v",
    ]
    assert mask_command(["--keep", "x", "--monkey=1"]) == ["--keep", "x", "--monkey=***"]  # "key" in a name: masked


@pytest.mark.integration
def test_no_file_the_run_produces_holds_a_secret_from_its_command_line(tmp_path):
    (tmp_path / "monitoring.yaml").write_text(
        "monitoring:\n  secret_options: [--hf-auth]\n  textfile_dir: prom\n  textfile_grace: 1h\n"
        "alerts:\n  rules:\n    high_loss: {condition: 'loss > 1', severity: critical}\n"
    )
    job = tmp_path / "job.py"
    job.write_text(JOB)
    result = run_llamamon(
        "record", "--interval", "0.2", "--no-gpu", "--", sys.executable, str(job), *ARGS, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads((tmp_path / "argv.json").read_text()) == ARGS  # the job got what it was given
    for command in (
        ("report", "--html", "-o", "report.html"),
        ("report", "--markdown", "-o", "report.md"),
        ("alerts", "test", "--latest", "--junit", "alerts.xml"),
        ("runs", "--json"),
    ):
        done = run_llamamon(*command, cwd=tmp_path)
        assert done.returncode in (0, 1), done.stderr.decode()  # alerts test fails on high_loss: that is its job
        for secret in SECRETS:
            assert secret.encode() not in done.stdout + done.stderr, (command, secret)
    for name in ("report.html", "report.md", "alerts.xml"):
        assert (tmp_path / name).stat().st_size > 0
    assert list((tmp_path / "prom").glob("*.prom"))
    produced = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in {"job.py", "argv.json"}]
    assert any(p.suffix == ".parquet" for p in produced)
    run = json.loads(next((tmp_path / ".metrics" / "runs").glob("*.json")).read_text())
    assert "--api-key=***" in run["command"]
    leaks = [(str(p.relative_to(tmp_path)), s) for p in produced for s in SECRETS if s.encode() in p.read_bytes()]
    assert leaks == []
