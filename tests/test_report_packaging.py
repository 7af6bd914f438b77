"""The report templates ship inside the wheel: only a real wheel build can show a missing one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from llamamon.report.resources import templates_dir


def _source_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked or not ignored), so the build writes nothing into it."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if not (dest / "README.md").exists():
        # pyproject names README.md as the readme; the packaging of templates is what this test is about.
        (dest / "README.md").write_text("# llamamon\n")
    return dest


@pytest.mark.integration
def test_wheel_contains_the_report_templates(tmp_path):
    src = _source_copy(tmp_path / "src")
    out = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode != 0 and "hatchling" in r.stderr and "No module named" in r.stderr:
        r = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), "."],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("llamamon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"llamamon/templates/{p.relative_to(templates_dir()).as_posix()}" for p in templates_dir().rglob("*.j2")}
    assert "llamamon/templates/report.html.j2" in names
    assert shipped <= names, sorted(shipped - names)
    assert not any(n.startswith("llamamon/templates/") and n.endswith("__init__.py") for n in names)


def test_templates_dir_is_the_checkout_folder_here():
    assert templates_dir() == REPO / "templates"
    assert (templates_dir() / "report.html.j2").is_file()
