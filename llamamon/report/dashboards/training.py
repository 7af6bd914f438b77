"""The Training dashboard: loss and the other per-step curves, throughput, validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llamamon.report import charts
from llamamon.report.charts import Axis, Chart, HLine, Line, Span
from llamamon.report.dashboards.context import Context, merge_span_arrays
from llamamon.report.dashboards.model import Dashboard, Panel, Table, dashboard_for
from llamamon.report.dashboards.panels import chart_panel, metric_panel, pct, series_lines, threshold_lines
from llamamon.report.dashboards.ranks import straggler_view
from llamamon.report.dashboards.summary import summary_table
from llamamon.report.dashboards.values import axis_label, format_value, unit_of
from llamamon.report.data import label_dict
from llamamon.report.rank_bands import MAX_LINES, Named, ranked_series, step_band


def training_dashboard(ctx: Context) -> Dashboard:
    d = dashboard_for(ctx.data, "training")
    if d.empty:
        return d
    th = ctx.data.thresholds
    panels: list[Panel | None] = []
    # First: with many ranks the per-step charts draw the ranks it names slowest beside their median.
    stragglers, slowest, named = straggler_view(ctx)
    panels.append(_loss_panel(ctx, named))
    lr_th = threshold_lines(th.learning_rate_min, "learning_rate_min")
    panels.append(_step_panel(ctx, "lr", "Learning rate", "learning_rate", named, log=True, thresholds=lr_th))
    panels.append(_step_panel(ctx, "grad-norm", "Gradient norm", "grad_norm", named))
    # With several ranks the straggler view draws step time per rank; the plain step-time chart would repeat it.
    panels.append(stragglers or _step_panel(ctx, "step-time", "Step time", "step_time", named))
    tp = ["steps_per_second", "samples_per_second", "tokens_per_second"]
    for metric in tp:
        panels.append(metric_panel(ctx, f"tp-{metric}", f"Throughput: {metric.replace('_', ' ')}", [metric]))
    util = metric_panel(
        ctx,
        "train-gpu-util",
        "GPU utilisation (same time axis as throughput)",
        ["gpu_utilization"],
        ylim=(0, 1.02),
        thresholds=threshold_lines(th.gpu_utilization_min, "utilization_min", pct),
    )
    panels.append(util)
    d.panels = [p for p in panels if p is not None]
    if ctx.data.validation.height and len(ctx.data.validation.columns) > 2:
        d.tables.append(_validation_table(ctx))
    # The step is the x axis of these metrics, not one of them: its min/mean/p95 say nothing.
    d.tables.append(summary_table(ctx, ("training",), "Training summary", exclude=("step",)))
    if slowest is not None:
        d.tables.append(slowest)
    return d


StepKey = tuple[str, str]  # (run, labels) of one curve against step
BAND_NOTE = (
    " With {n} ranks: the median across ranks with its p10–p90 band (grey), and the slowest ranks of the"
    " straggler view in colour."
)


def _step_lines(ctx: Context, metric: str, *, smooth: bool, named: Named = ()) -> tuple[list[Line], list[StepKey], int]:
    """Per curve a raw line (band: min-max per column) and, with ``smooth``, its smoothed line; the curves' keys;
    and how many ranks were drawn as a band (0: none).

    The smoothed line (``report.smoothing``) is left out where its weight is 0 (too few points): it would
    only repeat the raw one. Every line of a curve has the curve's colour; the keys come in colour order.
    Over MAX_LINES ranks: the median of ranks, its band and the ``named`` ranks instead (``rank_bands``), no keys.
    """
    import polars as pl

    from llamamon.report.smoothing import debiased_ema, smoothing_weight

    df = ctx.data.steps.filter(pl.col("metric") == metric)
    ranks = ranked_series(df)
    if ranks > MAX_LINES:
        return step_band(df, named, smooth=smooth), [], ranks
    lines: list[Line] = []
    keys: list[StepKey] = []
    groups = list(df.group_by("run", "labels", maintain_order=True).__iter__())
    legends = charts.legend_labels([label_dict(labels) for (_run, labels), _part in groups])
    for i, (((run, labels), part), legend) in enumerate(zip(groups, legends, strict=True)):
        c = charts.colour(i)
        name = " · ".join(b for b in (ctx.run_labels.get(run, run) if ctx.multi else "", legend) if b)
        steps = part["step"].to_numpy().astype(float)
        marks = part.filter(pl.col("nonfinite") > 0)["step"].to_numpy().astype(float)
        mean = part["mean"].to_numpy()
        weight = smoothing_weight(len(mean)) if smooth else 0.0
        lines.append(
            Line(
                f"{name or metric} (raw)" if weight else (name or metric),
                steps,
                mean,
                part["min"].to_numpy(),
                part["max"].to_numpy(),
                colour=c,
                alpha=0.45 if weight else 1.0,
                width=0.9 if weight else 1.4,
                marks=marks if len(marks) else None,
            )
        )
        if weight:
            lines.append(Line(f"{name or metric} (smoothed)", steps, debiased_ema(mean, weight), colour=c, width=2.0))
        keys.append((run, labels))
    return lines, keys, 0


def _time_to_step(ctx: Context, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import polars as pl

    df = ctx.data.steps.filter(pl.col("metric") == metric)
    out = {}
    for (run,), part in df.group_by("run", maintain_order=True).__iter__():
        t = part["time"].to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
        order = np.argsort(t)
        out[run] = (t[order], part["step"].to_numpy().astype(float)[order])
    return out


def _step_spans(ctx: Context, metric: str, rules: Sequence[str]) -> list[Span]:
    """Alert spans mapped from time onto the step axis, through the metric's own step/time pairs."""
    rows = ctx.alert_rows()
    sel = rows.select({metric}, rules)
    if not sel.any():
        return []
    picked: list[np.ndarray] = []
    x0: list[np.ndarray] = []
    x1: list[np.ndarray] = []
    for run, (t, s) in _time_to_step(ctx, metric).items():
        # This run's spans and those of no run; a span still open ends at the metric's last step.
        idx = np.flatnonzero(sel & np.asarray([r is None or r == run for r in rows.run.tolist()], dtype=bool))
        ends = np.where(rows.open[idx], t[-1], rows.end[idx])
        s0 = np.interp(rows.start[idx], t, s)
        picked.append(idx)
        x0.append(s0)
        x1.append(np.maximum(np.interp(ends, t, s), s0 + 1e-9))
    if not picked:
        return []
    idx = np.concatenate(picked)
    order = np.argsort(idx, kind="stable")  # span order, as the alerts came
    idx = idx[order]
    return merge_span_arrays(np.concatenate(x0)[order], np.concatenate(x1)[order], rows.label[idx], rows.severity[idx])


