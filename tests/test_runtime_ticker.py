"""The sampling schedule, driven by a hand-moved clock."""

from __future__ import annotations

import asyncio

import pytest

from llamamon.runtime.ticker import LoopThread, Stop, Ticker, run_ticks


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_first_tick_is_due_at_once():
    clock = Clock()
    ticker = Ticker(2.0, clock=clock)
    assert ticker.delay() == 0.0


def test_due_times_do_not_drift_with_slow_ticks():
    clock = Clock(50.0)
    ticker = Ticker(1.0, clock=clock)
    dues = []
    for _ in range(100):
        clock.now += 0.3  # every tick takes 0.3 s of work
        assert ticker.advance() == 0
        dues.append(ticker.due)
        clock.now = ticker.due + 0.01  # woken 10 ms late each time
    assert dues == [50.0 + k for k in range(1, 101)]


def test_overrun_skips_missed_ticks_instead_of_bursting():
    clock = Clock(0.0)
    ticker = Ticker(1.0, clock=clock)
    clock.now = 3.5  # tick 0 took 3.5 s: ticks 1, 2 and 3 are gone
    assert ticker.advance() == 3
    assert ticker.due == 4.0
    assert ticker.delay() == pytest.approx(0.5)
    assert ticker.skipped == 3


def test_tick_finishing_exactly_on_a_due_time_fires_that_tick():
    clock = Clock(0.0)
    ticker = Ticker(0.5, clock=clock)
    clock.now = 1.0
    assert ticker.advance() == 1  # tick 1 (0.5) missed, tick 2 (1.0) due now
    assert ticker.due == 1.0
    assert ticker.delay() == 0.0


def test_wall_clock_is_not_consulted():
    # Only the injected monotonic clock moves the schedule; a wall-clock jump has no input here at all.
    clock = Clock(10.0)
    ticker = Ticker(0.25, clock=clock)
    ticker.advance()
    assert ticker.due == 10.25


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_interval_must_be_positive(bad):
    with pytest.raises(ValueError, match="interval"):
        Ticker(bad)


def test_run_ticks_calls_on_schedule_and_stops_promptly():
    async def scenario() -> list[float]:
        stop = Stop()
        loop = asyncio.get_running_loop()
        ticker = Ticker(0.02, clock=loop.time)
        times: list[float] = []

        async def on_tick() -> None:
            times.append(loop.time())
            if len(times) == 5:
                stop.set()

        await asyncio.wait_for(run_ticks(ticker, on_tick, stop), 10)
        return [t - ticker.origin for t in times]

    offsets = asyncio.run(scenario())
    assert len(offsets) == 5
    # Each tick at or after its due time k * interval (the loop may be late, never early).
    for k, offset in enumerate(offsets):
        assert offset >= k * 0.02 - 1e-3


def test_run_ticks_stop_interrupts_a_long_wait():
    async def scenario() -> int:
        stop = Stop()
        calls = 0

        async def on_tick() -> None:
            nonlocal calls
            calls += 1
            asyncio.get_running_loop().call_soon(stop.set)

        await asyncio.wait_for(run_ticks(Ticker(3600.0), on_tick, stop), 10)
        return calls

    assert asyncio.run(scenario()) == 1


def test_run_ticks_takes_one_sample_even_when_stopped_before_starting():
    async def scenario() -> int:
        stop = Stop()
        stop.set()
        calls = 0

        async def on_tick() -> None:
            nonlocal calls
            calls += 1

        await asyncio.wait_for(run_ticks(Ticker(0.01), on_tick, stop), 10)
        return calls

    assert asyncio.run(scenario()) == 1


def test_a_loop_thread_stopped_before_its_loop_runs_sees_the_stop_and_keeps_what_main_raised():
    seen = []

    async def main(stop: Stop) -> None:
        seen.append(stop.is_set())
        await stop.sleep(3600)  # ends at once: the stop came first
        raise RuntimeError("disk full")

    thread = LoopThread(main, name="test-loop")
    with thread._lock:  # the stop arrives while the thread is starting, before its loop exists
        thread.start()
        thread._requested = True
    thread.stop()
    assert seen == [True]
    assert isinstance(thread.error, RuntimeError)
    assert str(thread.error) == "disk full"


def test_a_loop_thread_is_stopped_from_another_thread_while_it_waits():
    async def main(stop: Stop) -> None:
        while not stop.is_set():
            await stop.sleep(3600)

    thread = LoopThread(main, name="test-loop")
    thread.start()
    thread.stop()  # returns only once main has: a stop that went missing would hang here
    assert thread.error is None
