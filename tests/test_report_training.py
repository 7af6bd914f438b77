"""The report of a training run as its user reads it: what the run is about first, one legend entry per run,
validation in its run's colour, smoothing that does not lag sparse logs, numbers instead of empty axes,
alert values written for people, the run id once, and a Markdown summary a CI step summary can show.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from report_store import T0, inference_rows, run_info, save_run, system_rows, training_rows, write_rows
from test_report_panels import panels, svg_texts

from llamamon.config import load_config
from llamamon.report import charts
from llamamon.report.alerts import alert_replay
from llamamon.report.render import render_report
from llamamon.report.smoothing import debiased_ema, smoothing_weight
from llamamon.samples import Row

RUNS = ["20261118T000000Z-box-000a", "20261118T010000Z-box-000b", "20261118T020000Z-box-000c"]


def sections(html: str) -> list[str]:
    return re.findall(r'<section id="(\w+)" class="dashboard" data-dashboard', html)


def table(html: str, title: str) -> str:
    start = html.index(f"<h3>{title}</h3>")
    return html[start : html.index("</table>", start)]


def test_training_comes_first_for_a_training_run_and_inference_for_a_server(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    train, serve = run_info(RUNS[0], T0, T0 + 600), run_info(RUNS[1], T0, T0 + 600, name="server")
    for info in (train, serve):
        save_run(metrics_dir, info)
        write_rows(metrics_dir, system_rows(T0, 60, 5.0), run=info.id)
    write_rows(metrics_dir, training_rows(T0, 200, 2.5), run=train.id)
    write_rows(metrics_dir, inference_rows(T0, 300), run=serve.id)
    trained = render_report(metrics_dir, [train], tmp_path / "t.html").read_text()
    served = render_report(metrics_dir, [serve], tmp_path / "s.html").read_text()
    assert sections(trained) == ["training", "system", "inference"]  # the empty one, a hint only, last
    assert sections(served) == ["inference", "system", "training"]
    nav = re.search(r"<nav .*?</nav>", trained, re.S).group(0)
    assert nav.index("#training") < nav.index("#system")


def test_step_is_no_metric_of_the_training_summary(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    info = run_info(RUNS[0], T0, T0 + 600)
    save_run(metrics_dir, info)
    rows = training_rows(T0, 100, 2.5)
    rows += [Row(r.time, "training", "step", float(r.step)) for r in rows if r.metric == "loss"]
    write_rows(metrics_dir, rows, run=info.id)
    html = render_report(metrics_dir, [info], tmp_path / "r.html").read_text()
    summary = table(html, "Training summary")
    assert "<td>loss</td>" in summary
    assert "<td>step</td>" not in summary
    assert re.search(r'<th scope="row">last step</th><td class="num">100</td>', html)


def test_a_chart_with_one_point_shows_the_number(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    info = run_info(RUNS[0], T0, T0 + 600)
    save_run(metrics_dir, info)
    rows = [Row(T0 + s, "training", "loss", 3.0 - 0.01 * s, step=s) for s in range(1, 50)]
    rows.append(Row(T0 + 50, "training", "tokens_per_second", 1234.5))  # HF's end-of-run throughput, once
    write_rows(metrics_dir, rows, run=info.id)
    found = panels(render_report(metrics_dir, [info], tmp_path / "r.html").read_text())
    alt, svg = found["tp-tokens_per_second"]
    texts = svg_texts(svg)
    assert "1,234/s" in texts
    assert "1,234/s" in alt
    assert 'id="axes_1"' not in svg  # no empty axes
    assert 'id="axes_1"' in found["loss"][1]  # a curve of 49 points stays a chart


def loss_store(metrics_dir, runs=RUNS, steps=300):
    infos = []
    for k, run in enumerate(runs):
        info = run_info(run, T0 + k * 3600, T0 + k * 3600 + steps * 2.5, name=f"run-{'abc'[k]}")
        save_run(metrics_dir, info)
        write_rows(metrics_dir, training_rows(info.start, steps, 2.5, seed=k), run=run)
        infos.append(info)
    return infos


def strokes(svg: str) -> list[tuple[str, float, bool]]:
    """(colour, width, dashed) of every stroked path: the lines and the legend's samples."""
    out = []
    for style in re.findall(r'<path [^>]*style="([^"]*stroke: #[0-9a-f]{6}[^"]*)"', svg):
        colour = re.search(r"stroke: (#[0-9a-f]{6})", style).group(1)
        width = re.search(r"stroke-width: ([\d.]+)", style)
        out.append((colour, float(width.group(1)) if width else 1.0, "stroke-dasharray" in style))
    return out


