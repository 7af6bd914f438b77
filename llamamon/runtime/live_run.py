"""What others see of a run while ``record`` records it: its live alerts and its .prom textfile.

Both read what the job logs itself (``llamamon.log()``, its own journal segments) from one follower of
the run, so the job's journal is tailed once however many of them are on; each takes the tick's rows as
the recorder hands them over. Neither may stop the recording: a failure is said once and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llamamon.config import Config
    from llamamon.prometheus.textfile import TextfileWriter
    from llamamon.runtime.run_alerts import RunAlerts
    from llamamon.samples import Row
    from llamamon.store.follower import RunFollower

log = logging.getLogger("llamamon.record")


class LiveRun:
    """The run's alerts (unless ``alerts`` is off) and .prom file (unless monitoring.export_format is none).

    Built before the job starts: a bad rule or channel is a config error (exit 2), not a surprise later.
    """

    def __init__(self, config: Config, metrics_dir: Path, run_id: str, host: str, *, alerts: bool) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        self.run_id = run_id
        self.host = host
        self.alerts: RunAlerts | None = None
        self.textfile: TextfileWriter | None = None
        self._job: RunFollower | None = None
        self._failed = False
        textfile = config.monitoring.export_format == "prometheus"
        if not (alerts or textfile):
            return
        from llamamon.store.follower import RunFollower

        if alerts:
            from llamamon.runtime.live_alerts import LiveAlerts
            from llamamon.runtime.run_alerts import RunAlerts

            live = LiveAlerts(config, metrics_dir)
            self._job = RunFollower.own_run(metrics_dir, run_id, live, latest=textfile)
            self.alerts = RunAlerts(config, live, self._job, run_id, host)
        else:
            self._job = RunFollower.own_run(metrics_dir, run_id, None, latest=True)

    def open(self) -> None:
        """Start the .prom file, removing what ended runs and killed recorders left in its folder."""
        monitoring = self.config.monitoring
        if monitoring.export_format != "prometheus":
            return
        from llamamon.prometheus.textfile import TextfileWriter
        from llamamon.store.layout import textfile_folder

        folder = textfile_folder(self.metrics_dir, monitoring.textfile_dir)
        self.textfile = TextfileWriter(
            folder, self.host, self.run_id, refresh=monitoring.textfile_refresh, grace=monitoring.textfile_grace
        )
        self._export(self.textfile.prune)

    def on_tick(self, output: Sequence[Row], rows: Sequence[Row], now: float) -> list[Row]:
        """The tick's rows (``output``: the job's metric lines journaled during the interval; ``rows``: the
        collectors'); returns the rows to store with the tick (the channels' failed deliveries)."""
        extra: list[Row] = []
        if self.alerts is not None:
            # Evaluates beside the sampler, never inside its tick.
            extra = self.alerts.on_tick([*output, *rows], now)
        textfile = self.textfile
        if textfile is not None:
            # The job's rows are only taken when the file is rewritten: every series' latest since the last.
            job_rows = self._job.take_latest() if self._job is not None and textfile.due() else []
            self._export(lambda: textfile.write([*output, *rows, *extra, *job_rows]))
        return extra

    async def finish(self, ended: float | None) -> list[Row]:
        """The job ended at ``ended``: its alerts resolve; returns what failed to go out since the last tick."""
        if self.alerts is None:
            return []
        try:
            # The job's end, as the run's metadata says, not this later moment: the rules judge the run
            # as `alerts test` does, up to its end.
            await self.alerts.finish(ended if ended is not None else time.time())
            return self.alerts.failure_rows(time.time())
        except Exception as exc:  # noqa: BLE001 - the recording itself is complete
            log.error("final alert evaluation failed: %s", exc)
            return []

    def close(self) -> None:
        """The run's file goes (or says llamamon_run_active 0 for its grace), its alerts with it."""
        if self.textfile is not None:
            self._export(self.textfile.finish)

    def _export(self, write: Callable[[], object]) -> None:
        try:
            write()
        except (OSError, ValueError) as exc:  # an unwritable textfile folder must not stop the recording
            if not self._failed:
                self._failed = True
                log.warning("writing the Prometheus textfile failed: %s (logged once; recording goes on)", exc)
