"""Run snapshots: catalog names and base units, histograms, run gauges, labels, derived names."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamamon import catalog
from llamamon.prometheus.snapshot import (
    DEFAULT_BUCKETS,
    Histogram,
    RunSnapshot,
    derived_kind,
    derived_name,
    family_name,
)
from llamamon.prometheus.text import METRIC_NAME_RE, parse
from llamamon.samples import Row, Sample, make_labels
from tests.conftest import REPO

RUN = {"host": "gpu-box", "run": "20260901T101500Z-gpu-box-3f2a"}

# promtool check metrics' name rules (client_golang promlint), to check derived names for any input.
_ABBREVIATIONS = ("s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d")
_TYPES = ("counter", "gauge", "histogram", "summary", "gauge_histogram")
_UNITS = {
    **dict.fromkeys(["amperes", "bytes", "celsius", "grams", "joules", "kelvin", "meters", "metres"], None),
    **dict.fromkeys(["seconds", "volts"], None),
    **dict.fromkeys(["minutes", "hours", "days", "weeks", "kelvins", "fahrenheit", "rankine", "inches"], "x"),
    **dict.fromkeys(["yards", "miles", "bits", "calories", "pounds", "ounces"], "x"),
}
_PREFIXES = ("pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi", "mega", "mibi")
_PREFIXES += ("giga", "gibi", "tera", "tebi", "peta", "pebi")


def lint_gauge_name(name: str) -> list[str]:
    """Problems promtool would report for a gauge called ``name``."""
    problems = []
    tokens = name.split("_")
    for token in tokens:
        if _UNITS.get(token) or any(token == p + u for p in _PREFIXES for u in _UNITS):
            problems.append(f"non-base unit {token}")
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            problems.append(f"suffix {suffix}")
    for word in (*_TYPES, *_ABBREVIATIONS):
        if f"_{word}_" in name or name.endswith(f"_{word}"):
            problems.append(f"word {word}")
    if ":" in name or re.search("[a-z][A-Z]", name) or not METRIC_NAME_RE.match(name):
        problems.append("invalid characters")
    return problems


def families_of(snapshot: RunSnapshot) -> dict[str, object]:
    return {f.name: f for f in parse(snapshot.render())}


def test_every_catalog_name_follows_prometheus_conventions():
    names = [m.prometheus_name for m in catalog.METRICS]
    assert len(set(names)) == len(names)
    for metric in catalog.METRICS:
        name = metric.prometheus_name
        assert name.startswith("llamamon_")
        assert METRIC_NAME_RE.match(name)
        assert name.endswith("_total") == (metric.kind == "counter"), name
        unit_suffix = catalog.UNITS[metric.unit].prometheus_suffix
        assert name.removesuffix("_total").endswith(unit_suffix), name
        if metric.kind == "gauge":
            assert lint_gauge_name(name) == [], name


def test_values_are_converted_to_base_units():
    snap = RunSnapshot(RUN)
    snap.add(
        [
            Sample("gpu_sm_clock", 1410.0, make_labels(gpu=0)),
            Sample("inter_token_latency", 25.0),
            Sample("gpu_memory_used", 2.0**30, make_labels(gpu=0)),
        ]
    )
    fams = families_of(snap)
    assert fams["llamamon_gpu_sm_clock_hertz"].points[0].value == 1.41e9
    # A logged inter-token latency (ms) is an observation of the seconds histogram (no ms gauge is left).
    itl = {p.name: p.value for p in fams["llamamon_inter_token_latency_seconds"].points if p.name[-4:] != "cket"}
    assert itl == {"llamamon_inter_token_latency_seconds_sum": 0.025, "llamamon_inter_token_latency_seconds_count": 1.0}
    assert fams["llamamon_gpu_memory_used_bytes"].points[0].value == 2.0**30
    assert fams["llamamon_gpu_sm_clock_hertz"].points[0].labels == (("gpu", "0"), *sorted(RUN.items()))


def test_stored_rows_are_taken_like_samples():
    snap = RunSnapshot(RUN)
    snap.add([Row(50.0, "training", "loss", 0.5, (), step=3), Row(51.0, "inference", "ttft", 30.0, ())])
    fams = families_of(snap)
    assert fams["llamamon_loss"].points[0].value == 0.5
    assert fams["llamamon_step"].points[0].value == 3.0
    assert fams["llamamon_last_sample_timestamp_seconds"].points[0].value == 51.0
    assert fams["llamamon_time_to_first_token_seconds"].points[-1].value == 1.0


def test_latest_value_wins_and_counters_keep_their_type():
    snap = RunSnapshot(RUN)
    snap.add([Sample("loss", 2.5, step=1), Sample("gpu_energy", 100.0, make_labels(gpu=0))])
    snap.add([Sample("loss", 1.25, step=2), Sample("gpu_energy", 180.0, make_labels(gpu=0))])
    fams = families_of(snap)
    assert [p.value for p in fams["llamamon_loss"].points] == [1.25]
    energy = fams["llamamon_gpu_energy_joules_total"]
    assert (energy.type, energy.points[0].value) == ("counter", 180.0)


def test_histograms_from_raw_milliseconds():
    snap = RunSnapshot(RUN)
    observations = [3.0, 40.0, 40.0, 900.0, 250_000.0, math.nan]
    snap.add(Sample("inference_latency", v, make_labels(model="m")) for v in observations)
    snap.add([Sample("ttft", 20.0, make_labels(model="m"))])  # alias -> time_to_first_token
    fams = families_of(snap)
    latency = fams["llamamon_inference_latency_seconds"]
    assert latency.type == "histogram"
    buckets = [(dict(p.labels)["le"], p.value) for p in latency.points if p.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [*(repr(b) for b in DEFAULT_BUCKETS), "+Inf"]
    counts = dict(buckets)
    assert (counts["0.005"], counts["0.025"], counts["0.05"], counts["1.0"], counts["120.0"], counts["+Inf"]) == (
        1.0,
        1.0,
        3.0,
        4.0,
        4.0,
        5.0,
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    by_name = {p.name: p for p in latency.points}
    assert by_name["llamamon_inference_latency_seconds_count"].value == 5.0  # NaN ignored
    assert by_name["llamamon_inference_latency_seconds_sum"].value == pytest.approx(250.983)
    assert "le" not in dict(by_name["llamamon_inference_latency_seconds_sum"].labels)
    assert fams["llamamon_time_to_first_token_seconds"].points[-1].value == 1.0


def test_scraped_histogram_parts_are_exported_as_they_are_beside_logged_observations():
    snap = RunSnapshot(RUN)
    scraped = make_labels(instance="127.0.0.1:8000", model_name="m")
    for tick, (low, high) in enumerate(((0, 0), (3, 5), (7, 12))):  # cumulative, counted over the run
        snap.add([Sample("inference_latency_bucket", low, (*scraped, ("le", "0.5")), tick)])
        snap.add([Sample("inference_latency_bucket", high, (*scraped, ("le", "+Inf")), tick)])
        snap.add([Sample("inference_latency_bucket", low, (*scraped, ("le", "2.5e-01")), tick)])
        snap.add([Sample("inference_latency_sum", high * 0.4, scraped, tick)])
        snap.add([Sample("inference_latency_count", high, scraped, tick)])
    snap.add([Sample("inference_latency", 40.0, make_labels(model="own"))])  # a job's observation (ms)
    latency = families_of(snap)["llamamon_inference_latency_seconds"]
    assert latency.type == "histogram"
    mine = [p for p in latency.points if dict(p.labels).get("instance") == "127.0.0.1:8000"]
    assert [(p.name.rsplit("_", 1)[-1], dict(p.labels).get("le"), p.value) for p in mine] == [
        ("bucket", "2.5e-01", 7.0),  # the latest values, not one observation per tick; le as stored
        ("bucket", "0.5", 7.0),
        ("bucket", "+Inf", 12.0),
        ("sum", None, pytest.approx(4.8)),
        ("count", None, 12.0),
    ]
    own = {p.name: p.value for p in latency.points if dict(p.labels).get("model") == "own"}
    assert own["llamamon_inference_latency_seconds_count"] == 1.0
    assert own["llamamon_inference_latency_seconds_sum"] == pytest.approx(0.04)


def test_pre_bucketed_histograms():
    hist = Histogram.from_cumulative({0.1: 2.0, 1.0: 5.0, math.inf: 7.0}, sum=4.5)
    assert hist.cumulative() == [(0.1, 2.0), (1.0, 5.0), (math.inf, 7.0)]
    assert hist.count == 7.0
    snap = RunSnapshot(RUN)
    snap.set_histogram("time_to_first_token", make_labels(model="m"), hist)
    (family,) = [f for f in parse(snap.render()) if f.type == "histogram"]
    assert [p.value for p in family.points] == [2.0, 5.0, 7.0, 4.5, 7.0]
    with pytest.raises(ValueError, match="must not decrease"):
        Histogram.from_cumulative({0.1: 5.0, 1.0: 2.0}, sum=1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        RunSnapshot(RUN, buckets=(1.0, 0.5))


def test_run_gauges():
    snap = RunSnapshot(RUN)
    snap.add([Sample("loss", 1.0, time=1000.0, step=41), Sample("cpu_usage", 0.5, time=1002.5)], default_time=5.0)
    snap.alerts_firing = {"warning": 2}
    fams = families_of(snap)
    assert list(fams)[:4] == [
        "llamamon_run_active",
        "llamamon_last_sample_timestamp_seconds",
        "llamamon_step",
        "llamamon_alerts_firing",
    ]
    assert fams["llamamon_run_active"].points[0].value == 1.0
    assert fams["llamamon_last_sample_timestamp_seconds"].points[0].value == 1002.5
    assert fams["llamamon_step"].points[0].value == 41.0
    firing = {dict(p.labels)["severity"]: p.value for p in fams["llamamon_alerts_firing"].points}
    assert firing == {"info": 0.0, "warning": 2.0, "critical": 0.0}
    snap.active = False
    snap.add([Sample("step", 50.0)])  # a logged step metric wins over Sample.step
    fams = families_of(snap)
    assert fams["llamamon_run_active"].points[0].value == 0.0
    assert [p.value for p in fams["llamamon_step"].points] == [50.0]
    assert all(f.help and f.type != "untyped" for f in fams.values())


def test_labels_are_sanitised_low_cardinality_and_never_clash():
    snap = RunSnapshot(RUN)
    job = {"gpuIndex": 0, "a.b": "x", "a_b": "y", "le": "0.5", "run": "other", "rank": 3, "empty": ""}
    snap.add(
        [
            Sample("my_metric", 1.0, make_labels(job, request_id="r-1")),
            Sample("my_metric", 2.0, make_labels(job, request_id="r-2")),
        ]
    )
    (point,) = families_of(snap)["llamamon_my_metric"].points
    assert dict(point.labels) == {
        "a_b": "x",
        "a_b_2": "y",
        "gpu_index": "0",
        "exported_le": "0.5",
        "exported_run": "other",
        "rank": "3",
        **RUN,
    }
    assert point.value == 2.0  # request ids dropped: both samples are one series


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("val/acc", "llamamon_val_acc"),
        ("step_time_ms", "llamamon_step_time_msec"),
        ("step_time_s", "llamamon_step_time_seconds"),
        ("tokens_total", "llamamon_tokens_total"),  # a counter (derived_kind)
        ("vllm:generation_tokens_total", "llamamon_vllm_generation_tokens_total"),
        ("reward_total_ms", "llamamon_reward_total_msec"),
        ("tokens_total_total", "llamamon_tokens_total"),
        ("reward_sum", "llamamon_reward_sums"),
        ("loss_histogram", "llamamon_loss_histograms"),
        ("data_megabytes", "llamamon_data_megabyte"),
        ("wait_minutes", "llamamon_wait_minute"),
        ("mem_gb_used", "llamamon_mem_gbyte_used"),
        ("trainLoss", "llamamon_train_loss"),
        ("2nd_loss", "llamamon_2nd_loss"),
        ("!!!", "llamamon_unnamed"),
        ("vllm:num_requests", "llamamon_vllm_num_requests"),
        ("count_total", "llamamon_counts_total"),  # a counter's own name does not end as a histogram part
        ("count_total_total", "llamamon_counts_total"),
    ],
)
def test_derived_names(name, expected):
    assert derived_name(name) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=1, max_size=30)
    | st.lists(st.sampled_from([*_ABBREVIATIONS, *_TYPES, *_UNITS, "total", "x", "count"]), min_size=1, max_size=4).map(
        "_".join
    )
)
def test_derived_names_always_pass_promtool_lint(name):
    derived = derived_name(name)
    if derived_kind(name) == "counter":  # promtool wants counters to end in _total, once
        assert derived.endswith("_total")
        assert not derived.endswith("_total_total")
        derived = derived[: -len("_total")]
    assert lint_gauge_name(derived) == []


def test_scraped_counters_are_exported_as_counters_with_one_total():
    snap = RunSnapshot(RUN)
    snap.add([Sample("vllm_generation_tokens_total", 120.0), Sample("tokens_total", 5.0)])
    snap.add([Sample("vllm.generation_tokens_total", 7.0)])  # sanitises alike: the second keeps _total last
    fams = families_of(snap)
    assert fams["llamamon_vllm_generation_tokens_total"].type == "counter"
    assert fams["llamamon_vllm_generation_tokens_2_total"].type == "counter"
    assert fams["llamamon_tokens_total"].type == "counter"
    assert family_name("vllm_generation_tokens_total") == "llamamon_vllm_generation_tokens_total"


def test_family_name_matches_what_a_snapshot_writes():
    snap = RunSnapshot(RUN)
    names = ["lr", "ttft", "gpu_energy", "step_time_ms", "tokens_total", "val/acc"]
    snap.add(Sample(n, 1.0) for n in names)
    assert {family_name(n) for n in names} <= set(families_of(snap))
    assert family_name("lr") == "llamamon_learning_rate"


def test_derived_names_never_take_a_catalog_name_and_stay_stable():
    snap = RunSnapshot(RUN)
    snap.add([Sample("cpu_usage_ratio", 1.0), Sample("cpu_usage", 0.5), Sample("val.acc", 0.1)])
    snap.add([Sample("val_acc", 0.2)])
    fams = families_of(snap)
    assert fams["llamamon_cpu_usage_ratio"].points[0].value == 0.5
    assert fams["llamamon_cpu_usage_ratio_2"].points[0].value == 1.0
    assert fams["llamamon_val_acc"].points[0].value == 0.1
    assert fams["llamamon_val_acc_2"].points[0].value == 0.2
    assert fams["llamamon_val_acc"].help == 'Metric "val.acc" logged by the job (not in the llamamon catalog).'


_label_text = st.text(max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.builds(
            Sample,
            st.sampled_from([m.name for m in catalog.METRICS]) | st.text(min_size=1, max_size=12),
            st.floats(allow_nan=True, allow_infinity=True),
            st.dictionaries(st.text(min_size=1, max_size=8), _label_text, max_size=3).map(make_labels),
        ),
        max_size=12,
    )
)
def test_any_samples_render_to_valid_grouped_exposition(samples):
    snap = RunSnapshot(RUN)
    snap.add(samples)
    text = snap.render()
    families = parse(text)
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    for family in families:
        assert family.help
        assert family.type in ("gauge", "counter", "histogram")
        assert all(dict(p.labels)["host"] == RUN["host"] for p in family.points)
        if family.type == "gauge":
            assert lint_gauge_name(family.name) == []
    # Each family's lines (HELP, TYPE, samples) form one uninterrupted group.
    owner = {p.name: f.name for f in families for p in f.points}
    order = []
    for line in text.rstrip("\n").split("\n"):
        name = line.split(" ")[2] if line.startswith("#") else owner[re.split(r"[{ ]", line, maxsplit=1)[0]]
        if not order or order[-1] != name:
            order.append(name)
    assert order == names


def test_exposition_modules_import_only_leaf_modules():
    # rules_export.py translates rule trees and so reads llamamon.rules; the formatting modules read
    # nothing but the leaf modules (tests/test_architecture.py checks the package as a whole).
    allowed = {
        "llamamon.catalog",
        "llamamon.samples",
        "llamamon.severity",
        "llamamon.units",
        "llamamon.fsutil",
        "llamamon.host",
        "llamamon.errors",
    }
    for name in ("__init__", "text", "snapshot", "textfile", "grafana"):
        path = REPO / "llamamon" / "prometheus" / f"{name}.py"
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llamamon"):
                modules = {node.module} if node.module != "llamamon" else {f"llamamon.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                modules = {a.name for a in node.names if a.name.startswith("llamamon")}
            else:
                continue
            for module in modules:
                assert module in allowed or module.startswith("llamamon.prometheus"), f"{path.name} imports {module}"
