"""The System dashboard's per-GPU cards: one per device, on shared scales, throttle reasons as a band.

One store is recorded for real (``llamamon record`` with the fake NVML standing in for pynvml, 8 H100s);
the others are written directly, to control what each GPU did.
"""

from __future__ import annotations

import json
import math

from conftest import REPO, llamamon_env, run_llamamon
from fakes import nvml as fake_nvml
from report_store import T0, run_info, save_run, system_rows, write_rows
from test_report_panels import panels, svg_texts

from llamamon.report.dashboards.context import build_context
from llamamon.report.dashboards.gpus import gpu_panels
from llamamon.report.data import load_report_data
from llamamon.report.render import render_report
from llamamon.samples import Row, make_labels

RUN = "20261118T000000Z-gpu-box-0008"

# Stands in for pynvml in the recorder's process: the real pynvml is imported under its name first (the
# fake takes its constants and exception classes from it), then the module is replaced by the fake.
SPY = """
import importlib, os, sys
here = os.path.dirname(os.path.abspath(__file__))
del sys.modules["pynvml"]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
importlib.import_module("pynvml")
sys.path.insert(0, {tests!r})
from fakes import nvml as fake
gpus = fake.h100_sxm(8)
gpus.gpus[3].clock_event_reasons = 0x20  # sw_thermal_slowdown only
gpus.gpus[5].pcie_width = 4  # a GPU that trained at x16 and runs at x4
sys.modules["pynvml"] = gpus
"""


def eight_gpu_store(metrics_dir):
    """8 GPUs; GPU 3 at its power cap for a while, GPU 6 hot at the end, GPU 5's link at x4 of x16."""
    info = run_info(RUN, T0, T0 + 600, gpu_names=["NVIDIA H100 80GB HBM3"] * 8)
    save_run(metrics_dir, info)
    rows = system_rows(T0, 120, 5.0, gpus=8)
    for i in range(120):
        t = T0 + i * 5
        for g in range(8):
            lab = make_labels(gpu=str(g))
            rows += [
                Row(t, "gpu", "gpu_power_limit", 700.0, lab),
                Row(t, "gpu", "gpu_pcie_rx_throughput", 2e9 * (1 + math.sin(i / 10)), lab),
                Row(t, "gpu", "gpu_pcie_link_gen_max", 5, lab),
                Row(t, "gpu", "gpu_pcie_link_width", 4 if g == 5 else 16, lab),
                Row(t, "gpu", "gpu_pcie_link_width_max", 16, lab),
            ]
            rows += [
                Row(t, "gpu", "gpu_nvlink_rx_throughput", 10e9, make_labels(gpu=str(g), link=str(link)))
                for link in range(3)
            ]
            on = {
                "gpu_idle": True,
                "sw_power_cap": g == 3 and 40 <= i < 70,
                "sw_thermal_slowdown": g == 6 and i >= 100,
            }
            rows += [
                Row(t, "gpu", "gpu_clock_event", float(v), make_labels(gpu=str(g), reason=r)) for r, v in on.items()
            ]
    write_rows(metrics_dir, rows, run=RUN, host="gpu-box")
    return info


def cards(metrics_dir, info):
    """(panel, figure) per GPU card, drawn as the report draws them."""
    figures = {}

    def emit(pid, fig):
        figures[pid] = fig
        return pid

    ctx = build_context(load_report_data(metrics_dir, [info], ["system"]), "svg", emit)
    return [(p, figures[p.id]) for p in gpu_panels(ctx)]


def test_a_card_per_gpu_in_index_order_with_a_narrowed_pcie_link_said(tmp_path):
    info = eight_gpu_store(tmp_path / ".metrics")
    html = render_report(tmp_path / ".metrics", [info], tmp_path / "r.html", selected=["system"])
    found = panels(html.read_text())
    ids = [pid for pid in found if pid.startswith("gpu-") and pid[4:].isdigit()]
    assert ids == [f"gpu-{g}" for g in range(8)]
    assert "gpu-util" in found  # the shared charts, every GPU on one, stay before the cards
    texts = {g: svg_texts(found[f"gpu-{g}"][1]) for g in range(8)}
    assert "GPU 5 · NVIDIA H100 80GB HBM3 · PCIe Gen5 ran at x4 of x16" in texts[5]
    assert "GPU 0 · NVIDIA H100 80GB HBM3 · PCIe Gen5 x16" in texts[0]
    for g in range(8):
        # The same band rows on every card (reasons seen on any GPU), idle left out; the strips are all there.
        assert {"power cap", "thermal (sw)", "power vs limit", "temperature", "PCIe / NVLink (all links)"} <= set(
            texts[g]
        )
        assert "gpu_idle" not in texts[g]