def test_loss_legend_has_one_entry_per_run_and_validation_is_dashed_in_its_runs_colour(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    infos = loss_store(metrics_dir)
    _alt, svg = panels(render_report(metrics_dir, infos, tmp_path / "r.html").read_text())["loss"]
    texts = svg_texts(svg)
    for name in ("run-a", "run-b", "run-c", "raw", "smoothed", "validation"):
        assert texts.count(name) == 1, (name, texts)
    assert not [t for t in texts if "(raw)" in t or "(smoothed)" in t or "validation loss" in t], texts
    muted = charts.MUTED.lower()
    runs = {charts.colour(i).lower() for i in range(3)}
    dashed = {c for c, _w, d in strokes(svg) if d} - {muted}
    smoothed = {c for c, w, d in strokes(svg) if not d and w == pytest.approx(2.0)} - {muted}
    assert dashed == runs  # each run's validation line in that run's colour
    assert smoothed == runs


def test_one_run_keeps_three_self_describing_legend_entries_in_one_colour(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    infos = loss_store(metrics_dir, RUNS[:1])
    _alt, svg = panels(render_report(metrics_dir, infos, tmp_path / "r.html").read_text())["loss"]
    texts = svg_texts(svg)
    assert {"loss (raw)", "loss (smoothed)", "validation loss"} <= set(texts)
    assert "raw" not in texts  # no style key needed
    assert "validation" not in texts
    drawn = {c for c, _w, _d in strokes(svg)} - {charts.GRID.lower(), charts.MUTED.lower()}  # grid and ticks
    assert drawn == {charts.colour(0).lower()}


def test_without_steps_loss_is_drawn_against_time_with_the_same_colours_and_legend(tmp_path):
    # A zero-code Trainer whose lines carry no step: loss and validation loss by time, three runs.
    metrics_dir = tmp_path / ".metrics"
    timed = []
    for k, run in enumerate(RUNS):
        info = run_info(run, T0 + k * 3600, T0 + k * 3600 + 750, name=f"run-{'abc'[k]}")
        save_run(metrics_dir, info)
        rows = [r for r in training_rows(info.start, 300, 2.5, seed=k) if r.metric in ("loss", "validation_loss")]
        write_rows(metrics_dir, [Row(r.time, r.group, r.metric, r.value, r.labels) for r in rows], run=run)
        timed.append(info)
    alt, svg = panels(render_report(metrics_dir, timed, tmp_path / "r.html").read_text())["loss"]
    assert alt == "Loss and validation loss over time"
    texts = svg_texts(svg)
    for name in ("run-a", "run-b", "run-c", "validation"):
        assert texts.count(name) == 1, (name, texts)
    assert not [t for t in texts if "validation_loss" in t or "validation loss" in t], texts
    runs = {charts.colour(i).lower() for i in range(3)}
    assert {c for c, _w, d in strokes(svg) if d} - {charts.MUTED.lower()} == runs


def test_smoothing_weight_follows_the_number_of_points():
    assert smoothing_weight(9) == 0.0  # too few to smooth: drawn raw
    sparse, dense = smoothing_weight(31), smoothing_weight(800)
    assert 0 < sparse < dense <= 0.95
    assert smoothing_weight(10**6) == 0.95
    # Lag, in points, of an EMA of weight w is about 1/(1-w): a shrinking share of a longer curve.
    assert 1 / (1 - sparse) / 31 > 1 / (1 - dense) / 800


def test_debiased_ema_is_tensorboards_and_does_not_lag_a_sparse_log():
    # TensorBoard's smoothing of [1, 2, 3] with weight 0.6, worked by hand: 1, 1.625, 2.2245...
    w = 0.6
    assert debiased_ema(np.array([1.0, 2.0, 3.0]), w) == pytest.approx(
        [1.0, (0.4 * 1 * 0.6 + 0.4 * 2) / (1 - w**2), (0.4 * 0.36 + 0.4 * 2 * 0.6 + 0.4 * 3) / (1 - w**3)]
    )
    assert debiased_ema(np.array([5.0, np.nan, 5.0]), 0.9).tolist()[::2] == [5.0, 5.0]  # no pull towards 0
    assert math.isnan(debiased_ema(np.array([5.0, np.nan, 5.0]), 0.9)[1])
    # A Trainer logging 31 times over a falling loss: the old α = 0.1 ended 0.5 above the last value.
    loss = np.linspace(4.0, 2.0, 31)
    fixed = debiased_ema(loss, 0.9)[-1] - loss[-1]
    chosen = debiased_ema(loss, smoothing_weight(len(loss)))[-1] - loss[-1]
    assert fixed > 0.5
    assert 0 < chosen < 0.1


def test_alert_text_writes_values_for_people(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    info = run_info(RUNS[0], T0, T0 + 600)
    save_run(metrics_dir, info)
    rows = [Row(T0 + s, "training", "learning_rate", 1.1867936095484036e-08, step=s) for s in range(1, 20)]
    write_rows(metrics_dir, rows, run=info.id)
    replay = alert_replay(load_config(None))
    html = render_report(metrics_dir, [info], tmp_path / "r.html", alerts=replay).read_text()
    assert "Learning rate 1.19e-08 below the minimum" in html
    assert "1.1867936095484036e-08" not in html


def header(html: str) -> str:
    """The page header and the run cards: from <body> to the alert summary."""
    return html[html.index("<body") : html.index('<div class="overview-row">')]


def test_run_id_is_printed_once_in_the_header(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    unnamed = run_info(RUNS[0], T0, T0 + 600, name=None)
    named = run_info(RUNS[1], T0, T0 + 600, name="llama-ft")
    for info in (unnamed, named):
        save_run(metrics_dir, info)
        write_rows(metrics_dir, system_rows(T0, 20, 5.0), run=info.id)
    for info in (unnamed, named):
        assert header(render_report(metrics_dir, [info], tmp_path / "r.html").read_text()).count(info.id) == 1
    both = header(render_report(metrics_dir, [unnamed, named], tmp_path / "both.html").read_text())
    assert both.count(unnamed.id) == 1
    assert both.count(named.id) == 1
    assert both.count("llama-ft") == 1


def test_markdown_summary_says_nan_for_a_last_loss_that_was_nan(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    info = run_info(RUNS[0], T0, T0 + 600)
    save_run(metrics_dir, info)
    rows = [Row(T0 + s, "training", "loss", 3.0 - 0.01 * s, step=s) for s in range(1, 50)]
    rows.append(Row(T0 + 50, "training", "loss", float("nan"), step=50))
    write_rows(metrics_dir, rows, run=info.id)
    text = render_report(metrics_dir, [info], tmp_path / "r.md", fmt="markdown").read_text()
    assert "| last loss | NaN |" in text
