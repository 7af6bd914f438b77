"""THE contract between the two rule evaluators: the live one (``rules.instant`` over LiveAlerts' buffers,
stepping ``rules.states.AlertStates``) and the history one (``rules.history``, vectorised with polars, what
``alerts test``, the report and ``alerts test --unit`` replay) give the same answers. A change to either
evaluator, to the state machine or to the episodes keeps these tests green, or it changes both sides.

Two levels. The conditions: at every evaluation the live elements equal the history's conditions on a
one-tick grid, over the window's rows as one list (deduplicated, trimmed, training metrics held),
``prepare`` into polars, each run's last sample from what ``add`` saw. Random runs, hosts, labels, gaps,
NaN and infinities, aliases, runs that end (staleness markers), rows that arrive twice, and random
conditions over every function and operator of the language; both must give the same elements. The
episodes: every built-in rule, with its own ``for``/``keep_firing_for`` and with others, over flapping
samples of what it reads, fed to LiveAlerts as ``record`` feeds it (an evaluation every
``update_frequency``, the run ended at its last sample) and replayed as ``alerts test`` replays the run:
the same episodes, fired and resolved at the same times (``for``, ``keep_firing_for`` and the run's end).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llamamon.config import load_config
from llamamon.config.schema import RuleConfig
from llamamon.errors import RuleError
from llamamon.rules.history import conditions
from llamamon.rules.history_input import END, Grid, prepare
from llamamon.rules.instant import Instant
from llamamon.rules.model import needed_metrics
from llamamon.runtime.live_alerts import LiveAlerts
from llamamon.samples import Row, labels_from_str, labels_to_str, make_labels

US = 1_000_000
T0 = 1_790_000_000.0
STEP = 2.5  # seconds between the times a sample may fall on

CONFIG = """monitoring:
  export_format: none
aliases:
  myalias: my_counter
alerts:
  builtin:
    memory_warning: false
    memory_critical: false
    gpu_underutilized: false
    gpu_memory_high: false
    validation_loss_high: false
    learning_rate_low: false
    loss_plateau: false
    train_loss_plateau: false
    inference_latency_high: false
    inference_timeouts: false
    batch_queue_high: false
    loss_not_finite: false
    training_straggler: false
