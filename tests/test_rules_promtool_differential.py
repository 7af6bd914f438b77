"""Differential test: generated rule files and unit tests, judged by real `promtool test rules` and by
`llamamon alerts test --unit`; both must fail the same cases with the same alerts.

One random rule file (llamamon's language) is exported once with `alerts export`, the one translation to
PromQL. Many test groups with random input series (gaps, stale markers, NaN, counter resets) and eval
times on and off the evaluation grid go into one test file, so each tool runs once per seed. Every case
expects nothing, so both tools report, for every case where something fired, exactly what fired; the two
reports must be equal case by case (the same verdict and the same failing alerts for every case).
A scraped latency histogram is among the inputs, as cumulative ``_bucket{le}``/``_sum``/``_count`` series
with gaps and restarts: its p50..p99/quantile/avg/count/sum rules are PromQL's ``histogram_quantile(q,
rate(x_bucket[w]))``, ``rate(x_sum) / rate(x_count)`` and ``increase`` in promtool.

Only what has a PromQL twin is generated: evals_since_best, `not` over a whole expression and operators
between two metrics with different label sets are llamamon's own (README, docs/alerts.md).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import promtool_labels, require_binary, run_llamamon

from llamamon.units import parse_duration

# metric -> the name its series has in a promtool test (catalog Prometheus name, base units)
METRICS = {
    # A metric the catalog labels gpu, as the inputs label every series (a host metric such as memory_usage
    # has no gpu label, so the export matches it on(host, run): test_prometheus_label_matching.py).
    "gpu_memory_usage": "llamamon_gpu_memory_usage_ratio",
    "step_time": "llamamon_step_time_seconds",  # thresholds in ms and s are scaled to the stored seconds
    "batch_queue_size": "llamamon_batch_queue_size",
    "loss": "llamamon_loss",
    "my_metric": "llamamon_my_metric",  # not in the catalog
    "gpu_energy": "llamamon_gpu_energy_joules_total",  # a counter
    # a scraped histogram: cumulative _bucket{le}/_sum/_count series, read by histogram_quantile(rate(...))
    "inference_latency": "llamamon_inference_latency_seconds",
}
HISTOGRAM_BOUNDS = ("0.1", "0.25", "0.5", "1", "+Inf")
HISTOGRAM_FUNCS = ("p50", "p90", "p95", "p99", "quantile", "avg", "count", "sum")
GAUGES = ("gpu_memory_usage", "step_time", "batch_queue_size", "loss", "my_metric")
WINDOW_FUNCS = ("avg", "min", "max", "sum", "count", "delta", "last", "p50", "p90", "p95", "p99", "quantile")
WINDOWS = ("1m", "90s", "2m", "3m", "5m")
LABELS = ({"gpu": "0"}, {"gpu": "1"})
GROUPS_PER_FILE = 12
RULES_PER_FILE = 40


def _gauge_value(rng: random.Random, metric: str) -> str:
    if metric == "gpu_memory_usage":
        return str(round(rng.uniform(0, 1), 2))
    if metric == "step_time":
        return str(round(rng.uniform(0.05, 0.9), 3))
    if metric == "loss":
        return rng.choice(["NaN", "+Inf", "-Inf"]) if rng.random() < 0.08 else str(round(rng.uniform(0, 3), 2))
    return str(rng.randint(0, 60))


def _values(rng: random.Random, metric: str, length: int) -> str:
    """A promtool values string: explicit samples, `_` gaps, stale markers and the a+bxn notation."""
    out: list[str] = []
    total = rng.randint(0, 500)
    while len(out) < length:
        r = rng.random()
        if r < 0.1:
            out.append("_")
        elif r < 0.13:
            out.append("stale")
        elif r < 0.18 and metric != "gpu_energy":
            n = rng.randint(1, 3)
            start = rng.randint(0, 40) if metric in ("batch_queue_size", "my_metric") else 0
            if start:
                out.append(f"{start}+{rng.randint(0, 5)}x{n}")
            else:
                value = _gauge_value(rng, metric)
                out.append(f"{value}x{n}" if value[-1].isdigit() else value)  # promtool refuses `+Infx2`
        elif metric == "gpu_energy":
            if rng.random() < 0.05:
                total = rng.randint(0, 50)  # a counter reset
            else:
                total += rng.randint(0, 600)
            out.append(str(total))
        else:
            out.append(_gauge_value(rng, metric))
    return " ".join(out)


def _histogram_values(rng: random.Random, length: int) -> dict[str, str]:
    """Values strings of one histogram series' parts: requests per step into buckets, cumulated, with
    gaps (a missed scrape, in every part) and an occasional restart (all parts back to a few requests)."""
    bins = [0] * len(HISTOGRAM_BOUNDS)
    total = 0.0
    out: dict[str, list[str]] = {part: [] for part in (*HISTOGRAM_BOUNDS, "sum", "count")}
    for _ in range(length):
        if rng.random() < 0.05:
            bins, total = [0] * len(HISTOGRAM_BOUNDS), 0.0
        for _ in range(rng.choice([0, 1, 3, 8, 20])):
            i = min(int(rng.expovariate(1.2)), len(bins) - 1)
            bins[i] += 1
            total += round(rng.uniform(0.0, 2.0) if i == len(bins) - 1 else rng.uniform(0.0, 0.1), 3)
        gap = rng.random() < 0.08
        running = 0
        for bound, n in zip(HISTOGRAM_BOUNDS, bins, strict=True):
            running += n
            out[bound].append("_" if gap else str(running))
        out["sum"].append("_" if gap else str(round(total, 3)))
        out["count"].append("_" if gap else str(running))
    return {part: " ".join(values) for part, values in out.items()}


def _threshold(rng: random.Random, metric: str, func: str | None) -> str:
    if func == "count":
        return str(rng.randint(1, 5))
    if metric == "gpu_energy":
        return str(rng.randint(0, 8)) if func == "rate" else str(rng.randint(0, 1500))
    if metric == "gpu_memory_usage":
        return rng.choice([f"{rng.randint(10, 95)}%", str(round(rng.uniform(0.1, 0.95), 2))])
    if metric == "step_time":
        return rng.choice([f"{rng.randint(100, 800)}ms", str(rng.randint(100, 800)), "0.5s"])
    if metric == "loss":
        return str(round(rng.uniform(0, 3), 1))
    scale = 3 if func == "sum" else 1
    return str(rng.randint(-5, 50 * scale) if func == "delta" else rng.randint(0, 50 * scale))


def _selector(rng: random.Random, metric: str) -> str:
    r = rng.random()
    if r < 0.6:
        return metric
    op = rng.choice(["=", "!=", "=~", "!~"])
    value = rng.choice(["0", "1"]) if op in ("=", "!=") else rng.choice(["0|1", "1", "0.*", "[1-9]"])
    return f'{metric}{{gpu{op}"{value}"}}'


def _atom(rng: random.Random, metric: str) -> str:
    whole = metric in ("batch_queue_size", "my_metric")  # == and != only where values are whole numbers
    cmp = rng.choice(("<", "<=", ">", ">=", "==", "!=") if whole else ("<", "<=", ">", ">="))
    sel = _selector(rng, metric)
    if metric == "inference_latency":
        func = rng.choice(HISTOGRAM_FUNCS)
        window = rng.choice(WINDOWS)
        if func == "count":
            threshold = str(rng.randint(0, 40))
        elif func == "sum":
            threshold = rng.choice([f"{rng.randint(0, 3000)}ms", f"{rng.randint(0, 3)}s"])
        else:
            threshold = rng.choice([f"{rng.randint(20, 1200)}ms", str(rng.randint(20, 1200)), "0.25s"])
        if func == "quantile":
            return f"quantile({rng.choice([0, 0.25, 0.5, 0.8, 1])}, {sel}, {window}) {cmp} {threshold}"
        return f"{func}({sel}, {window}) {cmp} {threshold}"
    if metric == "gpu_energy":
        func = rng.choice(["rate", "increase"])
        return f"{func}({sel}, {rng.choice(WINDOWS)}) {cmp} {_threshold(rng, metric, func)}"
    kind = rng.random()
    if metric == "loss" and kind < 0.25:
        test = rng.choice(["isnan", "isinf", "isfinite"])
        return f"{'not ' if rng.random() < 0.5 else ''}{test}({sel})"
    if kind < 0.35:
        neg = "not " if rng.random() < 0.2 else ""
        return f"{neg}{sel} {cmp} {_threshold(rng, metric, None)}"
    if kind < 0.45 and whole:
        return f"abs({sel} - {rng.randint(0, 40)}) {cmp} {rng.randint(0, 30)}"
    if kind < 0.5 and whole:
        return f"{sel} * {rng.choice([2, 0.5, -1])} + {rng.randint(0, 10)} {cmp} {rng.randint(0, 60)}"
    func = rng.choice(WINDOW_FUNCS)
    window = rng.choice(WINDOWS)
    if func == "last":
        return f"last({sel}) {cmp} {_threshold(rng, metric, None)}"
    if func == "quantile":
        return f"quantile({rng.choice([0, 0.25, 0.5, 0.8, 1])}, {sel}, {window}) {cmp} {_threshold(rng, metric, None)}"
    return f"{func}({sel}, {window}) {cmp} {_threshold(rng, metric, func)}"


def _condition(rng: random.Random) -> str:
    first = rng.choice(list(METRICS))
    text = _atom(rng, first)
    if rng.random() < 0.4:
        # Why one metric per side pair with the same label sets: PromQL set operators match identical labels.
        text = f"({text}) {rng.choice(['and', 'or', 'unless'])} ({_atom(rng, rng.choice(list(METRICS)))})"
    return text


def _rules(rng: random.Random) -> dict:
    rules = {}
    for i in range(RULES_PER_FILE):
        rule: dict = {"condition": _condition(rng), "severity": rng.choice(["info", "warning", "critical"])}
        if rng.random() < 0.4:
            rule["for"] = rng.choice(["1m", "90s", "2m", "3m"])
        if rng.random() < 0.2:
            rule["keep_firing_for"] = rng.choice(["1m", "2m", "150s"])
        if rng.random() < 0.2:
            rule["labels"] = {"team": rng.choice(["ml", "infra"])}
        rules[f"r{i}"] = rule
    builtin = {"loss_plateau": False, "validation_loss_high": False}
    return {"metrics": ["my_metric"], "alerts": {"builtin": builtin, "rules": rules}}


def _groups(rng: random.Random, rule_names: list[str]) -> list[dict]:
    groups = []
    for g in range(GROUPS_PER_FILE):
        interval = rng.choice([60, 60, 30, 90])
        length = rng.randint(8, 16)
        series = []
        for metric, exported in METRICS.items():
            chosen = [lab for lab in LABELS if rng.random() < 0.75]
            for lab in chosen:
                inner = ", ".join(f'{k}="{v}"' for k, v in lab.items())
                if metric == "inference_latency":
                    for part, values in _histogram_values(rng, length).items():
                        name, le = (f"{exported}_{part}", "") if part in ("sum", "count") else (exported, part)
                        if le:
                            name, inner_le = f"{exported}_bucket", f'{inner}, le="{le}"'
                            series.append({"series": f"{name}{{{inner_le}}}", "values": values})
                        else:
                            series.append({"series": f"{name}{{{inner}}}", "values": values})
                    continue
                series.append({"series": f"{exported}{{{inner}}}", "values": _values(rng, metric, length)})
        # Every .prom file says its run is live; the exported rules fire only where it is.
        series.append({"series": "llamamon_run_active", "values": f"1x{length}"})
        span = interval * length
        times = sorted({rng.randrange(0, span + 120, 30) for _ in range(10)} | {rng.randrange(0, span, 60)})
        cases = [{"eval_time": f"{t}s", "alertname": name} for t in times for name in rule_names]
        groups.append({"name": f"g{g}", "interval": f"{interval}s", "input_series": series, "alert_rule_test": cases})
    return groups


_BLOCK = re.compile(
    r"name: (\w+),\s*\n\s+alertname: (\w+), time: ([\w.]+), \n\s+exp:\[\], \n\s+got:(\[\]|\[.*?\n\s+\])", re.S
)


def _report(text: str) -> dict[tuple[str, str, float], list]:
    """A failure report (every case expected nothing) -> what fired, per (group, alertname, eval time)."""
    out: dict[tuple[str, str, float], list] = {}
    for m in _BLOCK.finditer(text):
        items = []
        for lab in re.findall(r"Labels:(\{.*?\})\n", m.group(4)):
            labels = promtool_labels(lab)
            labels.pop("alertname")
            items.append(labels)
        out[(m.group(1), m.group(2), parse_duration(m.group(3)))] = sorted(items, key=lambda d: sorted(d.items()))
    return out


def _cases(doc: dict) -> int:
    return sum(len(g["alert_rule_test"]) for g in doc["tests"])


SEEDS = [int(s) for s in os.environ.get("LLAMAMON_DIFF_SEEDS", "1,2,3").split(",")]


@pytest.mark.integration
@pytest.mark.parametrize("seed", SEEDS)
def test_generated_cases_agree_with_promtool(tmp_path: Path, seed: int) -> None:
    promtool = require_binary("promtool")
    rng = random.Random(seed)
    config = _rules(rng)
    truth, got, cases = _judge(tmp_path, promtool, config, _groups(rng, list(config["alerts"]["rules"])), fails=True)
    assert len(truth) >= 50, sorted(truth)[:5]
    fired_rules = {name for _, name, _ in truth}
    assert len(fired_rules) >= RULES_PER_FILE // 4, sorted(fired_rules)  # the scenario is not trivial
    on_buckets = {n for n in fired_rules if "inference_latency" in config["alerts"]["rules"][n]["condition"]}
    assert on_buckets, sorted(fired_rules)  # histogram quantiles/avg/count/sum are judged too
    _assert_agree(seed, cases, truth, got, config["alerts"]["rules"])


def _assert_agree(seed: int, cases: int, truth: dict, got: dict, rules: dict) -> None:
    """Every (series, rule) promtool alerted on, llamamon alerted on at the same times, and no other."""
    disagreements = [
        f"{key}: {rules[key[1]]}\n  promtool: {truth.get(key)}\n  llamamon: {got.get(key)}"
        for key in sorted(set(truth) | set(got))
        if truth.get(key, []) != got.get(key, [])
    ]
    print(f"seed {seed}: {cases} cases, {len(truth)} with alerts, {len(disagreements)} disagreements")
    assert not disagreements, f"{len(disagreements)} of {cases} cases disagree:\n" + "\n".join(disagreements[:15])


# --- aggregations across series ------------------------------------------------------------------------

AGGREGATIONS = ("sum", "avg", "min", "max", "count", "quantile")
GROUPINGS = ("by ()", "without ()", "by (gpu)", "without (gpu)")


def _aggregated(rng: random.Random) -> str:
    """An aggregation over a gauge's two gpu series: compared with a number, over a comparison, or a series
    against its group's aggregate (a straggler's shape: ``x / median without (gpu) (x)``)."""
    metric = rng.choice(GAUGES)
    sel = _selector(rng, metric) if rng.random() < 0.3 else metric
    func = rng.choice(("avg", "max", "min", "delta", ""))
    inner = f"{func}({sel}, {rng.choice(WINDOWS)})" if func else sel
    agg, grouping = rng.choice(AGGREGATIONS), rng.choice(GROUPINGS)
    q = f"{rng.choice([0, 0.25, 0.5, 1])}, " if agg == "quantile" else ""
    cmp = rng.choice(("<", "<=", ">", ">="))
    kind = rng.random()
    if kind < 0.35:
        threshold = str(rng.randint(0, 2)) if agg == "count" else _threshold(rng, metric, func or None)
        return f"{agg} {grouping} ({q}{inner}) {cmp} {threshold}"
    if kind < 0.55:
        threshold = str(rng.randint(0, 2)) if agg == "count" else _threshold(rng, metric, None)
        return f"{agg} {grouping} ({q}{_atom(rng, metric)}) {cmp} {threshold}"
    agg = rng.choice(("avg", "min", "max", "quantile"))  # (of the series' own unit)
    q = f"{rng.choice([0, 0.5, 1])}, " if agg == "quantile" else ""
    grouping = rng.choice(("by ()", "without (gpu)"))
    if kind < 0.8:
        return f"{inner} {cmp} {rng.choice([0.5, 0.9, 1, 1.1, 2])} * {agg} {grouping} ({q}{inner})"
    return f"{agg} {grouping} ({q}{inner}) / {inner} {cmp} {rng.choice([0.5, 0.9, 1.1, 1.25, 2])}"


@pytest.mark.integration
@pytest.mark.parametrize("seed", SEEDS)
def test_generated_aggregations_agree_with_promtool(tmp_path: Path, seed: int) -> None:
    """Rules with an aggregation across series, exported as PromQL's aggregators (a series paired with its
    group's aggregate ``ignoring``/``on`` the grouping labels, one to many), judged by both tools."""
    promtool = require_binary("promtool")
    rng = random.Random(1000 + seed)
    rules = {f"a{i}": {"condition": _aggregated(rng), "severity": "warning"} for i in range(RULES_PER_FILE)}
    for rule in rules.values():
        if rng.random() < 0.3:
            rule["for"] = rng.choice(["1m", "2m"])
    builtin = {"loss_plateau": False, "validation_loss_high": False}
    config = {"metrics": ["my_metric"], "alerts": {"builtin": builtin, "rules": rules}}
    truth, got, cases = _judge(tmp_path, promtool, config, _groups(rng, list(rules)))
    assert len(truth) >= 50, sorted(truth)[:5]
    fired = {name for _, name, _ in truth}
    assert len(fired) >= RULES_PER_FILE // 4, sorted(fired)  # the scenario is not trivial
    _assert_agree(seed, cases, truth, got, rules)


