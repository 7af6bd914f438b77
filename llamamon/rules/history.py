"""The history evaluator: every alert episode of some rules over recorded samples, vectorised.

``replay`` is the one way in for a history: ``alerts test``, the report and ``alerts test --unit`` all call
it. Conditions are compiled to polars (``rules.history_compiler``) for every tick of a grid at once, then
each series' true ticks are walked into episodes with the timing of ``rules.states`` (pending, firing,
``keep_firing_for``, resolve), computed over runs of ticks instead of tick by tick: the live loop's
``AlertStates`` stepped over the same ticks gives the same episodes (``tests/test_rules_instant.py``, the
contract between the two evaluators). No I/O here: frames in, alerts out.

Semantics (PromQL, as Prometheus 2.x evaluates them):

* the grid is ``start + k * step``, or explicit ticks (``evaluation_grids``: a run's end, and every
  sample of what a ``for: 0`` rule reads); an instant selector at tick t sees each series' latest sample at or
  before t, if it is at most ``lookback`` (5 m) old, and not after a staleness marker. Training metrics
  (catalog group ``training``: loss, validation_loss, learning_rate ...) are logged by the job when it
  evaluates, not sampled, so they hold their last value until the next one or the run's end. After a
  run's end nothing of it answers.
* window functions see the samples in ``[t - window, t]``; ``rate``/``increase``/``delta`` extrapolate
  like Prometheus.
* every expression is a set of series (labels) with a value and a truth flag per tick; comparisons set
  the flag and keep the metric's value (so ``$value`` is the metric's value), ``not`` flips it, ``and``/
  ``unless``/``or`` combine flags. Series match across a binary operator when they agree on every label
  both carry (run and host included), so ``gpu_utilization < 0.2 and memory_usage > 0.9`` is per GPU.
* an alert instance is (rule, labels); inactive -> pending -> firing -> resolved, honouring ``for`` and
  ``keep_firing_for`` exactly as Prometheus' ``AlertingRule.Eval`` (``rules.states``). An episode keeps the
  labels and value of the tick it fired; one still firing at the grid's end has the annotations of its
  latest true tick, as a firing alert shows them live and in Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from llamamon.rules.history_compiler import Compiler
from llamamon.rules.history_input import END, Grid, Samples, prepare
from llamamon.rules.history_vectors import Vec, empty_vec, pack, packable
from llamamon.rules.model import Alert, Rule, needed_metrics, reads
from llamamon.rules.promql import LOOKBACK, US
from llamamon.rules.template import AlertTexts
from llamamon.rules.tree import top_comparison

if TYPE_CHECKING:
    import polars as pl


def conditions(
    rules: Sequence[Rule], samples: Samples, grid: Grid, *, lookback: float = LOOKBACK
) -> dict[str, tuple[pl.DataFrame, list[dict[str, str]]]]:
    """Per rule: the (k, sid, value) rows where its condition holds, and each sid's labels."""
    import polars as pl

    comp = Compiler(samples, grid, lookback, [rule.condition.tree for rule in rules])
    out: dict[str, tuple[pl.DataFrame, list[dict[str, str]]]] = {}
    for rule in rules:
        res = comp.eval(rule.condition.tree)
        if not isinstance(res, Vec):
            out[rule.name] = (empty_vec().drop("ok"), [])
            continue
        df = res.df.filter(pl.col("ok")).select("k", "sid", "value")
        if packable(df):
            # Why: most conditions come out ordered by (sid, k) already; one i64 check then skips the
            # unique + two-column sort, and otherwise a stable sort of one key keeps the first duplicate.
            key = df.select(pack()).to_series()
            if not (key.diff() > 0).all():
                first = (pl.col("key") != pl.col("key").shift(1)).fill_null(True)
                df = df.with_columns(key=key).sort("key", maintain_order=True).filter(first).drop("key")
        else:
            df = df.unique(["k", "sid"], keep="first").sort("sid", "k")
        out[rule.name] = (df, res.labels)
    return out


