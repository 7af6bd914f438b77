from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamamon import catalog

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # client_python's rule, colons excluded
ABBREVIATED = {"s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"}


@pytest.mark.parametrize("metric", catalog.METRICS, ids=lambda m: m.name)
def test_every_prometheus_name_follows_conventions(metric):
    name = metric.prometheus_name
    assert METRIC_NAME_RE.match(name)
    assert name.startswith("llamamon_")
    assert name == name.lower()
    assert not (set(name.split("_")) & ABBREVIATED), name
    assert name.endswith("_total") == (metric.kind == "counter")
    for bad in ("_bucket", "_count", "_sum", "_gauge", "_counter"):
        assert not name.endswith(bad)
    assert metric.help.endswith(".")
    assert metric.unit in catalog.UNITS


def test_names_are_unique_and_aliases_resolve_to_catalog_names():
    names = [m.name for m in catalog.METRICS]
    assert len(names) == len(set(names))
    prom = [m.prometheus_name for m in catalog.METRICS]
    assert len(prom) == len(set(prom))
    for alias, target in catalog.ALIASES.items():
        assert target in catalog.BY_NAME, alias


def test_known_prometheus_names():
    assert catalog.BY_NAME["gpu_memory_used"].prometheus_name == "llamamon_gpu_memory_used_bytes"
    assert catalog.BY_NAME["inference_latency"].prometheus_name == "llamamon_inference_latency_seconds"
    assert catalog.BY_NAME["gpu_energy"].prometheus_name == "llamamon_gpu_energy_joules_total"
    assert catalog.BY_NAME["memory_usage"].prometheus_name == "llamamon_memory_usage_ratio"


def test_lookup_helpers():
    assert catalog.canonical("eval_loss") == "validation_loss"
    assert catalog.canonical("lr", {"lr": "my_lr"}) == "my_lr"
    assert catalog.canonical("my_metric") == "my_metric"
    assert catalog.suggest("gpu_util") == "gpu_utilization"
    assert catalog.group_of("gpu_power") == "gpu"
    assert catalog.group_of("my_metric") == "custom"
    # compute_metrics' results (and any validation_* a job logs) belong with the validation loss
    assert catalog.group_of("eval_accuracy") == "training"
    assert catalog.group_of("validation_f1") == "training"
    assert catalog.group_of("notification_failures") == "custom"  # llamamon's own: stored apart from training


@given(st.text(min_size=1, max_size=40))
def test_sanitize_name_always_gives_a_valid_name(text):
    assert METRIC_NAME_RE.match(catalog.sanitize_name(text))