def _loss_panel(ctx: Context, named: Named = ()) -> Panel | None:
    import polars as pl

    metrics = ctx.data.metrics()
    if "loss" not in metrics and "validation_loss" not in metrics:
        return None
    th = ctx.data.thresholds
    stepped = ctx.data.steps.filter(pl.col("metric").is_in(["loss", "validation_loss"])).height > 0
    if not stepped:
        return _time_loss_panel(ctx)
    lines, keys, ranks = _step_lines(ctx, "loss", smooth=True, named=named)
    val, val_keys, val_ranks = _step_lines(ctx, "validation_loss", smooth=False, named=named)
    smoothed = any(ln.label.endswith(" (smoothed)") for ln in lines)
    chart = Chart("Loss by step", Axis("loss"), x_mode="step")
    if ranks or val_ranks:
        for v in val:  # the legend names every line already: validation is told apart by its dashes
            v.style, v.label = "o--", f"validation loss · {v.label}"
    else:
        chart.key = _loss_legend(lines, keys, val, val_keys, ctx.multi)
    chart.lines = lines + val
    chart.thresholds = threshold_lines(th.validation_loss_max, "validation_loss_max")
    chart.spans = _step_spans(ctx, "loss", ("plateau", "nan")) + _step_spans(ctx, "validation_loss", ())
    chart.height = 3.4
    note = "Loss per step" + ("" if ranks else " (band: min–max per column)")
    if smoothed and ranks:
        note += " and the median's debiased moving average"
    elif smoothed:
        note += " and its debiased moving average, weighted by the number of points (as TensorBoard smooths)"
    if val:
        note += "; validation loss dashed." if ranks else "; validation loss dashed, in its run's colour."
    else:
        note += "."
    if ranks:
        note += BAND_NOTE.format(n=ranks)
    if any(ln.marks is not None for ln in lines):
        note += " Red crosses mark steps where loss was NaN or infinite."
    return chart_panel(ctx, "loss", chart, "Training and validation loss by step", note)