"""

# raw metric name -> the labels its series carry (an alias stores under its own raw name)
LABELS = {
    "memory_usage": [{}],
    "gpu_temperature": [{"gpu": "0"}, {"gpu": "1"}],
    "loss": [{}],
    "lr": [{}],  # catalog alias of learning_rate
    "validation_loss": [{}],
    "learning_rate": [{}],
    "my_counter": [{"rank": "a"}, {"rank": "b"}],
    "myalias": [{"rank": "a"}],  # config alias of my_counter
    # a catalog histogram: a job's observations, and a scraped server's buckets (some may be missing)
    "inference_latency": [{"model": "m"}],
    "inference_latency_bucket": [{"instance": "i", "le": le} for le in ("0.1", "0.5", "2.5", "+Inf")],
    "inference_latency_sum": [{"instance": "i"}],
    "inference_latency_count": [{"instance": "i"}],
}
ALIASED = {"lr", "myalias"}  # their samples fall between the canonical ones: never the same time
RUNS = [("", "h1"), ("R1", "h1"), ("R2", "h2"), ("R1", "h2")]
VALUES = [0.0, 1.0, 2.0, 3.0, 0.5, -1.0, 10.0, 100.0, 250.0, 1e6, math.nan, math.inf, -math.inf]

NAMES = ["memory_usage", "gpu_temperature", "loss", "validation_loss", "val_loss", "learning_rate", "my_counter"]
NAMES += ["myalias", "lr", "inference_latency"]
CANONICAL = {"val_loss": "validation_loss", "lr": "learning_rate", "myalias": "my_counter"}
CANONICAL |= {f"inference_latency_{part}": "inference_latency" for part in ("bucket", "sum", "count")}
CANONICAL |= {n: n for n in NAMES if n not in CANONICAL}
MATCHERS = ["", "", "", "", '{run="R1"}', '{run!="R2"}', '{host=~"h[12]"}', '{run=~""}', '{run="R2", host="h2"}']
OWN_MATCHERS = {"gpu_temperature": ['{gpu="0"}', '{gpu!~"1"}'], "my_counter": ['{rank="a"}', '{rank!="b"}']}
WINDOWS = ["1s", "10s", "30s", "1m", "5m", "7.5s", "2m30s"]
NUMBERS = ["0", "1", "0.5", "2", "-1", "100", "250", "inf", "nan", "1e6", "50%", "(1 / 0)", "abs(-2)", "isnan(nan)"]
NUMBERS += ["(0 / 0)", "-(2 * 3)", "(1 + 1)"]
EDGES = [0.0, 0.5, 1.0, 7.5, 10.0, 30.0, 60.0, 150.0, 300.0, 302.5, 305.0, 450.0, 600.0]
WINDOW_FUNCS = ["avg", "min", "max", "sum", "count", "rate", "delta", "increase", "p50", "p90", "p95", "p99"]
# aggregations across series: what each groups by (labels the data has, and ones it lacks)
AGGREGATIONS = ["sum", "avg", "min", "max", "count", "quantile"]
GROUPINGS = ["by ()", "without ()", "by (host)", "without (run)", "without (rank, run, host)", "by (gpu, run)"]
GROUPINGS += ["without (le)", "by (nothing)"]

number = st.sampled_from(NUMBERS)


def _combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arith = st.sampled_from(["+", "-", "*", "/"])
    cmp = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
    return st.one_of(
        st.builds(lambda v: f"abs({v})", inner),
        st.builds(lambda v: f"-({v})", inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, arith, inner),
        st.builds(lambda a, op, n: f"({a} {op} {n})", inner, arith, number),
        st.builds(lambda n, op, a: f"({n} {op} {a})", number, arith, inner),
        st.builds(lambda a, op, n: f"({a} {op} {n})", inner, cmp, number),
        st.builds(lambda n, op, a: f"({n} {op} {a})", number, cmp, inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, cmp, inner),
        st.builds(lambda f, v: f"{f}({v})", st.sampled_from(["isnan", "isinf", "isfinite"]), inner),
        st.builds(lambda v: f"(not {v})", inner),
        st.builds(_aggregation, st.sampled_from(AGGREGATIONS), st.sampled_from(GROUPINGS), inner),
        # over the series where a comparison holds; and a series against its group's aggregate
        st.builds(
            lambda op, g, a, c, n: _aggregation(op, g, f"({a} {c} {n})"),
            st.sampled_from(AGGREGATIONS),
            st.sampled_from(GROUPINGS),
            inner,
            cmp,
            number,
        ),
        st.builds(
            lambda a, op, agg, g: f"({a} {op} {_aggregation(agg, g, a)})",
            inner,
            st.sampled_from(["/", "-", ">", "<=", "and", "unless"]),
            st.sampled_from(AGGREGATIONS),
            st.sampled_from(GROUPINGS),
        ),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(["and", "or", "unless"]), inner),
        # the same series on both sides: merged by or, partnered by and/unless
        st.builds(lambda v, op: f"({v} {op} -({v}))", inner, st.sampled_from(["and", "or", "unless"])),
        st.builds(lambda v, op: f"({v} {op} ({v} > 1))", inner, st.sampled_from(["and", "or", "unless"])),
    )


def _aggregation(op: str, grouping: str, inner: str) -> str:
    # (an inner condition that holds nowhere has nothing to aggregate: the result has no series)
    return f"{op} {grouping} ({'0.5, ' if op == 'quantile' else ''}{inner})"


def conditions_over(names: list[str]) -> st.SearchStrategy[str]:
    """Conditions over every function and operator, on metric names the data mostly has."""
    selector = st.sampled_from(names).flatmap(
        lambda n: st.sampled_from([n + m for m in MATCHERS + OWN_MATCHERS.get(CANONICAL[n], [])])
    )
    windows = st.sampled_from(WINDOWS)
    leaf = st.one_of(
        selector,
        st.builds(lambda f, s, w: f"{f}({s}, {w})", st.sampled_from(WINDOW_FUNCS), selector, windows),
        st.builds(
            lambda q, s, w: f"quantile({q}, {s}, {w})", st.sampled_from(["0", "0.25", "0.5", "1"]), selector, windows
        ),
        st.builds(lambda f, s: f"{f}({s})", st.sampled_from(["last", "evals_since_best"]), selector),
    )
    return st.one_of(leaf, st.recursive(leaf, _combine, max_leaves=5))


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[str], dict]:
    """(conditions, history): samples of a few metrics over runs and hosts, ends, evaluation times."""
    metrics = draw(st.lists(st.sampled_from(sorted(LABELS)), min_size=1, max_size=3, unique=True))
    keys = [(run, host, m, labels_to_str(make_labels(lab))) for run, host in RUNS for m in metrics for lab in LABELS[m]]
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=7, unique=True))
    series = {}
    for key in chosen:
        steps = draw(st.lists(st.integers(0, 160), min_size=3, max_size=40, unique=True))
        early = [s for s in steps if s < 40]
        if early and not draw(st.integers(0, 3)):  # a series that stops early: only the lookback (or holding) answers
            steps = early
        shift = 0.25 if key[2] in ALIASED else 0.0
        series[key] = [(T0 + s * STEP + shift, draw(st.sampled_from(VALUES))) for s in sorted(steps)]
    runs = sorted({k[0] for k in chosen} - {""})
    ends = {r: T0 + draw(st.integers(0, 170)) * STEP + 0.5 for r in runs if draw(st.booleans())}
    beats = {r: [T0 + s * STEP + 0.75 for s in draw(st.lists(st.integers(0, 300), max_size=5))] for r in runs}
    # Evaluation times anywhere, and on the edges: a sample's time plus a window or the lookback exactly.
    times = [t for samples in series.values() for t, _v in samples]
    edge = st.tuples(st.sampled_from(times), st.sampled_from(EDGES)).map(sum)
    anywhere = st.integers(0, 320).map(lambda e: T0 + e * STEP)
    evals = sorted(set(draw(st.lists(st.one_of(anywhere, edge), min_size=1, max_size=5))))
    twice = draw(st.booleans())
    history = {"series": series, "ends": ends, "beats": beats, "evals": evals, "twice": twice}
    names = [n for n in NAMES if CANONICAL[n] in {CANONICAL[m] for m in metrics}] + [draw(st.sampled_from(NAMES))]
    return draw(st.lists(conditions_over(names), min_size=2, max_size=5)), history


class PolarsWindow:
    """The live window as it was kept for the polars engine: one list of rows, trimmed and prepared per tick."""

    def __init__(self, live: LiveAlerts) -> None:
        self.live = live
        self.entries: list[tuple] = []
        self.ended: dict[str, int] = {}
        self.seen: dict[str, int] = {}

    def add(self, rows: list[Row], run: str, host: str) -> None:
        seen = self.seen.get(run, 0)
        for row in rows:
            t = round(row.time * US)
            seen = max(seen, t)
            if row.metric in self.live.raw_metrics:
                self.entries.append((t, run, host, row.metric, row.value, labels_to_str(row.labels), False))
        self.seen[run] = seen

    def add_entries(self, entries: list[tuple]) -> None:
        for e in entries:
            self.seen[e[1]] = max(self.seen.get(e[1], 0), e[0])
            if e[3] in self.live.raw_metrics:
                self.entries.append(e)

    def end_run(self, run: str, at: float) -> None:
        last = max((e[0] for e in self.entries if e[1] == run), default=0)
        t = max(round(at * US), last) + 1
        self.ended[run] = t
        for run_, host, metric, labels in {(e[1], e[2], e[3], e[5]) for e in self.entries if e[1] == run}:
            self.entries.append((t, run_, host, metric, math.nan, labels, True))

    def samples(self, now: float):
        cutoff = round((now - self.live.window) * US)
        held: dict[tuple, tuple] = {}
        for e in self.entries:
            if e[0] < cutoff and e[3] in self.live._held_metrics:
                key = (e[1], e[2], e[3], e[5])
                if key not in held or held[key][0] <= e[0]:
                    held[key] = e
        # What evals_since_best counts is never trimmed here: the offline engine counts over the whole history.
        counted = [e for e in self.entries if e[0] < cutoff and e[3] in self.live._best_metrics]
        held = {key: e for key, e in held.items() if key[2] not in self.live._best_metrics}
        recent = [e for e in self.entries if e[0] >= cutoff]
        self.entries = [*counted, *(e for e in held.values() if not e[6]), *recent]
        for run in [r for r, t in self.ended.items() if t < cutoff]:
            del self.ended[run]
        for run in [r for r, t in self.seen.items() if t < cutoff and r not in self.ended]:
            del self.seen[run]
        schema = {"time": pl.Int64, "run": pl.String, "host": pl.String, "metric": pl.String}
        schema |= {"value": pl.Float64, "labels": pl.String, "stale": pl.Boolean}
        df = pl.DataFrame(self.entries, schema=schema, orient="row")
        df = df.unique(["time", "run", "host", "metric", "labels", "stale"], keep="first", maintain_order=True)
        df = df.with_columns(pl.col("time").cast(pl.Datetime("us", "UTC")))
        samples = prepare(df, needed_metrics(self.live.rules), self.live.aliases)
        if samples.labels:
            seen = [-1 if (r := lab.get("run", "")) in self.ended else self.seen.get(r, -1) for lab in samples.labels]
            # A run still going has no end yet: its series answer on through the lookback, as live.
            going = pl.Series("going", [lab.get("run", "") not in self.ended for lab in samples.labels])
            samples.run_last = samples.run_last.sort("sid").with_columns(
                run_last=pl.max_horizontal("run_last", pl.Series("seen", seen, pl.Int64)),
                run_end=pl.when(going).then(pl.lit(END, pl.Int64)).otherwise("run_end"),
            )
        return samples


def reference(window: PolarsWindow, now: float) -> dict[str, list]:
    """Per rule, the elements the history's conditions on a one-tick grid give (in its order)."""
    results = conditions(window.live.rules, window.samples(now), Grid(round(now * US), US, 1))
    out = {}
    for rule in window.live.rules:
        df, labels = results[rule.name]
        out[rule.name] = [(make_labels(labels[sid]), value) for _, sid, value in df.iter_rows()]
    return out


