"""Derived GPU figures (energy, J/token, tokens/s per GPU, MFU): the arithmetic on hand-computed numbers,
the peak table by NVML name, and the report's key figures from a store written with known values."""

from __future__ import annotations

import pytest
from report_store import save_run, write_rows

from llamamon.gpu_peaks import peak_for
from llamamon.report.data import load_report_data
from llamamon.report.gpu_derived import JOULES_PER_WH, RunInputs, derive, run_energy_wh
from llamamon.report.render import key_figures
from llamamon.samples import Row, RunInfo, make_labels

T0 = 1_790_000_000.0
RUN = "20260923T000000Z-host-0001"
H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    ("name", "model", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100 SXM", 312.0),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe", 312.0),
        (H100, "H100 SXM", 989.5),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5),
        ("NVIDIA H200", "H200 SXM", 989.5),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5),
        ("NVIDIA B200", "B200", 2250.0),
        ("NVIDIA L40S", "L40S", 362.05),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA A10", "A10", 125.0),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.2),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 71.0),
        ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 364.2),
        ("NVIDIA RTX A6000", "RTX A6000", 154.8),
        ("Tesla V100-SXM2-16GB", "V100 SXM2", 125.0),
        ("Tesla V100-PCIE-32GB", "V100 PCIe", 112.0),
        ("Tesla T4", "T4", 65.0),
    ],
)
def test_peak_by_nvml_name(name, model, tflops):
    peak = peak_for(name)
    assert peak is not None
    assert (peak.model, peak.tflops) == (model, tflops)
    assert peak.source  # every figure says where it comes from


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA L40", "Quadro RTX 6000", "NVIDIA GeForce GTX 1080"])
def test_gpus_not_in_the_table_have_no_peak(name):
    assert peak_for(name) is None


def test_energy_prefers_the_counter_and_integrates_power_only_where_it_is_missing():
    one_hour_at_300_w = 300.0 * 3600
    assert run_energy_wh({"0": one_hour_at_300_w}, {"0": 999.0}) == (300.0, "energy counter")
    assert run_energy_wh({}, {"0": 300.0, "1": 150.0}) == (450.0, "integrated power")
    both = run_energy_wh({"0": one_hour_at_300_w}, {"0": 1.0, "1": 150.0})
    assert both == (450.0, "energy counter and integrated power")
    assert run_energy_wh({}, {}) == (None, "")


def test_derived_figures_from_known_numbers():
    # 8 H100s, 300 Wh each, 8.0e6 tokens at 4000 tokens/s, a 7B model at 6 * 7e9 FLOPs per token
    run = RunInputs({str(g): 300.0 * JOULES_PER_WH for g in range(8)}, {}, 8, [H100] * 8, 8.0e6, 4000.0, 6 * 7e9)
    f = derive(run)
    assert f.energy_wh == pytest.approx(2400.0)
    assert f.joules_per_token == pytest.approx(2400.0 * 3600 / 8.0e6)
    assert f.tokens_per_second_per_gpu == 500.0
    assert f.mfu == pytest.approx(500.0 * 42e9 / 989.5e12)


def test_no_guesses_without_inputs():
    f = derive(RunInputs({}, {"0": 10.0}, 1, ["NVIDIA H100 PCIe"], None, 100.0, None))
    assert (f.energy_wh, f.joules_per_token, f.tokens_per_second_per_gpu, f.mfu) == (10.0, None, 100.0, None)
    mixed = derive(RunInputs({}, {}, 2, [H100, "NVIDIA A100-SXM4-80GB"], 1e6, 100.0, 1e9))
    assert mixed.mfu is None
    assert mixed.peak is None
    unknown = derive(RunInputs({}, {}, 1, ["NVIDIA A10G"], 1e6, 100.0, 1e9))
    assert unknown.mfu is None


def _store(metrics_dir, *, counter: bool, tokens: bool = True, names=(H100, H100)) -> RunInfo:
    """Two GPUs at 300 W for exactly one hour; the energy counter (when written) rises at 250 W, so the
    figure shows which one was used; 2000 tokens/s over the hour, 6e9 FLOPs per token."""
    rows = []
    for i in range(361):
        t = T0 + 10.0 * i
        for gpu in ("0", "1"):
            labels = make_labels(gpu=gpu)
            rows.append(Row(t, "gpu", "gpu_power", 300.0, labels))
            rows.append(Row(t, "gpu", "gpu_utilization", 0.9, labels))
            if counter:
                rows.append(Row(t, "gpu", "gpu_energy", 5e6 + 250.0 * 10.0 * i, labels))
        if tokens:
            rows.append(Row(t, "training", "num_input_tokens_seen", 20_000.0 * i, step=i))
    rows.append(Row(T0, "training", "model_flops_per_token", 6e9))
    write_rows(metrics_dir, rows, run=RUN)
    info = RunInfo(id=RUN, host="host", start=T0, end=T0 + 3600, exit_code=0, gpu_names=list(names))
    save_run(metrics_dir, info)
    return info


def _figures(metrics_dir, info) -> dict[str, str]:
    return {what: cells[0] for what, cells in key_figures(load_report_data(metrics_dir, [info]))}


def test_key_figures_from_the_energy_counter(metrics_dir):
    got = _figures(metrics_dir, _store(metrics_dir, counter=True))
    assert got["GPU energy"] == "500.0 Wh"  # 2 x 250 W x 1 h from the counter, not 2 x 300 W integrated
    assert got["GPU energy per token"] == "0.25 J"  # 500 Wh x 3600 / 7.2e6 tokens
    assert got["tokens/s per GPU"] == "1,000/s"
    assert got["MFU"] == "0.6% of H100 SXM (989.5 TFLOPs dense BF16)"  # 1000 x 6e9 / 989.5e12


def test_key_figures_integrate_power_without_the_counter(metrics_dir):
    got = _figures(metrics_dir, _store(metrics_dir, counter=False))
    assert got["GPU energy"] == "600.0 Wh"  # 300 W for 1 h = 300 Wh, twice
    assert got["GPU energy per token"] == "0.3 J"


def test_key_figures_leave_out_what_cannot_be_derived(metrics_dir):
    got = _figures(metrics_dir, _store(metrics_dir, counter=True, tokens=False, names=("NVIDIA A10G",) * 2))
    assert got["GPU energy"] == "500.0 Wh"
    assert not {"GPU energy per token", "tokens/s per GPU", "MFU"} & set(got)


def test_export_prometheus_carries_the_derived_figures(metrics_dir, runner):
    from llamamon.cli import cli
    from llamamon.prometheus.text import parse

    _store(metrics_dir, counter=True)
    result = runner.invoke(cli, ["export", "prometheus", "--metrics-dir", str(metrics_dir), "--run", RUN])
    assert result.exit_code == 0, result.output
    got = {p.name: p.value for family in parse(result.stdout) for p in family.points if p.name in DERIVED}
    assert got == pytest.approx(
        {
            "llamamon_run_gpu_energy_joules": 500.0 * 3600,
            "llamamon_energy_per_token_joules": 0.25,
            "llamamon_gpu_tokens_per_second": 1000.0,
            "llamamon_mfu_ratio": 1000.0 * 6e9 / 989.5e12,
        }
    )


DERIVED = (
    "llamamon_run_gpu_energy_joules",
    "llamamon_energy_per_token_joules",
    "llamamon_gpu_tokens_per_second",
    "llamamon_mfu_ratio",
)
