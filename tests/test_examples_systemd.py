"""examples/llamamon-watch.service is a unit systemd accepts, and it starts a real `llamamon watch`."""

from __future__ import annotations

import getpass
import grp
import os
import shlex
import shutil
import subprocess
import sys

from tests.conftest import REPO, require_binary, run_llamamon

UNIT = REPO / "examples" / "llamamon-watch.service"


def test_watch_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_binary("systemd-analyze")
    text = UNIT.read_text()
    # As installed here: the llamamon on PATH (or this Python's -m llamamon), this machine's user and group.
    here = shutil.which("llamamon") or f"{sys.executable} -m llamamon"
    unit = text.replace("/usr/local/bin/llamamon", here)
    unit = unit.replace("User=llamamon", f"User={getpass.getuser()}")
    unit = unit.replace("Group=llamamon", f"Group={grp.getgrgid(os.getgid()).gr_name}")
    path = tmp_path / "llamamon-watch.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")  # an unknown key is only printed


def test_watch_unit_starts_llamamon_watch(tmp_path):
    (exec_start,) = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[0].endswith("/llamamon")
    assert argv[1:] == ["watch"]
    helped = run_llamamon(*argv[1:], "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr.decode()
    assert b"SIGTERM" in helped.stdout  # what KillSignal= relies on: watch stops cleanly on it