def same(a: list, b: list) -> bool:
    if [k for k, _ in a] != [k for k, _ in b]:
        return False
    return all((x != x and y != y) or math.isclose(x, y, rel_tol=1e-9) for (_, x), (_, y) in zip(a, b, strict=True))


BASE: dict = {}


def live_for(texts: list[str], metrics_dir: Path) -> LiveAlerts:
    if "config" not in BASE:
        path = metrics_dir.parent / "base-monitoring.yaml"
        path.write_text(CONFIG)
        BASE["config"] = load_config(str(path))
    base = BASE["config"]
    rules = {f"r{i}": RuleConfig(f"r{i}", text, "warning", (), 0.0, 0.0, {}, {}, True) for i, text in enumerate(texts)}
    cfg = replace(base, alerts=replace(base.alerts, rules=rules))
    try:
        return LiveAlerts(cfg, metrics_dir)
    except RuleError:  # e.g. 50% next to a temperature: not a condition, nothing to compare
        assume(False)
        raise


@settings(
    max_examples=int(os.environ.get("LLAMAMON_INSTANT_EXAMPLES", "60")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_instant_evaluation_gives_the_engines_elements(case, metrics_dir):
    texts, history = case
    live = live_for(texts, metrics_dir)
    old = PolarsWindow(live)
    rows = sorted((t, key, v) for key, samples in history["series"].items() for t, v in samples)
    rows += [(t, (run, "h1", "cpu_usage", ""), 0.5) for run, beats in history["beats"].items() for t in beats]
    rows.sort()
    ended: set[str] = set()
    done = 0
    for now in history["evals"]:
        batch = [r for r in rows[done:] if r[0] <= now]
        done += len(batch)
        for t, (run, host, metric, labels), value in batch:
            if run in ended:
                continue
            row = [Row(t, "custom", metric, value, labels_from_str(labels), None)]
            live.add(row, run, host)
            old.add(row, run, host)
        if history["twice"] and batch:  # a journal row, then the Parquet row it was folded into
            again = [(round(t * US), run, host, m, v, labels, False) for t, (run, host, m, labels), v in batch[::2]]
            again = [e for e in again if e[1] not in ended]
            live.add_entries(again)
            old.add_entries(again)
        for run, end in sorted(history["ends"].items()):
            if end <= now and run not in ended:
                ended.add(run)
                live.end_run(run, end)
                old.end_run(run, end)
        got_view = live._view(now)
        want = reference(old, now)
        instant = Instant(got_view, round(now * US))
        for rule in live.rules:
            got = list(instant.elements(rule.condition.tree).items())
            assert same(got, want[rule.name]), (rule.condition.text, now - T0, got, want[rule.name])


# --- episodes: every built-in rule, live against replayed --------------------------------------------------

STEP_S = 10.0
PALETTE = [0.0, 1e-7, 0.05, 0.5, 0.85, 0.92, 0.97, 1.5, 3.0, 150.0, 2000.0, math.nan, math.inf]
TIMINGS = [None, (30.0, 0.0), (0.0, 45.0), (20.0, 25.0)]  # (for, keep_firing_for); None: the rule's own


def flapping(metrics: list[str], seed: int, for_: float, ranks: int = 0) -> list[tuple[float, str, float, tuple]]:
    """Blocks of 20 s to 7 min (longer for a long ``for``) of one value per metric, sampled every 2 s from T0;
    ``ranks``: that many series of each, labelled rank 0, 1, ..., each flapping on its own."""
    import random

    rng = random.Random(seed)
    rows = []
    span = 1800 + 4 * int(for_)
    for metric in metrics:
        for labels in [make_labels({"rank": str(r)}) for r in range(ranks)] or [()]:
            t = 0
            while t < span:
                value, length = rng.choice(PALETTE), rng.randrange(20, 420 + 2 * int(for_), 2)
                rows += [(T0 + u, metric, value, labels) for u in range(t, min(t + length, span + 1), 2)]
                t += length
    return sorted(rows)


def builtin_conditions() -> dict[str, tuple[str, float, float]]:
    from llamamon.rules.builtin import BUILTIN_NAMES, rules_from_config

    rules = {r.name: r for r in rules_from_config(load_config())}
    return {n: (rules[n].condition.text, rules[n].for_, rules[n].keep_firing_for) for n in BUILTIN_NAMES}


BUILTIN = builtin_conditions()


@pytest.mark.parametrize("timing", TIMINGS, ids=["own", "for", "keep", "for+keep"])
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_rule_fires_and_resolves_live_as_replayed(name, timing, metrics_dir):
    from llamamon.rules.builtin import rules_from_config
    from llamamon.rules.history import replay
    from llamamon.rules.lang import parse
    from llamamon.rules.tree import metric_names, selectors

    text, for_, keep = BUILTIN[name]
    for_, keep = (for_, keep) if timing is None else timing
    base = BASE.get("config") or load_config(str(_base_config(metrics_dir)))
    BASE["config"] = base
    rule = RuleConfig(name, text, "warning", (), for_, keep, {}, {}, True)
    cfg = replace(
        base,
        alerts=replace(base.alerts, rules={name: rule}),
        monitoring=replace(base.monitoring, update_frequency=STEP_S),
    )
    tree = parse(text).tree
    metrics = sorted(metric_names(tree))
    # Why ranks: a rule across ranks (training_straggler) compares series told apart by their rank label.
    ranks = 3 if any(m.label == "rank" for sel in selectors(tree) for m in sel.matchers) else 0
    for seed in range(60):  # the first samples that break the rule at least once (deterministic)
        # (odd seeds: the first metric alone, for rules that an absent metric lets fire, `... unless x`)
        rows = flapping(metrics if seed % 2 == 0 else metrics[:1], seed, for_, ranks)
        if replay(rules_from_config(cfg), store_frame(rows), step_s=STEP_S, ends={RUN: rows[-1][0] + 0.5}):
            break
    end = rows[-1][0] + 0.5  # the run ends just after its last sample, as record ends it
    live = LiveAlerts(cfg, metrics_dir)
    events = []
    i, now = 0, T0
    while now <= rows[-1][0]:
        batch = []
        while i < len(rows) and rows[i][0] <= now:
            batch.append(rows[i])
            i += 1
        live.add([Row(t, "custom", m, v, labels, None) for t, m, v, labels in batch], RUN, "box")
        events += live.evaluate(now)[0]
        now += STEP_S
    events += live.evaluate(live.end_run(RUN, end))[0]
    got: list[list] = []
    for e in events:
        if e.state == "firing":
            got.append([e.rule, e.labels, e.started_at, None])
        else:
            (open_,) = [g for g in got if g[0] == e.rule and g[1] == e.labels and g[3] is None]
            open_[3] = e.ended_at
    replayed = replay(live.rules, store_frame(rows), step_s=STEP_S, ends={RUN: end})
    want = [[a.rule, a.labels, a.fired_at, a.resolved_at] for a in replayed]
    assert want, (name, timing)  # the samples break the rule at least once
    assert len(got) == len(want), (name, timing, got, want)
    for g, w in zip(sorted(got, key=_order), sorted(want, key=_order), strict=True):
        assert g[:2] == w[:2], (name, timing, g, w)
        assert g[2] == pytest.approx(w[2], abs=1e-3), (name, timing, g, w)
        assert (g[3] is None) == (w[3] is None), (name, timing, g, w)
        if w[3] is not None:
            assert g[3] == pytest.approx(w[3], abs=1e-3), (name, timing, g, w)


RUN = "20260911T000000Z-box-0001"


def store_frame(rows: list[tuple[float, str, float, tuple]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "time": [round(row[0] * US) for row in rows],
            "metric": [row[1] for row in rows],
            "value": [row[2] for row in rows],
            "labels": [labels_to_str(row[3]) for row in rows],
            "run": [RUN] * len(rows),
            "host": ["box"] * len(rows),
        }
    ).with_columns(pl.col("time").cast(pl.Datetime("us", "UTC")))


def _order(episode: list) -> tuple:
    return (episode[0], episode[1], episode[2])


def _base_config(metrics_dir: Path) -> Path:
    path = metrics_dir.parent / "base-monitoring.yaml"
    path.write_text(CONFIG)
    return path
