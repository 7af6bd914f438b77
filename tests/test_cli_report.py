"""`llamamon report` end to end through the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, llamamon_env, run_llamamon
from report_store import save_run, write_rows

from llamamon.samples import Row, RunInfo

T0 = 1_790_000_000.0


def _store(metrics_dir, run_id="20260923T000000Z-host-0001", start=T0, name=None, groups=("system",)):
    info = RunInfo(id=run_id, host="host", start=start, end=start + 300, exit_code=0, name=name)
    save_run(metrics_dir, info)
    rows = []
    for i in range(60):
        t = start + i * 5
        if "system" in groups:
            rows.append(Row(t, "system", "cpu_usage", 0.5))
        if "training" in groups:
            rows.append(Row(t, "training", "loss", 1.0 / (i + 1), step=i))
    write_rows(metrics_dir, rows, run=run_id)
    return info


def test_writes_one_html_file_and_prints_its_path(tmp_path, metrics_dir):
    _store(metrics_dir)
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "-o", "out/r.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "out/r.html"
    assert r.stderr == b""  # silent without a terminal: no progress bar in logs
    html = (tmp_path / "out" / "r.html").read_text()
    assert "<!DOCTYPE html>" in html
    assert 'id="system"' in html


def test_only_system_metrics_say_how_to_record_the_rest(tmp_path, metrics_dir):
    _store(metrics_dir)
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    html = (tmp_path / "llamamon-report.html").read_text()
    assert "No training metrics recorded" in html
    assert "No inference metrics recorded" in html
    assert "No GPU data" in html


def test_empty_store_is_a_clear_message(tmp_path, metrics_dir):
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"Error: no runs recorded in {metrics_dir} (record one with `llamamon record -- CMD`)"
    )
    assert not (tmp_path / "llamamon-report.html").exists()


def test_unknown_run_and_dashboard_exit_2(tmp_path, metrics_dir):
    _store(metrics_dir)
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "--run", "nope", cwd=tmp_path)
    assert r.returncode == 2
    assert 'no run matches "nope"' in r.stderr.decode()
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "--dashboard", "system,gpus", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown dashboard 'gpus'" in r.stderr.decode()
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "--since", "soon", cwd=tmp_path)
    assert r.returncode == 2
    assert "--since" in r.stderr.decode()


def test_corrupt_file_is_named_in_the_report(tmp_path, metrics_dir):
    info = _store(metrics_dir)
    bad = next(metrics_dir.glob(f"group=system/date=*/run={info.id}")) / "torn.parquet"
    bad.write_bytes(b"PAR1\x00\x01 torn write")
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "--markdown", "-o", "s.md", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert "torn.parquet" in r.stderr.decode()  # warned once on stderr
    assert "torn.parquet" in (tmp_path / "s.md").read_text()


def test_several_runs_overlay_with_side_by_side_summary(runner, tmp_path, metrics_dir):
    from llamamon.cli import cli

    _store(metrics_dir, "20260923T000000Z-host-0001", name="alpha", groups=("system", "training"))
    _store(metrics_dir, "20260924T000000Z-host-0002", start=T0 + 86400, name="beta", groups=("system", "training"))
    result = runner.invoke(
        cli, ["report", "--metrics-dir", str(metrics_dir), "--run", "alpha", "--run", "beta", "-o", "m.html"]
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "m.html").read_text()
    assert html.count('class="group"') >= 2  # one column group per run in the summary tables
    assert "alpha" in html
    assert "beta" in html
    assert "2 runs" in html


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom llamamon.cli import cli\n"
        "heavy = {'polars', 'pyarrow', 'matplotlib', 'jinja2'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=llamamon_env(), check=True)


def test_times_are_local_with_the_zone_shown(tmp_path, metrics_dir):
    _store(metrics_dir)
    env = llamamon_env(TZ="Asia/Kolkata")
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "-o", "r.html", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr.decode()
    html = (tmp_path / "r.html").read_text()
    assert "times in IST, UTC+05:30" in html
    assert "2026-09-21 19:43:20 IST" in html  # the run's start, T0, in India


def test_alerts_come_from_the_rules_engine_and_shade_their_charts(tmp_path, metrics_dir):
    info = RunInfo(id="20260923T000000Z-host-0001", host="host", start=T0, end=T0 + 600, exit_code=0)
    save_run(metrics_dir, info)
    rows = [Row(T0 + i * 5, "system", "memory_usage", 0.95 if 40 <= i < 80 else 0.5) for i in range(120)]
    write_rows(metrics_dir, rows, run=info.id)
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "-o", "r.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    html = (tmp_path / "r.html").read_text()
    critical = re.search(r'class="badge critical">critical</span> (\d+) firing spans?: ([^<]*)<', html)
    assert critical is not None
    assert "memory_critical" in critical.group(2).split(", ")  # the built-in rule from memory.critical
    assert 'id="panel-alert-timeline"' in html
    assert "still firing</td>" not in html  # memory fell back to 50%: every span was resolved
    assert "<td>memory_critical</td>" in html


def test_since_shows_that_period_of_the_runs_and_the_alerts_firing_in_it(tmp_path, metrics_dir):
    import time

    now = time.time()
    h = 3600.0
    start = now - 72 * h
    info = RunInfo(id="20260923T000000Z-host-0001", host="host", start=start, end=now - h, exit_code=0, name="week")
    save_run(metrics_dir, info)
    # Memory high three times: long before the window, across its start, inside it. CPU 20% before, 70% inside.
    high = [(now - 60 * h, now - 58 * h), (now - 26 * h, now - 22 * h), (now - 10 * h, now - 8 * h)]
    rows = []
    for i in range(int(71 * h // 300)):
        t = start + i * 300
        rows.append(Row(t, "system", "cpu_usage", 0.2 if t < now - 24 * h else 0.7))
        rows.append(Row(t, "system", "memory_usage", 0.95 if any(a <= t < b for a, b in high) else 0.5))
    write_rows(metrics_dir, rows, run=info.id)

    def critical_spans(html: str) -> int:
        found = re.search(r'class="badge critical">critical</span> (\d+) firing spans?', html)
        assert found is not None
        return int(found.group(1))

    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "-o", "all.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    whole = (tmp_path / "all.html").read_text()
    r = run_llamamon("report", "--metrics-dir", str(metrics_dir), "--since", "24h", "-o", "day.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    day = (tmp_path / "day.html").read_text()
    assert "20.0%" in whole  # CPU's minimum over the whole run
    assert "20.0%" not in day  # ... is before the window: the summary covers the last 24 h only
    assert "70.0%" in day
    assert "data from " in day
    assert "data from " not in whole
    # Two critical rules (memory_critical, memory_usage) fire per episode; the first episode ended before the
    # window, the second was still firing when it began (replayed over the whole run, so it is not lost).
    assert critical_spans(whole) == 6
    assert critical_spans(day) == 4