def evaluate(
    rules: Sequence[Rule],
    frame: pl.LazyFrame | pl.DataFrame | Samples,
    grid: Grid,
    *,
    lookback: float = LOOKBACK,
    aliases: dict[str, str] | None = None,
    ends: dict[str, float] | None = None,
) -> list[Alert]:
    """Every alert episode over the grid, vectorised: what ``replay`` runs on each set of ticks."""
    rules = [r for r in rules if r.enabled]
    samples = frame if isinstance(frame, Samples) else prepare(frame, needed_metrics(rules), aliases, ends)
    results = conditions(rules, samples, grid, lookback=lookback)
    alerts: list[Alert] = []
    for rule in rules:
        df, labels = results[rule.name]
        if df.height == 0:
            continue
        low = top_comparison(rule.condition.tree) in ("<", "<=")
        episodes = _episodes(_segments(df, low), rule, grid, low)
        if not episodes.height:
            continue
        # Why by row: the tick an episode fired is a row of ``df`` (its first run, ``for`` ticks in).
        values = df["value"].gather(episodes["row"]).to_list()
        latest = df["value"].gather(episodes["last"]).to_list()
        sids, _k_active, _k_fire, k_resolved, peaks = (
            episodes[c].to_list() for c in ("sid", "k_active", "k_fire", "k_resolved", "peak")
        )
        texts = AlertTexts(rule, labels)
        # Tick times in one array operation each, not a call per alert.
        at = [grid.times(episodes[c].to_numpy()).tolist() for c in ("k_active", "k_fire")]
        ends = grid.times(episodes["k_resolved"].fill_null(grid.n - 1).to_numpy()).tolist()
        for i, value in enumerate(values):
            resolved = k_resolved[i]
            alert_labels_ = texts.labels_of(sids[i], value)
            alert_annotations = texts.annotations_of(sids[i], value if resolved is not None else latest[i])
            alerts.append(
                Alert(
                    rule.name,
                    rule.severity,
                    alert_labels_,
                    alert_annotations,
                    at[0][i] / US,
                    at[1][i] / US,
                    None if resolved is None else ends[i] / US,
                    value,
                    peaks[i],
                    rule.channels,
                )
            )
    alerts.sort(key=lambda a: (a.fired_at, a.rule, a.labels))
    return alerts


def evaluation_grids(rules: Sequence[Rule], samples: Samples, step_s: float) -> list[tuple[Grid, list[Rule]]]:
    """The ticks each rule is evaluated on over recorded runs, rules that share them together.

    Every rule sees the ``update_frequency`` grid and each run's last sample (a run's end is an
    evaluation point, so its final values are judged whatever else is selected beside it). A rule with
    ``for: 0`` also sees every sample of the metrics it reads: a training metric's sample is an event
    (one evaluation's loss), not a level, and a value that breaks such a rule must fire however briefly
    it held; ``for`` keeps Prometheus' meaning, a level that lasts across regular ticks.
    """
    import numpy as np

    bounds = samples.bounds()
    if bounds is None:
        return []
    ends = samples.run_last.filter(samples.run_last["run_end"] != END)["run_end"].unique().to_numpy()
    base = Grid.covering(bounds[0], bounds[1], step_s).with_times(ends)
    by_metrics: dict[frozenset[str] | None, list[Rule]] = {}
    for rule in rules:
        by_metrics.setdefault(None if rule.for_ > 0 else reads(rule), []).append(rule)
    grids: dict[int, tuple[Grid, list[Rule]]] = {}
    for metrics, group in by_metrics.items():
        grid = base
        if metrics:
            # Why each distinct array of times once: a job's series share them (its ranks log the same
            # steps, a host samples all its metrics at one tick), so millions of times are a few thousand.
            times: dict[bytes, Any] = {}
            for p, name in zip(samples.parts, samples.metric, strict=True):
                if name in metrics:
                    t = (p.filter(~p["stale"]) if p["stale"].any() else p)["t"].to_numpy()
                    times.setdefault(t.tobytes(), t)
            grid = base.with_times(np.concatenate(list(times.values()))) if times else base
        grids.setdefault(id(grid), (grid, []))[1].extend(group)
    return list(grids.values())


def replay(
    rules: Sequence[Rule],
    frame: pl.LazyFrame | pl.DataFrame | Samples,
    *,
    step_s: float | None = None,
    grid: Grid | None = None,
    aliases: dict[str, str] | None = None,
    ends: Mapping[str, float] | None = None,
) -> list[Alert]:
    """Every alert episode of the enabled rules over recorded samples (store columns, or ``prepare``'s).

    ``step_s`` (``update_frequency``): each rule on its evaluation points (``evaluation_grids``), as
    ``alerts test`` and the report judge recorded runs. ``grid``: every rule on these ticks alone, as
    promtool evaluates a unit test. ``ends``: run id -> end (seconds) of the runs that ended: their series
    answer until then, and an episode of such a run resolves at its end at the latest, whatever
    ``keep_firing_for`` says, as ``record`` and ``watch`` tell the channels (a finished run has nothing
    left that could fire).
    """
    if (step_s is None) == (grid is None):
        raise TypeError("replay takes one of step_s and grid")
    rules = [r for r in rules if r.enabled]
    samples = frame if isinstance(frame, Samples) else prepare(frame, needed_metrics(rules), aliases, dict(ends or {}))
    if grid is not None:
        alerts = evaluate(rules, samples, grid)
    else:
        assert step_s is not None
        alerts = [a for g, group in evaluation_grids(rules, samples, step_s) for a in evaluate(group, samples, g)]
    if ends:
        for k, alert in enumerate(alerts):
            end = ends.get(alert.run or "")
            if end is not None and (alert.resolved_at is None or alert.resolved_at > end):
                alerts[k] = replace(alert, resolved_at=max(end, alert.fired_at))
    alerts.sort(key=lambda a: (a.fired_at, a.rule, a.labels))
    return alerts


