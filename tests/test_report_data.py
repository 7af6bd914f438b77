"""report.data: the polars reductions the charts and tables are drawn from."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from report_store import save_run, write_rows

from llamamon.report import tables
from llamamon.report.data import (
    AlertSpan,
    Thresholds,
    alert_spans,
    label_text,
    load_report_data,
    thresholds_from_config,
)
from llamamon.report.source import resolve_runs, scan_samples
from llamamon.samples import AlertEvent, Row, RunInfo, make_labels

T0 = 1_790_000_000.0
RUN = "20260923T000000Z-host-0001"


def _run(metrics_dir, run_id=RUN, start=T0, end=T0 + 3600, **kw):
    info = RunInfo(id=run_id, host="host", start=start, end=end, exit_code=0, **kw)
    save_run(metrics_dir, info)
    return info


def test_summary_matches_numpy_and_ignores_nan(metrics_dir):
    rng = np.random.default_rng(1)
    values = rng.normal(50, 10, 1000)
    rows = [Row(T0 + i, "system", "cpu_usage", float(v)) for i, v in enumerate(values)]
    rows.append(Row(T0 + 2000, "system", "cpu_usage", float("nan")))
    rows.append(Row(T0 + 1999, "system", "cpu_usage", 7.0))
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    rec = data.summary.row(0, named=True)
    finite = np.append(values, 7.0)
    assert rec["n"] == 1002
    assert rec["nonfinite"] == 1
    assert rec["min"] == pytest.approx(finite.min())
    assert rec["mean"] == pytest.approx(finite.mean())
    assert rec["p95"] == pytest.approx(np.quantile(finite, 0.95))
    assert rec["max"] == pytest.approx(finite.max())
    assert math.isnan(rec["last"])  # the last sample was NaN, and "last" says so


def test_series_is_reduced_to_buckets_and_keeps_a_one_sample_spike(metrics_dir):
    n = 50_000
    rows = [Row(T0 + i, "gpu", "gpu_temperature", 60.0, make_labels(gpu="0")) for i in range(n)]
    rows[31_337] = Row(T0 + 31_337, "gpu", "gpu_temperature", 99.0, make_labels(gpu="0"))
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)], buckets=400)
    series = data.series.filter(pl.col("metric") == "gpu_temperature")
    assert 390 <= series.height <= 401
    assert series["max"].max() == 99.0
    assert series["mean"].max() < 61.0
    assert series["n"].sum() == n


def test_two_runs_columns_are_numbered_from_each_runs_start_and_stay_int64(metrics_dir):
    # Two runs of different lengths: each run's samples are cut into its own columns 0 .. buckets - 1.
    other = "20260923T000000Z-host-0002"
    write_rows(metrics_dir, [Row(T0 + i, "system", "cpu_usage", 0.5) for i in range(1000)], run=RUN)
    write_rows(metrics_dir, [Row(T0 + 9 * i, "system", "cpu_usage", 0.5) for i in range(200)], run=other)
    runs = [_run(metrics_dir), _run(metrics_dir, other, end=T0 + 1800)]
    data = load_report_data(metrics_dir, runs, buckets=50)
    assert data.series.schema["bucket"] == pl.Int64
    for run in (RUN, other):
        assert data.series.filter(pl.col("run") == run)["bucket"].to_list() == list(range(50))


def test_training_by_step_marks_nan_and_smooths_the_columns(metrics_dir):
    from llamamon.report.smoothing import debiased_ema, smoothing_weight

    rows = [Row(T0 + s, "training", "loss", 10.0 / s, step=s) for s in range(1, 501)]
    rows[99] = Row(T0 + 100, "training", "loss", float("nan"), step=100)
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)], buckets=100)
    steps = data.steps.filter(pl.col("metric") == "loss")
    assert steps.height <= 101
    assert steps.filter(pl.col("nonfinite") > 0)["step"].to_list() == [100]
    smoothed = debiased_ema(steps["mean"].to_numpy(), smoothing_weight(steps.height))
    assert np.all(np.isfinite(smoothed))
    assert smoothed[-1] > steps["mean"][-1]  # a decreasing curve's smoothed line lags above it


def test_energy_integrates_power_and_ignores_gaps(metrics_dir):
    rows = [Row(T0 + i, "gpu", "gpu_power", 100.0, make_labels(gpu="0")) for i in range(3601)]
    # A second stretch after a 2-hour gap (recorder stopped) must not count the gap.
    rows += [Row(T0 + 3600 + 7200 + i, "gpu", "gpu_power", 100.0, make_labels(gpu="0")) for i in range(1801)]
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    assert data.energy["wh"].to_list() == [pytest.approx(150.0)]


def test_energy_pairs_each_gpus_samples_with_its_own_previous_one(metrics_dir):
    # Two GPUs' samples interleaved in time (as a recorder writes them): 100 W and 300 W for an hour each.
    rows = []
    for i in range(3601):
        rows.append(Row(T0 + i, "gpu", "gpu_power", 100.0, make_labels(gpu="0")))
        rows.append(Row(T0 + i + 0.5, "gpu", "gpu_power", 300.0, make_labels(gpu="1")))
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    assert data.energy["wh"].to_list() == [pytest.approx(100.0), pytest.approx(300.0)]


def test_latency_quantiles_and_histogram_from_raw_samples(metrics_dir):
    rng = np.random.default_rng(2)
    lat = rng.lognormal(np.log(100), 0.3, 5000)
    rows = [Row(T0 + i * 0.1, "inference", "inference_latency", float(v)) for i, v in enumerate(lat)]
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    q = data.quantiles
    assert q.height > 10
    assert (q["p50"] <= q["p95"]).all()
    assert (q["p95"] <= q["p99"]).all()
    h = data.histogram
    assert h["count"].sum() == 5000
    assert h.height <= 40


def test_validation_table_pivots_metrics_by_step(metrics_dir):
    rows = []
    for s in (100, 200, 300):
        rows.append(Row(T0 + s, "training", "validation_loss", 1.0 / s, step=s))
        rows.append(Row(T0 + s, "custom", "validation_accuracy", s / 1000, step=s))
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    v = data.validation
    assert v["step"].to_list() == [100, 200, 300]
    assert set(v.columns) == {"run", "step", "validation_loss", "validation_accuracy"}


def test_tables_of_metrics_no_run_recorded_are_empty_and_keep_their_schemas(metrics_dir):
    rows = [Row(T0 + i, "system", "cpu_usage", 0.5, step=i) for i in range(100)]
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    assert data.summary.height == 1  # what was recorded is read ...
    schema = tables.schemas()
    assert data.quantiles.height == data.histogram.height == 0  # ... the latency queries never ran
    assert dict(data.quantiles.schema) == schema["quantiles"]
    assert dict(data.histogram.schema) == schema["histogram"]
    assert data.validation.columns == ["run", "step"]
    assert data.latency is not None
    assert data.latency.height == 0


def test_corrupt_file_is_skipped_by_name(metrics_dir):
    write_rows(metrics_dir, [Row(T0, "system", "cpu_usage", 0.5)], run=RUN)
    bad = metrics_dir / "group=system" / "date=2026-09-21" / f"run={RUN}" / "broken.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"PAR1 this is not parquet")
    lf, skipped = scan_samples(metrics_dir, runs=[RUN])
    assert skipped == [str(bad.relative_to(metrics_dir))]
    assert lf is not None
    assert lf.collect().height == 1


def test_empty_store_gives_empty_tables(metrics_dir):
    info = _run(metrics_dir)
    data = load_report_data(metrics_dir, [info])
    assert data.summary.height == 0
    assert not data.has_group("system")


def test_resolve_runs_defaults_to_the_latest_and_explains_an_empty_store(metrics_dir):
    from llamamon.errors import RunNotFound, StoreError

    with pytest.raises(StoreError, match="no runs recorded"):
        resolve_runs(metrics_dir)
    a = _run(metrics_dir, "20260101T000000Z-h-aaaa", start=1_767_225_600.0, end=1_767_229_200.0, name="first")
    b = _run(metrics_dir, "20260102T000000Z-h-bbbb", start=1_767_312_000.0, end=1_767_315_600.0, name="second")
    assert [r.id for r in resolve_runs(metrics_dir)] == [b.id]
    assert [r.id for r in resolve_runs(metrics_dir, ("first",))] == [a.id]
    assert [r.id for r in resolve_runs(metrics_dir, ("first",), latest=True)] == [a.id, b.id]
    with pytest.raises(RunNotFound, match="nope"):
        resolve_runs(metrics_dir, ("nope",))
    with pytest.raises(StoreError, match="no metrics folder"):
        resolve_runs(metrics_dir / "missing")


def test_alert_spans_pair_firing_and_resolved():
    lab = make_labels(metric="loss")
    fire = AlertEvent("loss_plateau", "firing", "warning", lab, (), 1.0, started_at=100.0, run="r")
    done = AlertEvent("loss_plateau", "resolved", "warning", lab, (), 1.0, started_at=100.0, ended_at=160.0, run="r")
    still = AlertEvent("loss_nan", "firing", "critical", lab, (), float("nan"), started_at=150.0, run="r")
    spans = alert_spans([still, done, fire])
    assert spans == [
        AlertSpan("loss_plateau", "warning", lab, 100.0, 160.0, "r", "loss_plateau is resolved"),
        AlertSpan("loss_nan", "critical", lab, 150.0, None, "r", "loss_nan is firing"),
    ]
    assert spans[0].metric == "loss"


def test_thresholds_from_config_reads_nested_attributes_and_keeps_defaults():
    class NS:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    cfg = NS(monitoring=NS(thresholds=NS(memory=NS(warning=0.7), inference=NS(latency_max=500))))
    th = thresholds_from_config(cfg)
    assert th.memory_warning == 0.7
    assert th.memory_critical == Thresholds().memory_critical
    assert th.latency_max == 500.0
    assert thresholds_from_config(None) == Thresholds()


def test_label_text():
    assert label_text('{"gpu":"0","reason":"power"}') == "gpu=0, reason=power"
    assert label_text("") == ""


def test_file_damaged_inside_is_skipped_too(metrics_dir):
    write_rows(metrics_dir, [Row(T0 + i, "system", "cpu_usage", 0.5) for i in range(10)], run=RUN)
    folder = next(metrics_dir.glob(f"group=system/date=*/run={RUN}"))
    (folder / "inside.parquet").write_bytes(b"PAR1" + b"\x00garbage\xff" * 20 + b"PAR1")
    data = load_report_data(metrics_dir, [_run(metrics_dir)])
    assert [p.rsplit("/", 1)[-1] for p in data.skipped] == ["inside.parquet"]
    assert data.summary["n"].to_list() == [10]


def test_alerts_replayed_from_the_samples_in_memory_equal_a_replay_over_the_store(metrics_dir):
    """The report replays the rules over the samples it has already read; it must not gain or lose a span."""
    from report_store import inference_store, training_store

    from llamamon.config import load_config
    from llamamon.report.alerts import alert_replay, replay_alerts
    from llamamon.store.reader import scan
    from llamamon.store.runs import run_ends

    runs = [training_store(metrics_dir), inference_store(metrics_dir)]
    # Stored under an alias (as a HF-style log line gives it): the rules must still see it as validation_loss.
    aliased = [Row(T0 + s, "custom", "eval_loss", 5.0, step=s) for s in range(100, 400, 100)]
    write_rows(metrics_dir, aliased, run=runs[1].id)
    cfg = load_config(None)
    data = load_report_data(metrics_dir, runs, alerts=alert_replay(cfg))
    stored = replay_alerts(cfg, scan(metrics_dir, runs=[r.id for r in runs]), ends=run_ends(runs))
    assert len({s.rule for s in stored}) >= 5  # memory, GPU, loss, learning rate, timeouts ...
    assert any(s.rule == "validation_loss_high" and s.run == runs[1].id for s in stored)  # from eval_loss
    assert data.alerts == stored
    # The stores write one row per metric per tick (series interleaved): every series is still summarised.
    series = scan(metrics_dir).select("run", "metric", "labels").unique().sort("run", "metric", "labels").collect()
    assert data.summary.select("run", "metric", "labels").sort("run", "metric", "labels").equals(series)


def test_since_keeps_the_samples_from_then_on_and_alerts_still_firing_then(metrics_dir):
    from llamamon.config import load_config
    from llamamon.report.alerts import alert_replay

    info = _run(metrics_dir)
    # Memory over 90% from minute 10 to 20 and from 40 to 50; the window starts at minute 15.
    rows = [
        Row(T0 + i, "system", "memory_usage", 0.95 if 600 <= i < 1200 or 2400 <= i < 3000 else 0.5) for i in range(3600)
    ]
    write_rows(metrics_dir, rows, run=RUN)
    cfg = load_config(None)
    whole = load_report_data(metrics_dir, [info], alerts=alert_replay(cfg))
    since = T0 + 900
    part = load_report_data(metrics_dir, [info], alerts=alert_replay(cfg), since=since)
    assert part.summary["n"].to_list() == [2700]
    assert part.series["time"].min().timestamp() >= since
    assert part.run_bounds[RUN][0] == since
    # Both episodes are kept: the first fired before the window (at its true time) and was still firing in it.
    assert part.alerts == whole.alerts
    assert {round(s.start) for s in part.alerts if s.rule == "memory_critical"} == {T0 + 660, T0 + 2460}
    late = load_report_data(metrics_dir, [info], alerts=alert_replay(cfg), since=T0 + 1800)
    assert {round(s.start) for s in late.alerts if s.rule == "memory_critical"} == {T0 + 2460}


def test_a_series_of_only_nan_has_no_statistics_but_counts_them(metrics_dir):
    rows = [Row(T0 + i, "training", "loss", float("nan"), step=i) for i in range(50)]
    rows += [Row(T0 + i, "system", "cpu_usage", 0.5 if i < 25 else math.inf) for i in range(50)]
    write_rows(metrics_dir, rows, run=RUN)
    data = load_report_data(metrics_dir, [_run(metrics_dir)], buckets=10)
    loss = data.summary.filter(pl.col("metric") == "loss").row(0, named=True)
    assert (loss["n"], loss["nonfinite"]) == (50, 50)
    assert loss["min"] is None
    assert loss["mean"] is None
    assert loss["p95"] is None
    assert math.isnan(loss["last"])
    cpu = data.summary.filter(pl.col("metric") == "cpu_usage").row(0, named=True)
    assert (cpu["mean"], cpu["max"], cpu["nonfinite"], cpu["last"]) == (0.5, 0.5, 25, math.inf)
    late = data.series.filter((pl.col("metric") == "loss") & (pl.col("bucket") == 9)).row(0, named=True)
    assert (late["mean"], late["n"], late["nonfinite"]) == (None, 5, 5)
