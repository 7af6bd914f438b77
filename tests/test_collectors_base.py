"""The public MetricsCollector base class and normalize(); plus the collectors' import boundary."""

from __future__ import annotations

import ast
import asyncio
import math
from fractions import Fraction
from pathlib import Path

import pytest

from llamamon.collectors.base import MetricsCollector, normalize
from llamamon.samples import Sample, make_labels

COLLECTORS = Path(__file__).resolve().parents[1] / "llamamon" / "collectors"


class QueueDepth(MetricsCollector):
    def __init__(self) -> None:
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def collect(self) -> dict[str, float]:
        return {"queue_depth": 4, "healthy": True}


class Named(MetricsCollector):
    name = "vllm"
    group = "inference"

    async def collect(self) -> list[Sample]:
        return [Sample("kv_cache_usage", 0.5, make_labels(model="llama"))]


def test_subclass_defaults_name_group_and_availability():
    collector = QueueDepth()
    assert collector.name == "QueueDepth"
    assert collector.group == "custom"
    assert collector.available is True
    assert collector.reason is None
    assert Named.name == "vllm"
    assert Named().group == "inference"
    assert "QueueDepth" in repr(collector)


def test_a_subclass_without_collect_cannot_be_instantiated():
    class Broken(MetricsCollector):
        pass

    with pytest.raises(TypeError, match="collect"):
        Broken()


def test_async_context_manager_opens_and_closes():
    collector = QueueDepth()

    async def main() -> list[Sample]:
        async with collector as opened:
            assert opened.opened
            return normalize(await opened.collect(), source=opened.name)

    samples = asyncio.run(main())
    assert collector.closed
    assert samples == [Sample("queue_depth", 4.0), Sample("healthy", 1.0)]
    assert all(type(s.value) is float for s in samples)


def test_default_open_and_close_do_nothing():
    async def main() -> list[Sample]:
        async with Named() as collector:
            return normalize(await collector.collect())

    assert asyncio.run(main()) == [Sample("kv_cache_usage", 0.5, (("model", "llama"),))]


def test_normalize_accepts_any_real_number_and_drops_non_finite():
    samples = normalize({"a": 1, "b": 2.5, "c": Fraction(1, 4), "d": math.nan, "e": math.inf})
    assert samples == [Sample("a", 1.0), Sample("b", 2.5), Sample("c", 0.25)]


@pytest.mark.parametrize("bad", ["12", None, [1], {"x": 1}, b"1"])
def test_normalize_rejects_non_numbers_naming_collector_and_metric(bad):
    with pytest.raises(TypeError) as info:
        normalize({"loss": bad}, source="MyCollector")
    message = str(info.value)
    assert message.startswith("MyCollector: metric 'loss' must be a number, got ")
    assert type(bad).__name__ in message


def test_normalize_checks_sample_lists_too():
    assert normalize(None) == []
    samples = normalize([Sample("x", 3, make_labels(gpu=0), time=12.0, step=7)])
    assert samples == [Sample("x", 3.0, (("gpu", "0"),), 12.0, 7)]
    assert type(samples[0].value) is float
    with pytest.raises(TypeError, match=r"holding str"):
        normalize(["x"], source="c")
    with pytest.raises(TypeError, match=r"metric 'x' must be a number"):
        normalize([Sample("x", "high")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"dict of numbers or a list of Samples, got int"):
        normalize(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"non-empty strings"):
        normalize({"": 1})


HEAVY = ("polars", "pyarrow", "matplotlib")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(COLLECTORS.glob("*.py")), ids=lambda p: p.name)
def test_collectors_never_import_heavy_libraries_even_inside_functions(path: Path):
    # test_architecture checks the layer table; ruff TID253 only module-level imports. A recorder that
    # pulled polars into every tick would cost more than the sampling it does.
    heavy = {name for name in imported_modules(path) if name.split(".")[0] in HEAVY}
    assert not heavy, f"{path.name} imports {heavy}"