def _time_loss_panel(ctx: Context) -> Panel | None:
    """Loss and validation loss against time, for runs that logged no step: colours and legend as by step."""
    keys: list[StepKey] = []
    val_keys: list[StepKey] = []
    lines = series_lines(ctx, ["loss"], keys=keys)
    val = series_lines(ctx, ["validation_loss"], keys=val_keys)
    for ln in lines:
        ln.label = ln.label or "loss"
    chart = ctx.chart("Loss", Axis("loss"))
    chart.key = _loss_legend(lines, keys, val, val_keys, ctx.multi)
    chart.lines = lines + val
    chart.thresholds = threshold_lines(ctx.data.thresholds.validation_loss_max, "validation_loss_max")
    chart.spans = ctx.spans_for(["loss", "validation_loss"])
    note = "No step numbers were recorded, so loss is drawn against time"
    note += "; validation loss dashed, in its run's colour." if val else "."
    return chart_panel(ctx, "loss", chart, "Loss and validation loss over time", note)


def _loss_legend(
    lines: list[Line], keys: list[StepKey], val: list[Line], val_keys: list[StepKey], multi: bool
) -> list[Line]:
    """Give validation lines their run's colour and dashes; one legend entry per run and a style key (returned).

    Why: three runs with a raw, a smoothed and a validation line each made nine legend entries that said
    the same things thrice. One curve alone keeps its three self-describing entries instead.
    """
    colours = {key: charts.colour(i) for i, key in enumerate(keys)}
    by_run = {run: charts.colour(i) for i, (run, _labels) in reversed(list(enumerate(keys)))}
    spare = len(keys)
    for v, (run, labels) in zip(val, val_keys, strict=True):
        matched = colours.get((run, labels)) or by_run.get(run)
        if matched is None:
            matched = charts.colour(spare)
            spare += 1
        v.colour, v.style, v.width = matched, "o--", 1.3
        v.label = f"validation loss · {v.label}" if multi else "validation loss"
        v.legend = not ((run, labels) in colours or run in by_run) or (len(keys) == 1 and not multi)
    if len(keys) == 1 and not multi:
        return []
    key: list[Line] = []
    smoothed = [ln for ln in lines if ln.label.endswith(" (smoothed)")]
    for ln in lines:
        is_raw = ln.label.endswith(" (raw)")
        ln.legend = not is_raw
        ln.label = ln.label.removesuffix(" (raw)").removesuffix(" (smoothed)")
    empty = np.zeros(0)
    if smoothed:
        key.append(Line("raw", empty, empty, colour=charts.MUTED, width=0.9, alpha=0.45))
        key.append(Line("smoothed", empty, empty, colour=charts.MUTED, width=2.0))
    if any(not v.legend for v in val):
        key.append(Line("validation", empty, empty, colour=charts.MUTED, style="o--", width=1.3))
    return key


def _step_panel(
    ctx: Context,
    pid: str,
    title: str,
    metric: str,
    named: Named = (),
    *,
    log: bool = False,
    thresholds: Sequence[HLine] = (),
) -> Panel | None:
    import polars as pl

    if metric not in ctx.data.metrics():
        return None
    if ctx.data.steps.filter(pl.col("metric") == metric).height == 0:
        return metric_panel(ctx, pid, title, [metric], log=log, thresholds=thresholds)
    lines, _, ranks = _step_lines(ctx, metric, smooth=False, named=named)
    chart = Chart(title, Axis(axis_label(metric), unit_of(metric), log=log), x_mode="step")
    chart.lines = lines
    chart.thresholds = list(thresholds)
    chart.spans = _step_spans(ctx, metric, ())
    note = f"{title} by step." + BAND_NOTE.format(n=ranks) if ranks else ""
    return chart_panel(ctx, pid, chart, f"{title} by step", note)


def _validation_table(ctx: Context) -> Table:
    df = ctx.data.validation
    metric_cols = [c for c in df.columns if c not in ("run", "step")]
    cols = (["run"] if ctx.multi else []) + ["step", *metric_cols]
    rows = []
    for rec in df.iter_rows(named=True):
        row = [ctx.run_labels.get(rec["run"], rec["run"])] if ctx.multi else []
        row.append(f"{rec['step']:,}")
        row.extend(format_value(rec[c], unit_of(c)) for c in metric_cols)
        rows.append(row)
    return Table("Validation metrics", cols, rows, note=f"Last {len(rows)} evaluations per run.")
