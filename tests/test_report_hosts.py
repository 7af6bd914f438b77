"""The System dashboard of a job on many hosts: one small chart per host (small multiples), in node-rank
order; one host, or two, keep the one-chart look."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from report_store import T0, run_info, save_run, system_rows, write_rows
from test_report_panels import panels, svg_texts

from llamamon.report.charts import Axis, Line, colour
from llamamon.report.config import report_settings
from llamamon.report.render import render_report
from llamamon.report.small_multiples import Grid, columns_for, decimate, render_grid
from llamamon.samples import Row


def job_store(metrics_dir, hosts: int) -> list:
    """``hosts`` runs of one job, one per node (node ranks in reverse of host names)."""
    runs = []
    for n in range(hosts):
        host = f"node-{n:02d}"
        info = run_info(
            f"20261118T000000Z-{host}-{n:04x}", T0, T0 + 600, host=host, run_group="job", node_rank=hosts - 1 - n
        )
        save_run(metrics_dir, info)
        rows = system_rows(T0, 60, 10.0, gpus=2, seed=n)
        write_rows(metrics_dir, rows, run=info.id, host=host)
        runs.append(info)
    return runs


def cell_names(svg: str) -> list[str]:
    return [t for t in svg_texts(svg) if re.fullmatch(r"node-\d\d", t)]


def test_a_job_on_many_hosts_gets_one_small_chart_per_host_in_node_rank_order(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    runs = job_store(metrics_dir, 6)
    thresholds = report_settings(None, str(metrics_dir)).thresholds  # the defaults: utilization_min 70%
    html = render_report(metrics_dir, runs, tmp_path / "r.html", selected=["system"], thresholds=thresholds)
    found = panels(html.read_text())
    alt, svg = found["gpu-util"]
    assert alt == "GPU utilisation: gpu_utilization over time, one chart per host (6 hosts)"
    assert cell_names(svg) == [f"node-{n:02d}" for n in reversed(range(6))]  # node rank 0 is node-05
    assert "gpu=0" in svg_texts(svg)  # the colours' legend: the GPUs, same colour on every host
    assert "dashed: utilization_min 70%" in svg_texts(svg)
    assert {"0%", "40%", "80%"} <= set(svg_texts(svg))  # the shared scale, written once per row
    cpu_alt, cpu_svg = found["cpu"]
    assert "one chart per host (6 hosts)" in cpu_alt
    assert len(cell_names(cpu_svg)) == 6
    # One figure per panel, however many hosts: no panel is repeated per host.
    assert not any(pid.startswith("cpu-") for pid in found)


def test_one_or_two_hosts_keep_the_single_chart(tmp_path):
    for hosts in (1, 2):
        metrics_dir = tmp_path / f"m{hosts}"
        runs = job_store(metrics_dir, hosts)
        html = render_report(metrics_dir, runs, tmp_path / f"r{hosts}.html", selected=["system"])
        alt, svg = panels(html.read_text())["cpu"]
        assert alt == "CPU: cpu_usage over time"
        assert cell_names(svg) == []


def test_grid_columns_keep_64_hosts_a_page_wide():
    assert [columns_for(n) for n in (1, 3, 4, 8, 16, 17, 64)] == [1, 3, 4, 4, 4, 8, 8]


def test_an_alert_on_one_hosts_run_shades_that_hosts_cell_only(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    runs = job_store(metrics_dir, 4)
    hot = runs[1]  # node-01: its CPU pinned for two minutes
    write_rows(
        metrics_dir, [Row(T0 + 200 + i * 10, "system", "cpu_usage", 1.0) for i in range(12)], run=hot.id, host=hot.host
    )
    config = tmp_path / "monitoring.yaml"
    config.write_text(
        'alerts:\n  rules:\n    cpu_pinned:\n      condition: "cpu_usage > 0.99"\n      severity: critical\n'
    )
    settings = report_settings(str(config), str(metrics_dir))
    html = render_report(metrics_dir, runs, tmp_path / "r.html", selected=["system"], alerts=settings.alerts())
    _alt, svg = panels(html.read_text())["cpu"]
    shaded = re.findall(r"fill: #d55e00; opacity: 0\.18", svg, flags=re.I)
    assert len(shaded) == 1  # one cell, node-01's; the three others and the lines are not critical-red


def test_a_cells_line_keeps_each_pixel_columns_low_and_high_and_its_gaps():
    x = np.linspace(0.0, 1.0, 10_000)
    y = np.sin(x * 20)
    y[4321] = 9.0  # a one-sample spike
    y[7000] = np.nan  # a gap: two stretches
    parts = decimate(x, y, 100)
    assert len(parts) == 2
    assert all(len(p) <= 2 * 100 for p in parts)
    points = np.concatenate(parts)
    assert 9.0 in points[:, 1]
    assert np.all(np.diff(points[:, 0]) > 0)  # still in x order
    assert points[:, 1].min() == pytest.approx(np.nanmin(y), abs=1e-6)


def test_a_grids_lines_are_one_path_per_place_in_the_cell_and_colour_with_their_gaps_kept():
    x = np.linspace(0.0, 600.0, 61)
    gappy = np.sin(x / 60)
    gappy[30] = np.nan  # a stretch each side of it
    cells = [
        (f"node-{n:02d}", [Line("", x, gappy + n, colour=colour(0)), Line("", x, np.cos(x / 60), colour=colour(1))])
        for n in range(6)
    ]
    fig = render_grid(Grid("CPU", Axis("cpu"), cells))
    (ax,) = fig.axes
    grid, frame, data = (c for c in ax.collections if isinstance(c, LineCollection))
    assert len(grid.get_paths()) == len(frame.get_paths()) == 1  # every cell's grid lines, one path
    first, second = (p.vertices for p in data.get_paths())  # the cells' first lines, then their second lines
    assert [tuple(c) for c in data.get_colors()] == [to_rgba(colour(0)), to_rgba(colour(1))]
    assert np.isnan(first[:, 1]).sum() == 6 * 2 - 1  # 12 stretches (a gap in each cell's line), NaN apart
    assert np.isnan(second[:, 1]).sum() == 6 - 1
    assert len(first) - 11 == 6 * 60  # every point still drawn: 61 a line, less its gap
