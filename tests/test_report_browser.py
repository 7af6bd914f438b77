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
from llamamon.samples import Row, make_labels

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


# Run in the test's copy of the page only (the report itself holds no script and forbids one): lists every
# element that reaches past the viewport's right edge, or its card's, without a scrolling box to hold it.
MEASURE = """<script>
const out = [];
const inScroll = (el) => { for (let p = el.parentElement; p; p = p.parentElement) {
  const o = getComputedStyle(p).overflowX; if (o === "auto" || o === "scroll") return true; } return false; };
const cards = ".run, .alert-summary, .figures, .dashboard, .notice";
for (const el of document.querySelectorAll("main *, header *")) {
  const r = el.getBoundingClientRect();
  const card = el.parentElement && el.parentElement.closest(cards);
  const edge = card ? card.getBoundingClientRect().right : document.documentElement.clientWidth;
  if (r.width && r.right > Math.min(edge, document.documentElement.clientWidth) + 1 && !inScroll(el))
    out.push(el.tagName + "." + el.className + " right=" + Math.round(r.right) + " edge=" + Math.round(edge));
}
const scrolled = [...document.querySelectorAll(".scroll")].filter((s) => s.scrollWidth > s.clientWidth).length;
const pre = document.createElement("pre");
pre.id = "measured";
pre.textContent = btoa(JSON.stringify({page: document.documentElement.scrollWidth,
  view: document.documentElement.clientWidth, spill: out.slice(0, 20), scrolled: scrolled}));
document.body.append(pre);
</script>"""


def measured_layout(binary: str, page: Path, profile: Path, width: int) -> dict:
    import base64
    import json

    html = page.read_text(encoding="utf-8")
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe = page.with_name(f"{page.stem}-measured-{width}.html")
    probe.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    r = chromium(binary, profile, f"--window-size={width},1000", "--dump-dom", probe.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(base64.b64decode(re.search(r'<pre id="measured">([A-Za-z0-9+/=]+)</pre>', r.stdout).group(1)))


@pytest.mark.parametrize(("runs", "width"), [(3, 600), (6, 1280)])
def test_comparison_tables_stay_within_the_page(tmp_path, runs, width):
    # Runs side by side: key figures with a 28-character id heading each run's column, summary tables of
    # 2 + 5 per run columns. Three runs on a narrow window and six on a laptop's both reached past the page
    # (the key figures widened their grid column). Now nothing does; the widest tables scroll in their box.
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    metrics_dir = tmp_path / ".metrics"
    infos = []
    for k in range(runs):
        run = f"2026111{k}T034000Z-gpu-box-a1b{k}"
        info = run_info(run, T0, T0 + 1200, name=None)  # unnamed: the run's id heads its columns
        save_run(metrics_dir, info)
        write_rows(metrics_dir, system_rows(T0, 60, 5.0, seed=k), run=run)
        write_rows(metrics_dir, training_rows(T0, 300, 2.5, seed=k), run=run)
        infos.append(info)
    page = render_report(metrics_dir, infos, tmp_path / "runs.html")
    m = measured_layout(binary, page, tmp_path / "profile", width)
    assert m["spill"] == [], m
    assert m["page"] <= m["view"], m
    assert m["scrolled"] >= 1, m  # some table is wider than its box and scrolls there


def test_straggler_view_renders_and_stays_within_a_narrow_page(tmp_path):
    """Two nodes' runs of two ranks each, one rank slow: the straggler panel and its table load in Chromium
    and fit a 600 px window (the rank names and the key figures' per-rank ranges are the long cells)."""
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    metrics_dir = tmp_path / ".metrics"
    infos = []
    for node in range(2):
        run = f"20261118T03400{node}Z-node-{node}-a1b{node}"
        info = run_info(run, T0, T0 + 400, name=None, host=f"node-{node}")
        save_run(metrics_dir, info)
        rows = []
        for local in range(2):
            rank = 2 * node + local
            labels = make_labels(rank=rank, local_rank=local, node_rank=node)
            dt = 1.5 if rank == 3 else 1.0
            rows += [Row(T0 + s * dt, "training", "loss", 1.0 / (s + 1), labels, step=s) for s in range(200)]
        write_rows(metrics_dir, rows, run=run)
        infos.append(info)
    page = render_report(metrics_dir, infos, tmp_path / "ranks.html")
    r = chromium(binary, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    panel = re.search(r'<figure class="panel" id="panel-stragglers">\s*<img src="data:image/svg', r.stdout)
    assert panel, "no straggler panel in the rendered page"
    assert "node-1 · rank 3 (straggler)" in r.stdout
    m = measured_layout(binary, page, tmp_path / "profile", 600)
    assert m["spill"] == [], m
    assert m["page"] <= m["view"], m


@pytest.mark.parametrize("width", [600, 1280])
def test_eight_gpu_cards_load_and_stay_within_the_page(tmp_path, width):
    """The System dashboard of an 8-GPU run: its 8 cards (small multiples) are drawn in Chromium, one below
    the other, each as wide as the dashboard and no wider, on a laptop's window and a narrow one."""
    from test_report_gpu_panels import eight_gpu_store

    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    info = eight_gpu_store(tmp_path / ".metrics")
    page = render_report(tmp_path / ".metrics", [info], tmp_path / "gpus.html", selected=["system"])
    r = chromium(binary, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    cards = re.findall(r'<figure class="panel" id="panel-gpu-(\d)">\s*<img src="data:image/svg', r.stdout)
    assert cards == [str(g) for g in range(8)]
    m = measured_layout(binary, page, tmp_path / "profile", width)
    assert m["spill"] == [], m
    assert m["page"] <= m["view"], m
    if width == 1280:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report-gpu-cards.png"
        done = chromium(
            binary, tmp_path / "profile-shot", "--window-size=1280,6000", f"--screenshot={shot}", page.as_uri()
        )
        assert done.returncode == 0, done.stderr[-2000:]
