"""TrainingMonitor: host, process and GPU samples for the duration of a ``with`` or ``async with`` block.

It samples on a thread of its own, so a training loop that never yields (the plain synchronous loop, or
one inside ``async with`` that blocks the event loop) is sampled at the interval all the same. It writes
through ``llamamon.api`` (the same run and journal as ``llamamon.log``) and keeps a small summary of what
was logged. psutil and pynvml are imported only when it starts; torch's CUDA allocator figures are read
when the job itself uses CUDA (monitors.cuda_memory), also under ``llamamon record``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamamon import api
from llamamon.catalog import canonical
from llamamon.monitors._config import monitor_config
from llamamon.monitors.cuda_memory import job_cuda_memory_rows
from llamamon.samples import Row

if TYPE_CHECKING:
    from llamamon.collectors.session import CollectorSession
    from llamamon.config import Config

logger = logging.getLogger("llamamon.monitors")


class _Best:
    __slots__ = ("best", "best_step", "latest", "latest_step")

    def __init__(self) -> None:
        self.latest: float | None = None
        self.latest_step: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    def update(self, value: float, step: int | None) -> None:
        self.latest, self.latest_step = value, step
        if not math.isnan(value) and (self.best is None or value < self.best):
            self.best, self.best_step = value, step

    def summary(self) -> dict[str, Any]:
        return {"latest": self.latest, "best": self.best, "best_step": self.best_step, "step": self.latest_step}


class TrainingMonitor:
    """``with TrainingMonitor() as monitor:`` (or ``async with``) records system and GPU metrics while the
    block runs, every ``interval`` seconds on a background thread, and once more as it ends.

    ``monitor.log(...)`` is ``llamamon.log`` plus a running summary for ``training_metrics()``.
    ``flops_per_token`` (the model's training FLOPs per token, e.g. 6 x parameters) is recorded once as
    ``model_flops_per_token``, from which the report derives MFU where it knows the GPU's peak.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        interval: float | None = None,
        flops_per_token: float | None = None,
    ) -> None:
        self.config = monitor_config(config)
        self.flops_per_token = flops_per_token
        self.interval = float(interval) if interval is not None else self.config.update_frequency
        self._aliases = dict(self.config.aliases) or None
        self._lock = threading.Lock()
        self._loss = _Best()
        self._val = _Best()
        self._lr: float | None = None
        self._steps: deque[tuple[float, int]] = deque(maxlen=64)  # (monotonic time, step) for steps/s
        self._collectors: CollectorSession | None = None  # None under `llamamon record`, which samples instead
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()

    def log(self, metrics: Mapping[str, Any] | None = None, /, step: int | None = None, **values: Any) -> None:
        """Same as :func:`llamamon.log`; also feeds the summary (latest/best loss, learning rate, steps/s)."""
        api.log(metrics, step=step, **values)
        data = dict(metrics or {})
        data.update(values)
        if step is None:
            step = data.get("step")
        step_int = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None
        with self._lock:
            if step_int is not None and (not self._steps or self._steps[-1][1] != step_int):
                self._steps.append((time.monotonic(), step_int))
            for key, raw in data.items():
                name = canonical(str(key), self._aliases)
                if name not in ("loss", "validation_loss", "learning_rate"):
                    continue
                try:
                    value = float(raw)
                except (TypeError, ValueError):
                    continue
                if name == "loss":
                    self._loss.update(value, step_int)
                elif name == "validation_loss":
                    self._val.update(value, step_int)
                else:
                    self._lr = value

    def steps_per_second(self) -> float | None:
        """Over the last 64 distinct logged steps."""
        with self._lock:
            if len(self._steps) < 2:
                return None
            (t0, s0), (t1, s1) = self._steps[0], self._steps[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    async def get_training_metrics(self) -> dict[str, Any]:
        """``training_metrics()`` for async code."""
        return self.training_metrics()

    def training_metrics(self) -> dict[str, Any]:
        """Latest, best and step of best for loss and validation loss; learning rate; steps per second."""
        with self._lock:
            summary = {
                "loss": self._loss.summary(),
                "validation_loss": self._val.summary(),
                "learning_rate": self._lr,
                "step": self._steps[-1][1] if self._steps else None,
            }
        summary["steps_per_second"] = self.steps_per_second()
        return summary

    def start(self) -> TrainingMonitor:
        """Start sampling (what entering the block does); returns once the collectors are open."""
        if self._thread is None:
            api.current_run()  # first, so that at exit the last sample is written before the API's flush
            if self.flops_per_token is not None:
                api.log(model_flops_per_token=float(self.flops_per_token))  # the report's MFU needs it
            self._stop = threading.Event()
            self._ready = threading.Event()
            self._thread = threading.Thread(target=self._run, name="llamamon-training-monitor", daemon=True)
            self._thread.start()
            atexit.register(self.close)
            self._ready.wait()
        return self

    def close(self) -> None:
        """Take the last sample, stop the sampler and flush to the journal (what leaving the block does)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            atexit.unregister(self.close)
        api.flush()

    def __enter__(self) -> TrainingMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> TrainingMonitor:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def _run(self) -> None:
        """The sampler thread: its own event loop for the (async) collectors, a tick every interval on the
        monotonic clock (missed ticks skipped, never a burst), and a last tick when told to stop."""
        loop = asyncio.new_event_loop()
        try:
            where = api.current_run()
            if api.owns_run():
                metrics_dir = where[1] if where is not None else Path(self.config.metrics_path)
                self._collectors = loop.run_until_complete(self._open_collectors(metrics_dir))
            else:
                # Under `llamamon record` the recorder already samples the machine, the job and its GPUs.
                logger.debug("TrainingMonitor: system and GPU metrics come from the recorder")
            self._ready.set()
            next_at = time.monotonic() + self.interval
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += self.interval
                if next_at < time.monotonic():
                    next_at = time.monotonic() + self.interval
                loop.run_until_complete(self._tick())
            loop.run_until_complete(self._tick())  # one last sample at the end of the block
            if self._collectors is not None:
                loop.run_until_complete(self._collectors.close())
                self._collectors = None
        finally:
            self._ready.set()
            loop.close()

    async def _open_collectors(self, metrics_dir: Path) -> CollectorSession:
        # Why imported here: psutil and pynvml are only needed once a monitor really starts.
        from llamamon.collectors.gpu import GpuCollector
        from llamamon.collectors.process import ProcessTreeCollector
        from llamamon.collectors.session import CollectorSession
        from llamamon.collectors.system import SystemCollector

        process = ProcessTreeCollector(os.getpid())
        wanted = [SystemCollector(metrics_dir), process, GpuCollector(pids=process.pids)]
        session = CollectorSession(wanted, timeout=self.interval, goes_on="sampling")
        await session.open()
        return session

    async def _tick(self) -> None:
        now = time.time()
        rows = await self._collectors.rows(now) if self._collectors is not None else []
        sps = self.steps_per_second()
        if sps is not None:
            rows.append(Row(now, "training", "steps_per_second", sps))
        # Also under `llamamon record`: only the job itself can read its torch allocator.
        rows.extend(job_cuda_memory_rows(now))
        if rows:
            api.record_rows(rows)