def _judge(
    tmp_path: Path, promtool: str, config: dict, groups: list[dict], *, fails: bool = False
) -> tuple[dict, dict, int]:
    """Export ``config``'s rules, run both tools on ``groups`` (every case expects nothing): what fired.

    ``fails``: the scenario must make both tools report failed cases (promtool's FAILED, our exit 1)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    exported = run_llamamon("alerts", "export", "--config", "rules.yaml", "-o", "exported.yml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr.decode()
    assert b"not exported" not in exported.stdout + exported.stderr  # every generated rule has a PromQL twin
    for rule_file, name in (("exported.yml", "prom.yaml"), ("rules.yaml", "ours.yaml")):
        doc = {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": groups}
        (tmp_path / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    prom = subprocess.run([promtool, "test", "rules", "prom.yaml"], cwd=tmp_path, capture_output=True, text=True)
    ours = run_llamamon("alerts", "test", "--unit", "ours.yaml", cwd=tmp_path, timeout=300)
    prom_report = prom.stdout + prom.stderr
    if fails:
        assert "FAILED" in prom_report, prom_report[-3000:]
        assert ours.returncode == 1, ours.stderr.decode()[-3000:]
    assert "error" not in prom_report, prom_report[-3000:]
    assert "Traceback" not in ours.stderr.decode(), ours.stderr.decode()[-3000:]
    return _report(prom_report), _report(ours.stdout.decode()), _cases(doc)


def _ranks(per_minute: tuple[int, ...], ends: int, minutes: int = 45) -> list[dict]:
    """promtool input series: llamamon_step of 2 ranks per node (a run each), node 0's run ending (its
    steps frozen, its llamamon_run_active 0) after ``ends`` minutes."""
    series = []
    for rank, rate in enumerate(per_minute):
        node = rank // 2
        labels = f'rank="{rank}", local_rank="{rank % 2}", host="n{node}", run="r{node}"'
        values = f"0+{rate}x{minutes}" if node or ends >= minutes else f"0+{rate}x{ends} {rate * ends}x{minutes - ends}"
        series.append({"series": f"llamamon_step{{{labels}}}", "values": values})
    for node in range(len(per_minute) // 2):
        live = f"1x{minutes}" if node or ends >= minutes else f"1x{ends} 0x{minutes - ends}"
        series.append({"series": f'llamamon_run_active{{host="n{node}", run="r{node}"}}', "values": live})
    return series


@pytest.mark.integration
def test_the_straggler_builtin_agrees_with_promtool(tmp_path: Path) -> None:
    """training_straggler as exported, over 2 nodes x 2 ranks (a run each node) whose rank 3 steps 4/3 times
    slower: the same alerts at the same times. And in Prometheus alone (``--unit`` has no run ends): once a
    node's run ends, its frozen steps (rate 0) do not pull the median down: 3 nodes, node 0 ending at 30m,
    rank 5 at 42 steps/min against 60 keeps firing to the end (counting the frozen ranks, the median would
    be 51 and rank 5 only 1.21 times slower)."""
    promtool = require_binary("promtool")
    groups = []
    for name, series in (("job", _ranks((60, 60, 61, 45), 45)), ("ended", _ranks((60, 60, 60, 60, 60, 42), 30))):
        cases = [{"eval_time": f"{t}s", "alertname": "training_straggler"} for t in range(0, 45 * 60, 150)]
        groups.append({"name": name, "interval": "1m", "input_series": series, "alert_rule_test": cases})
    builtin = {"loss_plateau": False, "validation_loss_high": False}
    truth, got, _ = _judge(tmp_path, promtool, {"alerts": {"builtin": builtin, "rules": {}}}, groups)
    job = {key: fired for key, fired in truth.items() if key[0] == "job"}
    assert {labels["rank"] for fired in job.values() for labels in fired} == {"3"}, job  # the slow rank alone
    assert min(t for _, _, t in job) >= 600  # after its `for`
    assert {key: fired for key, fired in got.items() if key[0] == "job"} == job
    ended = {t: [labels["rank"] for labels in fired] for (group, _, t), fired in truth.items() if group == "ended"}
    assert ended == {t: ["5"] for t in range(750, 45 * 60, 150)}, ended
