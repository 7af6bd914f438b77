"""The derived GPU figures of stored runs: gathered from the report's tables, computed by report.gpu_derived,
and handed out as key-figure rows (the report) and as catalog samples (``llamamon export prometheus``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llamamon.report.dashboards.values import format_value
from llamamon.report.data import ReportData, label_dict
from llamamon.report.gpu_derived import JOULES_PER_WH, GpuFigures, RunInputs, derive
from llamamon.samples import RunInfo, Sample

if TYPE_CHECKING:
    import polars as pl

# Where a run's token count comes from, first found wins: counts of tokens trained on so far (the HF Trainer's
# num_input_tokens_seen, or a job's own num_tokens), whose rise over the run is its tokens.
TOKEN_COUNTS = ("num_input_tokens_seen", "num_tokens")
GPU_SERIES = ("gpu_utilization", "gpu_power", "gpu_memory_used")


def run_inputs(data: ReportData, run: RunInfo) -> RunInputs:
    """One run's inputs to report.gpu_derived, from the run's summary rows and integrated power."""
    import polars as pl

    s = data.summary.filter(pl.col("run") == run.id)
    energy = s.filter(pl.col("metric") == "gpu_energy")
    counter = {_gpu(lbl): hi - lo for lbl, lo, hi in energy.select("labels", "min", "max").iter_rows()}
    power = {
        _gpu(lbl): wh for lbl, wh in data.energy.filter(pl.col("run") == run.id).select("labels", "wh").iter_rows()
    }
    labelled = s.filter(pl.col("metric").is_in(GPU_SERIES))["labels"].unique().to_list()
    gpus = len(run.gpu_names) or len({_gpu(lbl) for lbl in labelled})
    tokens, rate = _tokens(s)
    flops = s.filter(pl.col("metric") == "model_flops_per_token")["last"]
    return RunInputs(counter, power, gpus, run.gpu_names, tokens, rate, flops[0] if flops.len() else None)


def _tokens(s: pl.DataFrame) -> tuple[float | None, float | None]:
    """(tokens over the run, tokens per second): from a token count's rise, else the logged rate x its span."""
    import polars as pl

    rate_rows = s.filter(pl.col("metric") == "tokens_per_second")
    rate = float(rate_rows["mean"].sum()) if rate_rows.height else None  # one series per rank, if ranks log it
    for name in TOKEN_COUNTS:
        rows = s.filter(pl.col("metric") == name)
        if rows.height:
            lo, hi = rows["min"].min(), rows["max"].max()
            span = (rows["last_time"].max() - rows["first_time"].min()).total_seconds()
            if rate is None and span > 0:
                rate = (hi - lo) / span
            return float(hi - lo), rate
    if rate is not None:
        span = (rate_rows["last_time"].max() - rate_rows["first_time"].min()).total_seconds()
        return (rate * span if span > 0 else None), rate
    return None, None


def _gpu(labels: str) -> str:
    return label_dict(labels).get("gpu", labels)


def key_figure_rows(data: ReportData) -> list[tuple[str, list[str]]]:
    """The derived GPU rows of the key figures (energy, J/token, tokens/s per GPU, MFU), one cell per run."""
    figures = [derive(run_inputs(data, run)) for run in data.runs]
    rows = [
        ("GPU energy", [f"{f.energy_wh:,.1f} Wh" if f.energy_wh is not None else "–" for f in figures]),
        ("GPU energy per token", [format_value(f.joules_per_token, "joules") for f in figures]),
        ("tokens/s per GPU", [format_value(f.tokens_per_second_per_gpu, "per_second") for f in figures]),
        ("MFU", [_mfu_text(f) for f in figures]),
    ]
    return [(what, cells) for what, cells in rows if any(c != "–" for c in cells)]


def _mfu_text(f: GpuFigures) -> str:
    if f.mfu is None or f.peak is None:
        return "–"
    return f"{format_value(f.mfu, 'ratio')} of {f.peak.model} ({f.peak.tflops:g} TFLOPs dense BF16)"


def run_samples(data: ReportData, run: RunInfo, time: float) -> list[Sample]:
    """The run's derived figures as samples of their catalog metrics (those it has), stamped ``time``."""
    f = derive(run_inputs(data, run))
    values = {
        "run_gpu_energy": None if f.energy_wh is None else f.energy_wh * JOULES_PER_WH,
        "energy_per_token": f.joules_per_token,
        "gpu_tokens_per_second": f.tokens_per_second_per_gpu,
        "mfu": f.mfu,
    }
    return [Sample(name, value, time=time) for name, value in values.items() if value is not None]


def stored_run_samples(metrics_dir: Path, run: RunInfo) -> list[Sample]:
    """``run_samples`` of a stored run, stamped with its end (its last sample while it runs)."""
    from llamamon.report.data import load_report_data

    data = load_report_data(metrics_dir, [run], dashboards=())
    bounds = data.run_bounds.get(run.id)
    if bounds is None:
        return []
    return run_samples(data, run, run.end if run.end is not None else bounds[1])
