"""The history evaluator: built-in thresholds, for / keep_firing_for, per-series alerts, history == stepping."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from conftest import write_samples
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rules_reference import step_all, step_over

from llamamon.config import load_config
from llamamon.rules import history, history_windows, lang
from llamamon.rules.builtin import BUILTIN_NAMES, builtin_rules
from llamamon.rules.history_compiler import Compiler
from llamamon.rules.history_input import Grid, prepare
from llamamon.rules.model import Alert, Rule
from llamamon.rules.promql import LOOKBACK, US
from llamamon.rules.states import AlertStates

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def frame(rows: list[tuple], run: str = "r1", host: str = "h1") -> pl.DataFrame:
    """rows: (seconds after T0, metric, value[, labels dict])."""
    from llamamon.samples import labels_to_str, make_labels

    return pl.DataFrame(
        {
            "time": [datetime.fromtimestamp(T0 + r[0], tz=timezone.utc) for r in rows],
            "metric": [r[1] for r in rows],
            "value": [float(r[2]) for r in rows],
            "labels": [labels_to_str(make_labels(r[3] if len(r) > 3 else None)) for r in rows],
            "run": [run] * len(rows),
            "host": [host] * len(rows),
        },
        schema={
            "time": pl.Datetime("us", "UTC"),
            "metric": pl.String,
            "value": pl.Float64,
            "labels": pl.String,
            "run": pl.String,
            "host": pl.String,
        },
    )


def grid(seconds: int, step: int = 10) -> Grid:
    return Grid(T0 * US, step * US, seconds // step + 1)


def rule(condition: str, **kw) -> Rule:
    kw.setdefault("severity", "warning")
    return Rule(kw.pop("name", "r"), lang.parse(condition), **kw)


def fired(alerts: list[Alert]) -> list[tuple[float, float | None]]:
    return [(a.fired_at - T0, None if a.resolved_at is None else a.resolved_at - T0) for a in alerts]


def series(metric: str, values: list[float], step: int = 10, labels: dict | None = None) -> list[tuple]:
    return [(i * step, metric, v, labels or {}) for i, v in enumerate(values)]


# --- built-in rules: just over fires, just under stays silent -----------------------------------------

GPU = {"gpu": "0"}
HELD = series("gpu_process_memory_used", [2e9] * 91, labels=GPU)
CASES = {
    "memory_warning": (series("memory_usage", [0.81] * 91), series("memory_usage", [0.79] * 91)),
    "memory_critical": (series("memory_usage", [0.91] * 91), series("memory_usage", [0.90] * 91)),
    "gpu_underutilized": (
        series("gpu_utilization", [0.69] * 91, labels=GPU) + HELD,
        series("gpu_utilization", [0.71] * 91, labels=GPU) + HELD,
    ),
    "gpu_memory_high": (series("gpu_memory_usage", [0.96] * 91, labels=GPU), series("gpu_memory_usage", [0.94] * 91)),
    # (an XID at 5m: the per-GPU count steps from 0 to 1; without one it stays 0)
    "gpu_xid_error": (
        series("gpu_xid_events", [0.0] * 30 + [1.0] * 61, labels=GPU),
        series("gpu_xid_events", [0.0] * 91, labels=GPU),
    ),
    "validation_loss_high": (series("validation_loss", [2.01], step=60), series("validation_loss", [1.99], step=60)),
    "learning_rate_low": (series("learning_rate", [0.9e-6] * 31), series("learning_rate", [1.1e-6] * 31)),
    "loss_plateau": (
        series("validation_loss", [1.0, 0.9, 0.95, 0.92, 0.91]),
        series("validation_loss", [1.0, 0.9, 0.95, 0.92, 0.89]),
    ),
    # (40 minutes: its windows need 30 of them; flat from 20m on, or still falling)
    "train_loss_plateau": (
        series("loss", [2.0 - 0.001 * min(i, 120) for i in range(241)]),
        series("loss", [2.0 - 0.001 * i for i in range(241)]),
    ),
    "inference_latency_high": (series("inference_latency", [1001] * 91), series("inference_latency", [999] * 91)),
    "inference_timeouts": (series("timeout_rate", [0.01] * 91), series("timeout_rate", [0.0] * 91)),
    "batch_queue_high": (series("batch_queue_size", [101] * 91), series("batch_queue_size", [100] * 91)),
    "loss_not_finite": (series("loss", [1.0, math.nan, 0.5]), series("loss", [1.0, 0.9, 0.5])),
    # three ranks; rank 2 steps 1.26 (1.24) times slower than the median rank
    "training_straggler": tuple(
        [
            row
            for r in range(3)
            for row in series("step", [i / (slow if r == 2 else 1) for i in range(91)], labels={"rank": str(r)})
        ]
        for slow in (1.26, 1.24)
    ),
}


def test_every_builtin_has_a_case() -> None:
    assert set(CASES) == set(BUILTIN_NAMES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_fires_just_over_and_not_just_under(name: str) -> None:
    rules = [r for r in builtin_rules(load_config()) if r.name == name]
    over, under = CASES[name]
    seconds = 2400 if name == "train_loss_plateau" else 900
    hits = history.evaluate(rules, frame(over), grid(seconds))
    assert [a.rule for a in hits] == [name]
    critical = ("memory_critical", "loss_not_finite", "gpu_xid_error")
    assert hits[0].severity == ("critical" if name in critical else "warning")
    assert history.evaluate(rules, frame(under), grid(seconds)) == []


def test_builtin_gpu_rule_is_silent_on_an_idle_machine() -> None:
    rules = [r for r in builtin_rules(load_config()) if r.name == "gpu_underutilized"]
    idle = series("gpu_utilization", [0.0] * 91, labels=GPU) + series("gpu_process_memory_used", [0] * 91, labels=GPU)
    assert history.evaluate(rules, frame(idle), grid(900)) == []


def test_builtins_switch_off(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("alerts:\n  builtin:\n    memory_warning: false\n")
    rules = {r.name: r for r in builtin_rules(load_config(path))}
    assert not rules["memory_warning"].enabled
    assert history.evaluate([rules["memory_warning"]], frame(CASES["memory_warning"][0]), grid(900)) == []
    assert "thresholds.memory.warning" in rules["memory_warning"].source


# --- for, resolve, keep_firing_for ---------------------------------------------------------------------


def test_for_boundary_matches_prometheus_worked_example() -> None:
    # 0.5@0m, 0.95@1m..5m, then 0.5: pending at 1m and 2m, firing at 3m (2m >= 2m), resolved at 6m.
    rows = series("memory_usage", [0.5, 0.95, 0.95, 0.95, 0.95, 0.95, 0.5, 0.5], step=60)
    alerts = history.evaluate([rule("memory_usage > 0.9", for_=120)], frame(rows), grid(420, 60))
    assert fired(alerts) == [(180, 360)]
    assert alerts[0].active_at - T0 == 60


def test_for_not_reached_never_fires() -> None:
    rows = series("memory_usage", [0.5, 0.95, 0.95, 0.5], step=60)
    assert history.evaluate([rule("memory_usage > 0.9", for_=121)], frame(rows), grid(240, 60)) == []
    assert fired(history.evaluate([rule("memory_usage > 0.9", for_=60)], frame(rows), grid(240, 60))) == [(120, 180)]


def test_keep_firing_for_bridges_gaps_and_delays_resolve() -> None:
    values = [0.95, 0.95, 0.5, 0.5, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5]
    rows = series("memory_usage", values, step=60)
    plain = history.evaluate([rule("memory_usage > 0.9")], frame(rows), grid(540, 60))
    assert fired(plain) == [(0, 120), (240, 300)]
    kept = history.evaluate([rule("memory_usage > 0.9", keep_firing_for=180)], frame(rows), grid(540, 60))
    # the dip at 2m-3m is bridged; after the last true tick (4m) it keeps firing at 5m, 6m, 7m; resolved at 8m
    assert fired(kept) == [(0, 480)]


def test_still_firing_at_the_end_has_no_resolve() -> None:
    rows = series("memory_usage", [0.5, 0.95, 0.95], step=60)
    assert fired(history.evaluate([rule("memory_usage > 0.9")], frame(rows), grid(120, 60))) == [(60, None)]


def test_lookback_ends_a_series_after_five_minutes() -> None:
    rows = [(0, "memory_usage", 0.95)]
    # (a series of no run: a recorded run's series end with the run, see the test below)
    assert fired(history.evaluate([rule("memory_usage > 0.9")], frame(rows, run=""), grid(600, 60))) == [(0, 360)]
    # within a run the lookback holds as long as the run goes on (its end from its metadata)
    alerts = history.evaluate([rule("memory_usage > 0.9")], frame(rows), grid(600, 60), ends={"r1": T0 + 600})
    assert fired(alerts) == [(0, 360)]


def test_a_runs_series_end_with_the_run_whatever_the_grid_covers() -> None:
    # Why: another run selected beside it (`alerts test --all`) stretches the grid; the run's own verdict
    # must not change, so nothing of it answers after its last sample (as live, after its staleness marker).
    rows = [(0, "memory_usage", 0.95), (30, "memory_usage", 0.95)]
    alerts = history.evaluate([rule("memory_usage > 0.9", for_=60)], frame(rows), grid(600, 10))
    assert alerts == []
    alerts = history.evaluate([rule("memory_usage > 0.9")], frame(rows), grid(600, 10))
    assert fired(alerts) == [(0, 40)]


# --- series semantics -------------------------------------------------------------------------------------


def test_each_gpu_fires_its_own_alert_with_labels_and_annotations() -> None:
    rows = (
        series("gpu_utilization", [0.1] * 10, labels={"gpu": "0"})
        + series("gpu_utilization", [0.9] * 5 + [0.1] * 5, labels={"gpu": "1"})
        + series("gpu_process_memory_used", [1e9] * 10, labels={"gpu": "0"})
        + series("gpu_process_memory_used", [1e9] * 10, labels={"gpu": "1"})
    )
    r = rule(
        "gpu_utilization < 20% and gpu_process_memory_used > 0",
        name="idle",
        labels={"team": "ml"},
        annotations={"summary": "GPU {{ $labels.gpu }} at {{ $value | humanizePercentage }} on {{ $labels.host }}"},
    )
    alerts = history.evaluate([r], frame(rows), grid(90))
    assert [(dict(a.labels)["gpu"], a.fired_at - T0) for a in alerts] == [("0", 0), ("1", 50)]
    assert dict(alerts[0].labels) == {
        "alertname": "idle",
        "gpu": "0",
        "host": "h1",
        "run": "r1",
        "severity": "warning",
        "team": "ml",
    }
    assert dict(alerts[0].annotations) == {"summary": "GPU 0 at 10% on h1"}
    assert alerts[0].run == "r1"


def test_flapping_alerts_render_their_own_value_and_share_the_rest() -> None:
    # Labels and annotations that do not read $value are rendered once per series and reused; the
    # ones that do must still show each episode's own value, and series keep their own labels.
    values = [0.95, 0.5, 0.97, 0.5, 0.99, 0.5]
    rows = series("gpu_memory_usage", values, labels={"gpu": "0"}) + series(
        "gpu_memory_usage", [v - 0.01 for v in values], labels={"gpu": "1"}
    )
    fixed = rule(
        "gpu_memory_usage > 0.9",
        name="fixed",
        labels={"gpu_name": "card {{ $labels.gpu }}"},
        annotations={"summary": "GPU {{ $labels.gpu }} is full", "all": "{{ $labels }}"},
    )
    valued = rule(
        "gpu_memory_usage > 0.9",
        name="valued",
        labels={"level": "{{ $value | humanizePercentage }}"},
        annotations={"summary": "GPU {{ $labels.gpu }} at {{ $value }}"},
    )
    alerts = history.evaluate([fixed, valued], frame(rows), grid(50))
    got = [(a.rule, dict(a.labels)["gpu"], a.fired_at - T0, a.value) for a in alerts]
    assert got == [
        (r, gpu, t, pytest.approx(v - (gpu == "1") * 0.01))
        for t, v in ((0, 0.95), (20, 0.97), (40, 0.99))
        for r in ("fixed", "valued")
        for gpu in ("0", "1")
    ]
    for a in alerts:
        labels, ann = dict(a.labels), dict(a.annotations)
        gpu = labels["gpu"]
        if a.rule == "fixed":
            assert labels["gpu_name"] == f"card {gpu}"
            assert ann["summary"] == f"GPU {gpu} is full"
            assert ann["all"].startswith("map[")
            assert f"gpu:{gpu}" in ann["all"]
        else:
            assert labels["level"] == f"{a.value * 100:.4g}%"
            assert ann == {"summary": f"GPU {gpu} at {a.value!r}"}
    # Stepping the state machine tick by tick (no caching there) gives the same texts.
    stepped = [
        (e.rule, e.labels, e.annotations)
        for _k, _states, events in step_over([fixed, valued], prepare(frame(rows), ["gpu_memory_usage"]), grid(50))
        for e in events
        if e.state == "firing"
    ]
    assert sorted(stepped) == sorted((a.rule, a.labels, a.annotations) for a in alerts)


def test_a_series_with_fewer_labels_is_broadcast() -> None:
    rows = series("gpu_utilization", [0.1] * 3, labels={"gpu": "0"}) + series(
        "gpu_utilization", [0.1] * 3, labels={"gpu": "1"}
    )
    rows += series("memory_usage", [0.95] * 3)
    alerts = history.evaluate([rule("gpu_utilization < 0.2 and memory_usage > 0.9")], frame(rows), grid(20))
    assert sorted(dict(a.labels)["gpu"] for a in alerts) == ["0", "1"]


def test_runs_are_separate_series() -> None:
    both = pl.concat(
        [frame(series("memory_usage", [0.95] * 3), run="a"), frame(series("memory_usage", [0.5] * 3), run="b")]
    )
    alerts = history.evaluate([rule("memory_usage > 0.9")], both, grid(20))
    assert [a.run for a in alerts] == ["a"]


def test_nan_compares_false_and_not_isfinite_catches_it() -> None:
    rows = series("loss", [1.0, math.nan, math.inf, 2.0])
    assert history.evaluate([rule("loss > 0")], frame(rows), grid(30))[0].resolved_at - T0 == 10
    alerts = history.evaluate([rule("not isfinite(loss)")], frame(rows), grid(30))
    assert fired(alerts) == [(10, 30)]
    assert math.isnan(alerts[0].value)


def test_plateau_patience_three_then_recovery() -> None:
    vals = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.85, 0.86]
    rows = series("validation_loss", vals, step=60)
    rules = [r for r in builtin_rules(load_config()) if r.name == "loss_plateau"]
    alerts = history.evaluate(rules, frame(rows), grid(7 * 60, 60))
    # best 0.9 at eval 2; evals 3, 4, 5 bring nothing better -> fires at the 5th (4m); 0.85 at 6m resolves
    assert fired(alerts) == [(240, 360)]
    assert alerts[0].value == 3


def test_plateau_uses_training_loss_when_no_validation_is_logged() -> None:
    # Per-step loss every 10 s: falling for 20m, then flat from 20m; the median of the last 30m comes down to
    # the flat value (that of the last 15m) once the flat part is most of it, at 35m.
    values = [2.0 - 0.001 * i for i in range(120)] + [1.88] * 120
    rows = series("loss", values)
    rules = [r for r in builtin_rules(load_config()) if r.name in ("loss_plateau", "train_loss_plateau")]
    # (true from 35m, for 2m: fires at 37m; the run's last sample is at 39m50s: at 40m, after its end, the
    # alert resolves, as it does live)
    assert fired(history.evaluate(rules, frame(rows), grid(2400))) == [(2220, 2400)]
    assert {a.rule for a in history.evaluate(rules, frame(rows), grid(2400))} == {"train_loss_plateau"}
    rows += series("validation_loss", [1.0, 0.5, 0.4, 0.3, 0.2], step=600)
    assert history.evaluate(rules, frame(rows), grid(2400)) == []


def test_window_functions() -> None:
    rows = series("batch_queue_size", [1, 2, 3, 4, 5, 6], step=60)
    f, g = frame(rows), grid(300, 60)

    def value_at_end(cond: str) -> float:
        alerts = history.evaluate([rule(cond)], f, g)
        states = AlertStates()
        step_all(states, [rule(cond)], f, T0 + 300)
        last = [i.value for t in states.active.values() for i in t.values()]
        assert alerts
        assert last
        return last[0]

    assert value_at_end("avg(batch_queue_size, 2m) > -1") == 5.0  # samples at 3m, 4m, 5m (both ends included)
    assert value_at_end("max(batch_queue_size, 2m) > -1") == 6.0
    assert value_at_end("min(batch_queue_size, 2m) > -1") == 4.0
    assert value_at_end("sum(batch_queue_size, 2m) > -1") == 15.0
    assert value_at_end("count(batch_queue_size, 2m) > -1") == 3.0
    assert value_at_end("p50(batch_queue_size, 5m) > -1") == 3.5
    assert value_at_end("delta(batch_queue_size, 2m) > -1") == pytest.approx(2.0)
    assert value_at_end("rate(batch_queue_size, 2m) > -1") == pytest.approx(2.0 / 120)
    assert value_at_end("increase(batch_queue_size, 5m) > -1") == pytest.approx(5.0)


def test_counter_reset_is_corrected_in_increase() -> None:
    rows = series("gpu_energy", [10, 20, 30, 5, 15], step=60)
    states = AlertStates()
    step_all(states, [rule("increase(gpu_energy, 4m) > 0")], frame(rows), T0 + 240)
    (inst,) = states.firing("r")
    assert inst.value == pytest.approx(10 + 10 + 5 + 10)


# --- history == stepping; state survives JSON -------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@example([0.95, 0.5, 0.95], 0, 1)  # the condition returns on the first tick keep_firing_for no longer covers
@given(
    st.lists(st.sampled_from([0.5, 0.95]), min_size=1, max_size=25),
    st.integers(0, 4),
    st.integers(0, 4),
)
def test_vectorised_history_equals_stepping(values: list[float], for_ticks: int, keep_ticks: int) -> None:
    r = rule("memory_usage > 0.9", for_=60.0 * for_ticks, keep_firing_for=60.0 * keep_ticks)
    f = frame(series("memory_usage", values, step=60))
    g = grid(60 * (len(values) - 1), 60)
    episodes = [(a.fired_at, a.resolved_at) for a in history.evaluate([r], f, g)]
    stepped: list[tuple[float, float | None]] = []
    for _k, _states, events in step_over([r], prepare(f, ["memory_usage"]), g):
        for e in events:
            if e.state == "firing":
                stepped.append((e.started_at, None))
            else:
                stepped[-1] = (stepped[-1][0], e.ended_at)
    assert episodes == stepped


def test_states_round_trip_through_json() -> None:
    r = rule("memory_usage > 0.9", for_=120, keep_firing_for=60, annotations={"summary": "{{ $value }}"})
    f = frame(series("memory_usage", [0.95, 0.95, 0.95, 0.5, 0.5, 0.5], step=60))
    straight = AlertStates()
    resumed = AlertStates()
    a_events, b_events = [], []
    for k in range(6):
        t = T0 + 60 * k
        a_events += step_all(straight, [r], f, t)
        b_events += step_all(resumed, [r], f, t)
        resumed = AlertStates.from_json(resumed.to_json())
    assert a_events == b_events
    assert [(e.state, e.started_at - T0, e.ended_at and e.ended_at - T0) for e in a_events] == [
        ("firing", 120, None),
        ("resolved", 120, 240),
    ]


def test_evaluate_over_parquet_in_the_store_layout(metrics_dir: Path) -> None:
    write_samples(metrics_dir, [(T0 + i * 10, "memory_usage", 0.95 if 3 <= i < 6 else 0.5) for i in range(10)])
    lf = pl.scan_parquet(str(metrics_dir / "group=*" / "*" / "*" / "*.parquet"), hive_partitioning=True)
    alerts = history.evaluate([rule("memory_usage > 0.9")], lf, grid(90))
    assert fired(alerts) == [(30, 60)]
    assert alerts[0].run == "20260101T000000Z-testhost-0001"
    assert alerts[0].host == "testhost"


def test_a_nan_only_spoils_the_windows_that_contain_it() -> None:
    rows = series("loss", [1, 1, math.nan, 1, 1, 1, 1, 1])
    for cond in ("avg(loss, 30s) > 0", "sum(loss, 30s) > 0"):
        assert fired(history.evaluate([rule(cond)], frame(rows), grid(70))) == [(0, 20), (60, None)], cond
    assert fired(history.evaluate([rule("count(loss, 30s) >= 4")], frame(rows), grid(70))) == [(30, None)]


# --- windows against a brute-force reference; rules that share parts ---------------------------------------


def _window_reference(func: str, samples: list[tuple[int, float]], tick: int, width: int) -> float | None:
    """What [tick - width, tick] holds, computed the slow obvious way (None: no samples, no row)."""
    vals = [v for t, v in samples if tick - width <= t <= tick]
    if not vals:
        return None
    finite = [v for v in vals if not math.isnan(v)]
    if func == "count":
        return float(len(vals))
    if func in ("sum", "avg"):
        total = math.fsum(vals) if all(math.isfinite(v) for v in vals) else sum(vals)
        return total / len(vals) if func == "avg" else total
    if func in ("min", "max"):  # PromQL's min/max_over_time skip NaN; NaN only when all are
        return (min if func == "min" else max)(finite) if finite else math.nan
    # quantile 0.5 as PromQL's quantile_over_time: NaN sorts first, linear between the two middle samples
    ordered = [math.nan] * (len(vals) - len(finite)) + sorted(finite)
    pos = 0.5 * (len(ordered) - 1)
    lo, frac = int(pos), pos - int(pos)
    return ordered[lo] * (1 - frac) + ordered[min(lo + 1, len(ordered) - 1)] * frac


# How many ticks a series may have answered one by one instead of merged into a rolling pass: always
# merged (0), as shipped, always one by one. Each way must give the reference's windows.
FEW = (0, history_windows.FEW_TICKS, 10**9)


@pytest.mark.parametrize("few", FEW)
@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0, 1, 1, 1, 2, 7]), min_size=1, max_size=40),
    values=st.lists(st.sampled_from([0.5, 1.0, 2.5, -3.0, 7.0, math.nan]), min_size=40, max_size=40),
    width=st.integers(1, 12),
    step=st.sampled_from([1, 2, 3]),
    regular=st.booleans(),
)
def test_windows_match_a_brute_force_reference(
    few: int, gaps: list[int], values: list[float], width: int, step: int, regular: bool
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(history_windows, "FEW_TICKS", few)
        _windows_match_the_reference(gaps, values, width, step, regular)


def _windows_match_the_reference(gaps: list[int], values: list[float], width: int, step: int, regular: bool) -> None:
    # regular: one sample a second (windows read off each sample's own rolling window, fixed-size);
    # otherwise duplicates, gaps and ticks between samples (the merged path for those ticks).
    times = list(range(len(gaps))) if regular else [sum(gaps[: i + 1]) for i in range(len(gaps))]
    samples = [(t, values[i]) for i, t in enumerate(times)]
    # (no run: the ticks after the last sample see windows reaching back to it, as Prometheus' do)
    f = frame([(t, "batch_queue_size", v) for t, v in samples], run="")
    g = grid(times[-1] + width + 2, step)
    comp = Compiler(prepare(f, ["batch_queue_size"]), g, LOOKBACK)
    for func in ("count", "sum", "avg", "min", "max", "p50"):
        vec = comp.eval(lang.parse(f"{func}(batch_queue_size, {width}s)").tree)
        got = {k: v for k, _sid, v, _ok in vec.df.iter_rows()}
        for k in range(g.n):
            want = _window_reference(
                "quantile" if func == "p50" else func, [(T0 + t, v) for t, v in samples], T0 + k * step, width
            )
            if want is None:
                assert k not in got, (func, k)
            else:
                assert got[k] == pytest.approx(want, nan_ok=True), (func, k)


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["1s", "2s", "3s", "gaps", "nan"]), min_size=2, max_size=6),
    lengths=st.lists(st.integers(1, 30), min_size=6, max_size=6),
    width=st.integers(1, 12),
    step=st.sampled_from([1, 2, 3]),
)
def test_a_series_windows_are_the_same_beside_other_series(
    kinds: list[str], lengths: list[int], width: int, step: int
) -> None:
    # Windows over many series are computed in one pass over all of them (rolling ... over sid): no
    # window may reach into the series before it, whatever each one's interval, gaps or NaN. And the
    # ticks answered one by one give the very floats the merged rolling pass gives.
    for few in FEW:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(history_windows, "FEW_TICKS", few)
            got = _windows_beside_other_series(kinds, lengths, width, step)
        if few == 0:
            merged = got
        assert got == merged, few


def _windows_beside_other_series(kinds: list[str], lengths: list[int], width: int, step: int) -> dict:
    rows = []
    for n, (kind, length) in enumerate(zip(kinds, lengths, strict=False)):
        gap = {"1s": 1, "2s": 2, "3s": 3}.get(kind)
        times = [i * gap for i in range(length)] if gap else [i * i // 3 + i for i in range(length)]
        values = [float((i * 7 + n * 3) % 11) - 4 for i in range(length)]
        if kind == "nan":
            values[length // 2] = math.nan
        rows += [(5 * n + t, "batch_queue_size", v, {"gpu": str(n)}) for t, v in zip(times, values, strict=True)]
    g = grid(max(r[0] for r in rows) + width + 2, step)
    out = {}
    for func in ("min(", "max(", "p50(", "quantile(0.25, "):
        cond = f"{func}batch_queue_size, {width}s)"
        tree = lang.parse(cond).tree
        together = Compiler(prepare(frame(rows, run=""), ["batch_queue_size"]), g, LOOKBACK).eval(tree)
        got = {(together.labels[sid]["gpu"], k): v for k, sid, v, _ok in together.df.iter_rows()}
        alone = {}
        for n in range(len(kinds)):
            mine = [r for r in rows if r[3]["gpu"] == str(n)]
            vec = Compiler(prepare(frame(mine, run=""), ["batch_queue_size"]), g, LOOKBACK).eval(tree)
            alone.update({(str(n), k): v for k, _sid, v, _ok in vec.df.iter_rows()})
        assert got.keys() == alone.keys(), cond
        differ = [
            key for key in got if not (got[key] == alone[key] or (got[key] != got[key] and alone[key] != alone[key]))
        ]
        assert not differ, (cond, differ[:5])
        out[cond] = {key: repr(v) for key, v in got.items()}  # repr: NaN equal to NaN, -0.0 apart from 0.0
    return out


_LABELS = st.dictionaries(st.sampled_from(["run", "host", "rank", "gpu"]), st.sampled_from(["0", "1"]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(left=st.lists(_LABELS, max_size=8), right=st.lists(_LABELS, max_size=8), exact=st.booleans())
def test_series_pair_up_as_comparing_every_pair_does(left: list[dict], right: list[dict], exact: bool) -> None:
    # matching finds partners by a hashed index; it must give agree()'s pairs, in the loop's order.
    from llamamon.rules.promql import agree, matching

    pairwise = [(i, j) for i, a in enumerate(left) for j, b in enumerate(right) if ((a == b) if exact else agree(a, b))]
    assert list(matching(left, right, exact=exact)) == pairwise


def test_rules_sharing_parts_give_the_alerts_they_give_alone() -> None:
    rows = series("memory_usage", [0.5, 0.95, 0.97, 0.99, 0.5, 0.93, 0.96, 0.5], step=10)
    rows += series("batch_queue_size", [10, 120, 160, 170, 20, 130, 150, 10], step=10)
    f, g = frame(rows), grid(70)
    rules = [
        rule("memory_usage > 0.9", name="a"),
        rule("memory_usage > 0.9 and max(batch_queue_size, 20s) > 150", name="b", for_=10),
        rule("max(batch_queue_size, 20s) > 150", name="c"),
        rule("memory_usage > 0.95", name="d"),
        rule("memory_usage > 0.9", name="e", keep_firing_for=10),
    ]
    together = [(a.rule, a.fired_at, a.resolved_at, a.value, a.peak) for a in history.evaluate(rules, f, g)]
    alone = [(a.rule, a.fired_at, a.resolved_at, a.value, a.peak) for r in rules for a in history.evaluate([r], f, g)]
    assert sorted(together) == sorted(alone)
    assert {r for r, *_ in together} == {"a", "b", "c", "d", "e"}


def test_and_with_no_partner_rows_at_the_tick_is_empty_not_an_error() -> None:
    # memory_usage's only sample is older than the lookback at the tick: the right side has no rows.
    rows = [(0, "memory_usage", 0.9), *series("gpu_utilization", [0.9] * 40, labels=GPU)]
    states = AlertStates()
    cond = "avg(gpu_utilization, 1m) > 0.5 and memory_usage > 0.5"
    assert step_all(states, [rule(cond)], frame(rows), T0 + 390) == []
    assert step_all(states, [rule(cond)], frame(rows), T0 + 120) != []


# --- the numpy shortcuts give what the polars and binary-search formulations give -------------------------


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 1.0, 2.5, -3.0, 7.0, math.nan, math.inf, -math.inf]), max_size=30))
def test_counter_resets_order_nan_as_polars_does(values: list[float]) -> None:
    from llamamon.rules.history_windows import _resets

    df = pl.DataFrame({"value": values}, schema={"value": pl.Float64})
    prev = pl.col("value").shift(1)
    want = df.select(pl.when(pl.col("value") < prev).then(prev).otherwise(0.0).cum_sum())["value"].to_list()
    got = _resets(df["value"].to_numpy()).tolist()
    assert [repr(x) for x in got] == [repr(x) for x in want]


@settings(max_examples=80, deadline=None)
@given(
    series_ticks=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 30), st.integers(1, 20)).map(lambda a: list(range(a[0], a[0] + a[1]))),
            st.lists(st.integers(0, 40), min_size=1, max_size=15, unique=True).map(sorted),
            st.just([]),
        ),
        min_size=1,
        max_size=5,
    ),
    wanted=st.lists(st.tuples(st.integers(-1, 6), st.integers(0, 45)), max_size=30),
)
def test_partner_positions_agree_with_a_binary_search(series_ticks: list[list[int]], wanted: list[tuple]) -> None:
    import numpy as np

    from llamamon.rules.history_vectors import _positions

    rkey = np.array([sid * 2**32 + k for sid, ks in enumerate(series_ticks) for k in ks], dtype=np.int64)
    if rkey.size == 0:
        return
    lkey = np.array([-1 if sid < 0 else sid * 2**32 + k for sid, k in wanted] + [int(rkey[0])], dtype=np.int64)
    pos = _positions(rkey, lkey)
    assert ((pos >= 0) & (pos < rkey.size)).all()
    ref = np.searchsorted(rkey, lkey).clip(0, rkey.size - 1)
    hit = rkey[ref] == lkey
    assert (rkey[pos] == lkey).tolist() == hit.tolist()
    assert pos[hit].tolist() == ref[hit].tolist()


# --- aggregations across series -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # (gpu 0..3 on two hosts: 1, 2, 3 and NaN on a; 10, 20 on b; the run is r1 everywhere)
        ("sum by (host) (gpu_utilization)", {(("host", "a"),): math.nan, (("host", "b"),): 30.0}),
        ("count by (host) (gpu_utilization)", {(("host", "a"),): 4.0, (("host", "b"),): 2.0}),
        (
            "max without (gpu) (gpu_utilization)",
            {(("host", "a"), ("run", "r1")): 3.0, (("host", "b"), ("run", "r1")): 20.0},
        ),
        ("min by () (gpu_utilization)", {(): 1.0}),  # NaN skipped
        ("quantile by () (0.5, gpu_utilization)", {(): 2.5}),  # NaN sorts first: NaN 1 2 3 10 20
        ("avg by (run) (gpu_utilization > 1)", {(("run", "r1"),): 8.75}),  # only where it holds: 2 3 10 20
        ("count by (host) (gpu_utilization > 5)", {(("host", "b"),): 2.0}),  # a group with none has no result
    ],
)
def test_aggregations_group_and_combine_as_promql(text: str, want: dict) -> None:
    rows = [(0, "gpu_utilization", v, {"gpu": str(i)}) for i, v in enumerate([1.0, 2.0, 3.0, math.nan])]
    f = pl.concat(
        [
            frame(rows, host="a"),
            frame([(0, "gpu_utilization", v, {"gpu": str(i)}) for i, v in enumerate([10.0, 20.0])], host="b"),
        ]
    )
    vec = Compiler(prepare(f, ["gpu_utilization"]), grid(0), LOOKBACK).eval(lang.parse(text).tree)
    got = {tuple(sorted(vec.labels[sid].items())): v for _k, sid, v, _ok in vec.df.iter_rows()}
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(v, nan_ok=True) for k, v in want.items()), got


def test_a_rank_against_the_median_pairs_with_its_own_series() -> None:
    """``x / quantile without (rank) (0.5, x)``: one result per rank, with the rank's labels."""
    rows = [(0, "step", v, {"rank": str(i)}) for i, v in enumerate([10.0, 12.0, 30.0])]
    vec = Compiler(prepare(frame(rows), ["step"]), grid(0), LOOKBACK).eval(
        lang.parse("step / quantile without (rank) (0.5, step)").tree
    )
    got = {vec.labels[sid]["rank"]: v for _k, sid, v, _ok in vec.df.iter_rows()}
    assert got == {"0": pytest.approx(10 / 12), "1": 1.0, "2": 2.5}
