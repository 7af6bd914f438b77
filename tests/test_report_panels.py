"""Report panels as drawn: one axis per unit in the System "Cache" panel, legends that say what differs and fit."""

from __future__ import annotations

import base64
import re

import numpy as np
from report_store import T0, run_info, save_run, system_rows, write_rows

from llamamon.report import charts
from llamamon.report.render import render_report
from llamamon.samples import Row, make_labels

RUN = "20261118T000000Z-gpu-box-0001"
SERVER = {"instance": "127.0.0.1:8000", "model_name": "Qwen/Qwen2.5-0.5B-Instruct"}


def scraped_store(metrics_dir):
    """A run that scraped a vLLM with two engines: token counters in the 20k and KV-cache ratios of 0-2 %."""
    save_run(metrics_dir, run_info(RUN, T0, T0 + 600))
    rows = system_rows(T0, 120, 5.0, gpus=2)
    for i in range(120):
        t = T0 + i * 5
        for engine in ("0", "1"):
            labels = make_labels(engine=engine, **SERVER)
            rows += [
                Row(t, "custom", "vllm_prefix_cache_queries_total", 180.0 * i, labels),
                Row(t, "custom", "vllm_prefix_cache_hits_total", 150.0 * i, labels),
                Row(t, "custom", "vllm_gpu_cache_usage_perc", 0.02 * (i % 10) / 10 + 0.001 * int(engine), labels),
            ]
    write_rows(metrics_dir, rows, run=RUN, host="gpu-box")


def panels(html: str) -> dict[str, tuple[str, str]]:
    """Panel id -> (alt text, SVG text) from the self-contained HTML report."""
    found = re.findall(
        r'<figure class="panel" id="panel-([^"]+)">\s*<img src="data:image/svg\+xml;base64,([^"]+)" alt="([^"]*)"', html
    )
    return {pid: (alt, base64.b64decode(data).decode()) for pid, data, alt in found}


def svg_texts(svg: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.DOTALL)]


def test_cache_panel_is_split_by_unit_and_legends_drop_shared_labels(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    scraped_store(metrics_dir)
    html = render_report(metrics_dir, [run_info(RUN, T0, T0 + 600)], tmp_path / "r.html", selected=["system"])
    found = panels(html.read_text())
    assert "panel-cache" not in found
    counters_alt, counters_svg = found["cache-count"]
    ratio_alt, ratio_svg = found["cache-ratio"]
    assert counters_alt == "Cache (counters): vllm_prefix_cache_hits_total, vllm_prefix_cache_queries_total over time"
    assert ratio_alt == "Cache (ratio (0–1)): vllm_gpu_cache_usage_perc over time"
    ratio_texts = svg_texts(ratio_svg)
    assert "2%" in ratio_texts  # a percent axis up to the ratios' 2 %, not a count axis up to 20k
    assert not any(t.endswith("k") for t in ratio_texts)
    # Legends: the engine tells the lines apart; the server's instance and model are on every line.
    assert {"engine=0", "engine=1"} <= set(ratio_texts)
    assert "vllm_prefix_cache_hits_total · engine=1" in svg_texts(counters_svg)
    for _alt, svg in found.values():
        assert "instance=" not in svg
        assert "Qwen" not in svg
    # A chart's series that differ only in gpu keep just that label.
    assert {"gpu=0", "gpu=1"} <= set(svg_texts(found["gpu-util"][1]))


def test_legend_labels_keep_only_what_differs():
    sets = [{"instance": "a:1", "gpu": "0"}, {"instance": "a:1", "gpu": "1"}, {"instance": "a:1"}]
    assert charts.legend_labels(sets) == ["gpu=0", "gpu=1", ""]
    assert charts.legend_labels([{"instance": "a:1", "gpu": "0"}]) == ["instance=a:1, gpu=0"]
    assert charts.legend_labels([{"a": "1"}, {"a": "2", "b": "3"}]) == ["a=1", "a=2, b=3"]


def test_a_legend_of_long_labels_stays_inside_the_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    x = np.arange(10, dtype=float)
    labels = [f"vllm_request_prompt_tokens_sum · engine={i} · handler=/v1/chat/completions-{i:03d}" for i in range(6)]
    labels.append("x" * 400)  # longer than the figure is wide
    chart = charts.Chart("Long", charts.Axis("tokens"), x_mode="step")
    chart.lines = [charts.Line(label, x, x * i, colour=charts.colour(i)) for i, label in enumerate(labels)]
    fig = charts.render_chart(chart)
    FigureCanvasAgg(fig).draw()
    legend = fig.axes[0].get_legend()
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0, (box, page)
    assert page.y0 <= box.y0, (box, page)
    assert box.x1 <= page.x1, (box, page)
    assert box.y1 <= page.y1, (box, page)
    shown = [t.get_text() for t in legend.get_texts()]
    assert shown[:6] == labels[:6]
    assert shown[6].endswith("…")
    assert len(shown[6]) < 400