def test_cards_share_their_scales_and_the_band_is_filled_only_where_a_reason_was_on(tmp_path):
    info = eight_gpu_store(tmp_path / ".metrics")
    drawn = cards(tmp_path / ".metrics", info)
    assert len(drawn) == 8
    limits = {tuple(tuple(ax.get_ylim()) for ax in fig.axes) for _, fig in drawn}
    assert len(limits) == 1  # every card's strips on the same y limits
    power = drawn[0][1].axes[1]
    assert power.get_ylim()[1] >= 700.0  # up to the limit, which is drawn
    links = drawn[0][1].axes[3]
    nvlink = next(line for line in links.get_lines() if line.get_label() == "NVLink rx")
    assert max(nvlink.get_ydata()) * 1024**3 == 30e9  # three links of 10 GB/s summed, on a GiB/s axis

    def filled(fig):
        """Band rows (power cap, thermal) that have a filled area on this card."""
        band = fig.axes[-1]
        return [bool(len(c.get_paths()) and any(len(p.vertices) for p in c.get_paths())) for c in band.collections]

    assert filled(drawn[3][1]) == [True, False]
    assert filled(drawn[6][1]) == [False, True]
    assert filled(drawn[0][1]) == [False, False]


def test_no_gpu_recorded_gives_no_card(tmp_path):
    info = run_info(RUN, T0, T0 + 600)
    save_run(tmp_path / ".metrics", info)
    write_rows(tmp_path / ".metrics", system_rows(T0, 20, 5.0, gpus=0), run=RUN)
    assert cards(tmp_path / ".metrics", info) == []


def test_a_recorded_eight_gpu_run_gets_eight_cards(tmp_path):
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "pynvml.py").write_text(SPY.format(tests=str(REPO / "tests")))
    env = llamamon_env(LD_LIBRARY_PATH=fake_nvml.library_stand_in(tmp_path / "lib"))
    env["PYTHONPATH"] = f"{spy}:{env['PYTHONPATH']}"
    args = ["record", "--interval", "0.5", "--no-alerts", "--metrics-dir", "m", "--name", "eight"]
    done = run_llamamon(*args, "--", "python3", "-c", "import time; time.sleep(3)", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (meta,) = (tmp_path / "m" / "runs").glob("*.json")
    assert len(json.loads(meta.read_text())["gpu"]["gpus"]) == 8
    report = run_llamamon("report", "--metrics-dir", "m", "-o", "r.html", cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr.decode()[-2000:]
    found = panels((tmp_path / "r.html").read_text())
    assert [p for p in found if p.startswith("gpu-") and p[4:].isdigit()] == [f"gpu-{g}" for g in range(8)]
    assert "GPU 5 · NVIDIA H100 80GB HBM3 · PCIe Gen5 ran at x4 of x16" in svg_texts(found["gpu-5"][1])
    assert "thermal (sw)" in svg_texts(found["gpu-0"][1])  # GPU 3's reason has its row on every card


def test_runs_compared_on_a_card_get_a_colour_each_and_the_strips_a_style_key(tmp_path):
    metrics_dir = tmp_path / ".metrics"
    infos = []
    for k in range(3):
        run = f"2026111{k}T034000Z-gpu-box-a1b{k}"
        infos.append(run_info(run, T0, T0 + 600, name=f"run-{k}"))
        save_run(metrics_dir, infos[-1])
        write_rows(metrics_dir, system_rows(T0, 60, 5.0, seed=k), run=run)
    figures = {}

    def emit(pid, fig):
        figures[pid] = fig
        return pid

    ctx = build_context(load_report_data(metrics_dir, infos, ["system"]), "svg", emit)
    assert [p.id for p in gpu_panels(ctx)] == ["gpu-0", "gpu-1"]
    fig = figures["gpu-0"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["run-0", "run-1", "run-2"]
    util = fig.axes[0]
    assert [t.get_text() for t in util.get_legend().get_texts()] == ["utilisation", "memory"]
    colours = {line.get_color() for line in util.get_lines() if line.get_label() == "_nolegend_"}
    assert len(colours) == 3  # one per run, the same for its utilisation and memory lines
