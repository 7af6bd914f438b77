"""``record``'s live alerts on its own run: the sampler's rows and the job's journal in, notifications out."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llamamon.runtime.live_alerts import LiveAlerts, describe
from llamamon.samples import Row, RowMaker

if TYPE_CHECKING:
    from llamamon.config import Config
    from llamamon.store.follower import RunFollower

log = logging.getLogger("llamamon.alerts")


class RunAlerts:
    """``record``'s hook: its own run's rows in, notifications out; one call per tick, one at exit.

    Evaluation runs beside the sampler, never inside its tick: a slow evaluation (a long window, a
    store catch-up of the job's rows) skips an evaluation, never a sample; the next one sees every row. What the job logs
    itself (``llamamon.log()``, its own journal segments) comes from the run's follower, read by the .prom
    file too.
    """

    def __init__(self, config: Config, live: LiveAlerts, job: RunFollower, run_id: str, host: str) -> None:
        self.live = live
        self.run_id = run_id
        self.host = host
        self.job = job  # the run's follower, feeding ``live`` what the job writes itself
        # Why not every sample tick: rules are defined on the update_frequency grid (as `alerts test`
        # evaluates them), so `--interval 0.1` gives the same alerts as `alerts test` replays.
        self.period = config.update_frequency
        self._next_eval = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._rows = RowMaker()  # the channels' failure counts as rows

    def on_tick(self, rows: Sequence[Row], now: float) -> list[Row]:
        """Feed the tick's rows, start an evaluation unless one is under way; returns the
        notification_failures rows to store with the tick."""
        self.live.add(rows, self.run_id, self.host)
        if now >= self._next_eval and (self._task is None or self._task.done()):
            self._next_eval = now + self.period
            self._task = asyncio.get_running_loop().create_task(self._evaluate(now))
        return self.failure_rows(now)

    def failure_rows(self, now: float) -> list[Row]:
        """The channels' failed deliveries so far, as notification_failures rows at ``now``."""
        return self._rows(self.live.failure_samples(), now)

    async def _evaluate(self, now: float, *, final_at: float | None = None) -> None:
        try:
            await asyncio.to_thread(self.job.poll, now)
            if final_at is not None:
                # At the marker: the run's end is stepped first, then everything of it resolves there.
                now = self.live.end_run(self.run_id, final_at)
            for event in await self.live.tick(now):
                log.info("alert %s", describe(event))
        except Exception as exc:  # noqa: BLE001 - alerting must never stop the recording
            if not self._failed:
                self._failed = True
                log.error("evaluating alert rules failed: %s (logged once; recording goes on)", exc)

    async def finish(self, ended: float) -> None:
        """The job ended at ``ended``: its alerts resolve, the last notifications get a short while to go out."""
        if self._task is not None:
            await self._task
        await self._evaluate(time.time(), final_at=ended)
        await self.live.close()
