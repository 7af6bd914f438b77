"""Charts of many ranks: over 16 the median across ranks, its p10–p90 band and the straggler view's slowest
ranks by name instead of a line each; 16 or fewer keep one line per rank.

The stores are real (Parquet written by the store's writer), the reports rendered as users get them.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from report_store import T0, run_info, save_run, write_rows
from test_report_panels import panels, svg_texts

from llamamon.report.rank_bands import band_columns, step_band, time_band
from llamamon.report.render import render_report
from llamamon.samples import Row, make_labels

RUN = "20261118T000000Z-node-a-0001"


def text(html: str) -> str:
    html = re.sub(r"<img[^>]*>", " ", html)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def ranks_report(tmp_path, ranks: int, slow: dict[int, float], steps: int = 60) -> str:
    """One run of ``ranks`` ranks logging loss (rank r's: 1/(s+1) + r/100) and step time (1 s, or slow[r])."""
    metrics = tmp_path / ".metrics"
    info = run_info(RUN, T0, T0 + steps * 2.0, host="node-a")
    save_run(metrics, info)
    rows = []
    for rank in range(ranks):
        labels = make_labels(rank=rank, local_rank=rank % 8, node_rank=rank // 8)
        for s in range(steps):
            t = T0 + s * 2.0 + rank * 1e-3
            rows.append(Row(t, "training", "loss", 1.0 / (s + 1) + rank / 100, labels, step=s))
            rows.append(Row(t, "training", "step_time", slow.get(rank, 1.0), labels, step=s))
    write_rows(metrics, rows, run=RUN, host="node-a")
    return render_report(metrics, [info], tmp_path / "r.html").read_text()


def test_the_band_is_the_median_and_p10_p90_of_the_ranks_per_column():
    # 20 ranks, rank r's mean at every step is r (its min r - 1, max r + 1); rank 3 was NaN once at step 4.
    rows = pl.DataFrame(
        {
            "run": [RUN] * 200,
            "labels": [f'{{"rank":"{r}"}}' for r in range(20) for _ in range(10)],
            "step": [s for _ in range(20) for s in range(10)],
            "mean": [float(r) for r in range(20) for _ in range(10)],
            "min": [r - 1.0 for r in range(20) for _ in range(10)],
            "max": [r + 1.0 for r in range(20) for _ in range(10)],
            "nonfinite": [int(r == 3 and s == 4) for r in range(20) for s in range(10)],
        }
    )
    cols = band_columns(rows, "step")
    assert cols["step"].to_list() == [float(s) for s in range(10)]
    ranks = np.arange(20.0)
    assert cols["median"].to_list() == pytest.approx([np.median(ranks)] * 10)  # 9.5
    assert cols["p10"].to_list() == pytest.approx([np.quantile(ranks, 0.1)] * 10)  # 1.9
    assert cols["p90"].to_list() == pytest.approx([np.quantile(ranks, 0.9)] * 10)  # 17.1
    assert cols["min"].to_list() == [-1.0] * 10
    assert cols["max"].to_list() == [20.0] * 10
    assert cols["nonfinite"].to_list() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]


def test_a_named_rank_is_drawn_from_its_first_label_set_in_step_order():
    # 20 ranks; rank 3 logged two label sets (its two GPUs), gpu=1's rows first and its steps out of order.
    labels = [f'{{"rank":"{r}"}}' for r in range(20) for _ in range(10)]
    labels[30:40] = ['{"gpu":"1","rank":"3"}'] * 10
    rows = pl.DataFrame(
        {
            "run": [RUN] * 210,
            "labels": labels + ['{"gpu":"0","rank":"3"}'] * 10,
            "step": [s for _ in range(20) for s in reversed(range(10))] + list(range(10)),
            "mean": [float(r) for r in range(20) for _ in range(10)] + [-1.0] * 10,
            "min": [0.0] * 210,
            "max": [0.0] * 210,
            "nonfinite": [0] * 210,
        }
    )
    lines = step_band(rows, [(RUN, 3, "node-a · rank 3"), (RUN, 7, "node-a · rank 7"), (RUN, 99, "gone")], smooth=False)
    named = {ln.label: ln for ln in lines[1:]}
    assert list(named) == ["node-a · rank 3", "node-a · rank 7"]  # in the given order; a rank not there is left out
    assert named["node-a · rank 3"].x.tolist() == [float(s) for s in range(10)]
    assert named["node-a · rank 3"].y.tolist() == [3.0] * 10  # gpu=1's rows, the first label set, not gpu=0's
    assert named["node-a · rank 7"].y.tolist() == [7.0] * 10


def test_over_time_the_band_keeps_the_lowest_and_highest_series():
    times = np.array([0, 0, 0, 60, 60, 60], dtype="datetime64[s]").astype("datetime64[us]")
    rows = pl.DataFrame({"mean": [0.9, 0.8, 0.1, 0.9, 0.7, 0.9], "nonfinite": [0] * 6}).with_columns(
        pl.col("mean").alias("min"), pl.col("mean").alias("max")
    )
    band, low, high = time_band(rows, times, 3)
    assert band.label == "median of 3 series (band p10–p90)"
    assert band.x.tolist() == times[[0, 3]].tolist()  # datetimes stay datetimes
    assert band.y.tolist() == pytest.approx([0.8, 0.9])
    assert band.lo.tolist() == pytest.approx([0.24, 0.74])
    assert low.y.tolist() == [0.1, 0.7]  # the idle series shows
    assert high.y.tolist() == [0.9, 0.9]
    assert low.legend  # one legend entry for the pair
    assert not high.legend


def test_twenty_ranks_draw_the_median_band_and_the_straggler_views_slowest_ranks(tmp_path):
    html = ranks_report(tmp_path, 20, slow={13: 1.6, 4: 1.4})
    found = panels(html)
    for pid in ("loss", "stragglers"):
        legend = [t for t in svg_texts(found[pid][1]) if " · rank " in t or t.startswith("median")]
        ranks = [t for t in legend if " · rank " in t]
        assert ranks[:2] == ["node-a · rank 13", "node-a · rank 4"], pid  # the slowest first, named alike
        assert len(ranks) == 4, pid  # not 20 lines
        assert legend[0] == "median of ranks (band p10–p90)"
    loss_legend = svg_texts(found["loss"][1])
    assert "median of ranks (smoothed)" in loss_legend
    assert not any(t.startswith("rank=") for t in loss_legend)
    assert "With 20 ranks: the median across ranks with its p10–p90 band (grey)" in text(html)


def test_four_ranks_keep_one_loss_line_each(tmp_path):
    html = ranks_report(tmp_path, 4, slow={2: 1.6})
    legend = svg_texts(panels(html)["loss"][1])
    assert not any("median" in t for t in legend)
    assert [t for t in legend if t.startswith("local_rank=")] == [f"local_rank={r}, rank={r}" for r in range(4)]
    assert "With 4 ranks" not in text(html)


def test_a_jobs_ranks_get_a_summary_row_each_with_their_run_and_shared_series_stay_side_by_side(tmp_path):
    metrics = tmp_path / ".metrics"
    infos = []
    for node in range(3):
        run = f"20261118T000000Z-node-{node}-000{node}"
        info = run_info(run, T0, T0 + 60, host=f"node-{node}", run_group="job")
        save_run(metrics, info)
        infos.append(info)
        rows = [Row(T0 + s, "system", "cpu_usage", 0.5, step=None) for s in range(60)]
        for local in range(2):
            labels = make_labels(rank=node * 2 + local, local_rank=local, node_rank=node)
            rows += [Row(T0 + s, "training", "loss", 1.0 + node, labels, step=s) for s in range(60)]
        write_rows(metrics, rows, run=run, host=f"node-{node}")
    html = render_report(metrics, infos, tmp_path / "r.html")
    html = html.read_text()
    training = html[
        html.index("<h3>Training summary</h3>") : html.index("</table>", html.index("<h3>Training summary"))
    ]
    assert 'class="group"' not in training
    assert re.findall(r'<th scope="col">([^<]*)</th>', training)[:3] == ["run", "metric", "labels"]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>loss</td><td>([^<]*)</td>", training)
    assert [labels.split("rank=")[-1] for _, labels in rows] == ["0", "1", "2", "3", "4", "5"]  # in rank order
    assert len({run for run, _ in rows}) == 3
    system = html[html.index("<h3>System summary</h3>") :]
    assert system[: system.index("</table>")].count('class="group"') == 3  # cpu_usage of every node side by side
