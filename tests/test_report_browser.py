"""The HTML report in a real headless Chromium with networking off: loads cleanly, every section present.

Screenshots of each dashboard are kept under test-artifacts/ (gitignored) for people to look at.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, require_binary
from report_store import T0, inference_rows, run_info, save_run, system_rows, training_rows, write_rows

from llamamon.report.data import AlertSpan
from llamamon.report.render import render_report
from llamamon.samples import make_labels

pytestmark = pytest.mark.integration

EVIL = '<script>document.title="pwned"</script> & "q"'
ARTIFACTS = REPO / "test-artifacts"
RUN = "20261118T034000Z-gpu-box-a1b2"


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    metrics_dir = root / ".metrics"
    info = run_info(RUN, T0, T0 + 1200, name=EVIL, tags={"note": EVIL}, command=["python", "train.py", EVIL])
    save_run(metrics_dir, info)
    write_rows(metrics_dir, system_rows(T0, 240, 5.0), run=RUN)
    write_rows(metrics_dir, training_rows(T0, 480, 2.5, nan_at=300), run=RUN)
    write_rows(metrics_dir, inference_rows(T0, 600), run=RUN)
    alerts = [
        AlertSpan("loss_plateau", "warning", make_labels(metric="loss"), T0 + 600, T0 + 800, RUN, "loss flat"),
        AlertSpan("gpu_underused", "critical", make_labels(gpu="0", metric="gpu_utilization"), T0 + 700, None, RUN),
    ]
    return render_report(metrics_dir, [info], root / "report.html", alerts=alerts)


def test_report_loads_offline_with_every_section_and_no_console_errors(report, tmp_path):
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    r = chromium(binary, tmp_path / "profile", "--dump-dom", report.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    for section in ("overview", "alerts", "system", "training", "inference"):
        assert f'id="{section}"' in dom, section
    assert dom.count("<img ") == report.read_text().count("<img ")
    assert dom.count("<img ") >= 15
    assert "<script" not in dom  # the hostile run name stayed text
    assert "&lt;script&gt;document.title" in dom
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    assert title.startswith("&lt;script&gt;document.title=")  # the script never ran: the title is the name
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Refused" in line]
    assert console == [], console  # nothing blocked by the CSP, no errors


@pytest.mark.slow
def test_screenshots_of_each_dashboard(report, tmp_path):
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    for section in ("overview", "alerts", "system", "training", "inference"):
        shot = ARTIFACTS / f"report-{section}.png"
        shot.unlink(missing_ok=True)
        r = chromium(
            binary,
            tmp_path / f"profile-{section}",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            f"{report.as_uri()}#{section}",
        )
        assert r.returncode == 0, r.stderr[-2000:]
        with Image.open(shot) as im:
            colours = im.convert("RGB").resize((64, 100)).getcolors(64 * 100)
        assert colours is not None, f"{shot.name} has too many colours to count"
        assert len(colours) > 20, f"{shot.name} looks blank"
