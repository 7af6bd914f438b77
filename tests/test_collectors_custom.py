"""User collectors from monitoring.yaml: loading with file:line errors, and the guard (through the collector
session, which gives it its timeout and says each failure once) that keeps recording alive."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import time

import pytest

from llamamon.collectors.custom import load_collector, load_collectors
from llamamon.collectors.session import CollectorSession
from llamamon.config import load_config
from llamamon.errors import ConfigError

COLLECTORS = """
import asyncio, threading, time
from llamamon import MetricsCollector
from llamamon.samples import Sample

class Good(MetricsCollector):
    def __init__(self):
        self.n = 0
    async def collect(self):
        self.n += 1
        return {"queue_depth": self.n}

class Labelled(MetricsCollector):
    async def collect(self):
        return [Sample("queue_depth", 3.0, (("queue", "a"),))]

class Raises(MetricsCollector):
    def __init__(self):
        self.calls = 0
    async def collect(self):
        self.calls += 1
        raise RuntimeError("sensor unplugged")

class Hangs(MetricsCollector):
    async def collect(self):
        await asyncio.sleep(3600)

class Blocks(MetricsCollector):
    release = threading.Event()
    def __init__(self):
        self.calls = 0
    async def collect(self):
        self.calls += 1
        self.release.wait(30)   # blocks its event loop, like time.sleep in user code
        return {"late": 1.0}

class BadValue(MetricsCollector):
    async def collect(self):
        return {"x": "not a number"}

class NotACollector:
    pass

class Broken(MetricsCollector):
    def __init__(self):
        raise OSError("no device")
    async def collect(self):
        return {}
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_collectors.py").write_text(COLLECTORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_collectors"
    sys.modules.pop("my_collectors", None)  # a fresh class (and Blocks.release event) per test


def test_load_from_config(tmp_path, user_module):
    (tmp_path / "monitoring.yaml").write_text('collectors:\n  - "my_collectors:Good"\n  - "my_collectors:Labelled"\n')
    collectors = load_collectors(load_config())
    assert [type(c).__name__ for c in collectors] == ["Good", "Labelled"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:Good", "cannot import 'no_such_module_xyz'"),
        ("my_collectors:Missing", "has no attribute 'Missing'"),
        ("my_collectors:NotACollector", "not a subclass of llamamon.MetricsCollector"),
        ("my_collectors:Broken", "my_collectors:Broken() failed: OSError: no device"),
    ],
)
def test_load_errors_name_the_line(tmp_path, user_module, spec, message):
    (tmp_path / "monitoring.yaml").write_text(
        f'monitoring:\n  enabled: true\ncollectors:\n  - "my_collectors:Good"\n  - "{spec}"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_collectors(load_config())
    assert str(info.value).startswith("monitoring.yaml:5: collectors[1]: ")
    assert message in str(info.value)


async def ticks(collectors, timeout, count):
    """``count`` ticks of a session of user collectors: per tick, each collector's samples in order."""
    async with CollectorSession([], timeout=timeout, user=collectors) as session:
        return [[samples for _, samples in await session.collect()] for _ in range(count)]


def test_good_collectors_give_samples(user_module):
    good = load_collector("my_collectors:Good")
    labelled = load_collector("my_collectors:Labelled")

    async def main():
        (first, tagged), (second, _) = await ticks([good, labelled], 1.0, 2)
        return first, second, tagged

    first, second, tagged = asyncio.run(main())
    assert [(s.metric, s.value) for s in first + second] == [("queue_depth", 1.0), ("queue_depth", 2.0)]
    assert tagged[0].labels == (("queue", "a"),)


def test_raising_collector_is_reported_once_and_skipped(user_module, caplog):
    raises = load_collector("my_collectors:Raises")

    async def main():
        return [samples for (samples,) in await ticks([raises], 1.0, 5)]

    with caplog.at_level(logging.WARNING, logger="llamamon.collectors"):
        results = asyncio.run(main())
    assert results == [[]] * 5
    assert raises.calls == 5  # asked again every tick: it may recover
    reports = [m for m in caplog.messages if "sensor unplugged" in m]
    assert len(reports) == 1
    assert "Raises" in reports[0]


def test_hanging_collectors_time_out_without_stopping_the_loop(user_module, caplog):
    hangs = load_collector("my_collectors:Hangs")
    blocks = load_collector("my_collectors:Blocks")
    good = load_collector("my_collectors:Good")

    async def main():
        timed = []
        async with CollectorSession([], timeout=0.2, user=[hangs, blocks, good]) as session:
            for _ in range(3):
                start = time.monotonic()
                got = [samples for _, samples in await session.collect()]
                timed.append((time.monotonic() - start, got))
            type(blocks).release.set()
        return timed

    with caplog.at_level(logging.WARNING, logger="llamamon.collectors"):
        timed = asyncio.run(main())
    for elapsed, (hung, blocked, fine) in timed:
        assert hung == []
        assert blocked == []
        assert [s.metric for s in fine] == ["queue_depth"]
        assert elapsed < 5.0  # bounded by the timeout, not by the collectors (generous for a loaded machine)
    assert blocks.calls == 1  # still stuck in its first call: not asked again
    assert sum("gave no answer within 0.2s" in m for m in caplog.messages) == 2  # Hangs and Blocks, once each


def test_non_numeric_result_is_reported(user_module, caplog):
    bad = load_collector("my_collectors:BadValue")

    async def main():
        return [samples for (samples,) in await ticks([bad], 1.0, 2)]

    with caplog.at_level(logging.WARNING, logger="llamamon.collectors"):
        assert asyncio.run(main()) == [[], []]
    assert sum("must be a number" in m for m in caplog.messages) == 1


def test_spec_without_colon_is_a_config_error():
    with pytest.raises(ConfigError, match=r"package\.module:ClassName"):
        load_collector("just_a_module")


COLLECTORS = textwrap.dedent(COLLECTORS)
