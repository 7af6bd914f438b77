"""The statistics tables under each dashboard, the one of the job's own metrics, and the derived GPU figures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.report.dashboards.context import Context
from llamamon.report.dashboards.model import Table
from llamamon.report.dashboards.values import format_value, unit_of
from llamamon.report.data import ReportData, label_dict, label_text
from llamamon.samples import RunInfo

if TYPE_CHECKING:
    import polars as pl

    from llamamon.report.gpu_derived import GpuFigures, RunInputs

STATS = ("min", "mean", "p95", "max", "last")


def summary_table(ctx: Context, groups: Sequence[str], title: str, exclude: Sequence[str] = ()) -> Table:
    """Min, mean, p95, max and last per metric but ``exclude``; several runs side by side, one column group per run."""
    import polars as pl

    s = ctx.data.summary.filter(pl.col("group").is_in(list(groups)) & ~pl.col("metric").is_in(list(exclude)))
    runs = [r.id for r in ctx.data.runs if r.id in set(s["run"].to_list())]
    keys = s.select("metric", "labels").unique(maintain_order=True).sort("metric", "labels")
    by = {
        (r, m, lbl): rec
        for r, m, lbl, rec in zip(s["run"], s["metric"], s["labels"], s.iter_rows(named=True), strict=False)
    }
    rows = []
    for metric, labels in keys.iter_rows():
        unit = unit_of(metric)
        row = [metric, label_text(labels)]
        for run in runs:
            rec = by.get((run, metric, labels))
            row.extend(format_value(rec[k] if rec else None, unit) for k in STATS)
        rows.append(row)
    cols = ["metric", "labels"] + list(STATS) * max(len(runs), 1)
    header = [(ctx.run_labels.get(r, r), len(STATS)) for r in runs] if ctx.multi else []
    note = ""
    bad = s.filter(pl.col("nonfinite") > 0)
    if bad.height:
        names = ", ".join(sorted(set(bad["metric"].to_list())))
        note = f"NaN or infinite values were left out of the statistics for: {names}."
    return Table(title, cols, rows, header, note)


# llamamon's own metrics (notification_failures, ...) are stored with the job's custom ones, but are not the job's.
OWN_METRICS = tuple(m.name for m in catalog.METRICS if m.group == "run")


def custom_table(ctx: Context) -> Table | None:
    if not ctx.data.has_group("custom"):
        return None
    table = summary_table(ctx, ("custom",), "Other metrics the job logged", exclude=OWN_METRICS)
    return table if table.rows else None


# Where a run's token count comes from, first found wins: counts of tokens trained on so far (the HF Trainer's
# num_input_tokens_seen, or a job's own num_tokens), whose rise over the run is its tokens.
TOKEN_COUNTS = ("num_input_tokens_seen", "num_tokens")
GPU_SERIES = ("gpu_utilization", "gpu_power", "gpu_memory_used")


def gpu_run_inputs(data: ReportData, run: RunInfo) -> RunInputs:
    """One run's inputs to report.gpu_derived, from the run's summary rows and integrated power."""
    import polars as pl

    from llamamon.report.gpu_derived import RunInputs

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


def gpu_key_figures(data: ReportData) -> list[tuple[str, list[str]]]:
    """The derived GPU rows of the key figures (energy, J/token, tokens/s per GPU, MFU), per run."""
    from llamamon.report.gpu_derived import derive

    figures = [derive(gpu_run_inputs(data, run)) for run in data.runs]
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