def _segments(df: pl.DataFrame, low: bool) -> pl.DataFrame:
    """Runs of consecutive ticks per series in rows ordered by (sid, k): sid, k0, k1, peak and row0 (the
    run's first row in ``df``).

    Why numpy: the breaks are two array comparisons and the peaks one ``reduceat`` (fmax/fmin skip NaN
    as polars' max/min do), where a diff over sid and a group_by cost several times more.
    """
    import numpy as np
    import polars as pl

    if df["value"].null_count():  # (null values, never from the store: polars' max skips them)
        seg = (
            df.with_row_index("row")
            .with_columns(brk=(pl.col("k").diff().over("sid") != 1).fill_null(True))
            .with_columns(seg=pl.col("brk").cum_sum())
        )
        return (
            seg.group_by("sid", "seg", maintain_order=True)
            .agg(
                pl.col("k").first().alias("k0"),
                pl.col("k").last().alias("k1"),
                (pl.col("value").min() if low else pl.col("value").max()).alias("peak"),
                pl.col("row").first().cast(pl.Int64).alias("row0"),
            )
            .sort("sid", "k0")
        )
    k, sid, value = (df[c].to_numpy() for c in ("k", "sid", "value"))
    brk = np.ones(k.size, dtype=bool)
    brk[1:] = (np.diff(k) != 1) | (sid[1:] != sid[:-1])
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], k.size) - 1
    peak = (np.fmin if low else np.fmax).reduceat(value, starts) if starts.size else value[:0]
    return pl.DataFrame({"sid": sid[starts], "k0": k[starts], "k1": k[ends], "peak": peak, "row0": starts})


def _episodes(segs: pl.DataFrame, rule: Rule, grid: Grid, low: bool) -> pl.DataFrame:
    """Walk a rule's true-runs per series through the for / keep_firing_for state machine.

    Each episode: sid, k_active, k_fire, k_resolved (null while still firing), peak, and the rows of
    ``df`` at k_fire and at its latest true tick (a run's ticks are consecutive rows, so k_fire's is
    ``fire - k0`` rows after the run's first). ``rules.states.elapsed`` is ``grid.after`` here.
    """
    import polars as pl

    k0, k1 = segs["k0"].to_numpy(), segs["k1"].to_numpy()
    fire = grid.after(k0, round(rule.for_ * US))  # the first tick with t - activeAt >= for
    keep_us = round(rule.keep_firing_for * US)
    if keep_us == 0:
        # Why no walk: without keep_firing_for every run stands alone (runs are maximal, so two never
        # touch); a run of at least ``for`` fires that far in and resolves the tick after it ends.
        resolved = pl.col("k1") + 1
        return (
            segs.with_columns(fire=pl.Series(fire, dtype=pl.Int64))
            .filter(pl.col("fire") <= pl.col("k1"))
            .select(
                "sid",
                k_active="k0",
                k_fire="fire",
                k_resolved=pl.when(resolved < grid.n).then(resolved),
                peak="peak",
                row=pl.col("row0") + pl.col("fire") - pl.col("k0"),
                last=pl.col("row0") + pl.col("k1") - pl.col("k0"),
            )
        )
    # The tick it resolves at, were the run the last: the first absent tick keep_firing_for after the
    # first absent one (Prometheus keeps firing while t - KeepFiringSince < keep_firing_for).
    ends = grid.after(k1 + 1, keep_us)
    better = min if low else max
    out: list[tuple[int, int, int, int | None, float, int, int]] = []
    cur: list[Any] | None = None  # [sid, k_active, k_fire, k_resolved, peak, row of k_fire, latest true row]

    def close(c: list[Any]) -> None:
        out.append((c[0], c[1], c[2], c[3] if c[3] < grid.n else None, c[4], c[5], c[6]))

    rows = segs.select("sid", "k0", "k1", "peak", "row0").iter_rows()
    for (sid, k0_, k1_, peak, row0), fire_, end in zip(rows, fire.tolist(), ends.tolist(), strict=True):
        if cur is not None and (cur[0] != sid or k0_ > cur[3]):
            close(cur)
            cur = None
        if cur is not None:  # still firing (kept) when the condition came back
            cur[3], cur[4], cur[6] = end, better(cur[4], peak), row0 + k1_ - k0_
            continue
        if fire_ <= k1_:
            cur = [sid, k0_, fire_, end, peak, row0 + fire_ - k0_, row0 + k1_ - k0_]
    if cur is not None:
        close(cur)
    schema = {
        "sid": pl.UInt32,
        "k_active": pl.Int64,
        "k_fire": pl.Int64,
        "k_resolved": pl.Int64,
        "peak": pl.Float64,
        "row": pl.Int64,
        "last": pl.Int64,
    }
    return pl.DataFrame(out, schema=schema, orient="row")
