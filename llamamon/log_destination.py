"""Where a job's ``llamamon.log()`` rows go: the run it joins (the recorder's), resumes or starts, and its journal.

Everything here runs once per process (at the first ``log()``) or at exit, never per call, so it may
import what it needs (the config, the store) when it needs it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamamon.errors import ConfigError, RunNotFound
from llamamon.host import this_host
from llamamon.launcher import NODE_RANK_ENV, Launch, launch_from, ranks_from
from llamamon.samples import NO_LABELS, Labels, Row, RunInfo, labels_to_str, make_labels, user_name

if TYPE_CHECKING:
    from llamamon.store.journal import Journal

logger = logging.getLogger("llamamon.api")

SEGMENT_BYTES = 64 << 20  # a journal segment this large is closed and a new one started (~2 M points)


class Destination:
    """Where this process's rows go: the run's journal, plus the run's metadata when the API owns it."""

    def __init__(self) -> None:
        self.journal: Journal | None = None
        self.run: RunInfo | None = None  # set only when this process started the run
        self.metrics_dir: Path | None = None
        self.aliases: dict[str, str] | None = None
        self.labels: Labels = NO_LABELS
        self.labels_str = ""
        self.rows = 0
        self.rows_before = 0  # a resumed run's sample count from its earlier processes

    @property
    def run_id(self) -> str | None:
        return self.journal.run_id if self.journal is not None else None

    def open(self, resume: str | None = None, fields: dict[str, Any] | None = None) -> None:
        from llamamon.store.journal import Journal

        self.labels = rank_labels(os.environ)
        self.labels_str = labels_to_str(self.labels)
        run_id = os.environ.get("LLAMAMON_RUN_ID")
        env_dir = os.environ.get("LLAMAMON_METRICS_DIR")
        config = _load_config()
        if config is not None:
            self.aliases = dict(config.aliases) or None
        host = this_host()
        if run_id and env_dir:
            self.metrics_dir = Path(env_dir)
            if resume is not None and resume != run_id:
                logger.warning(
                    "llamamon.init: resume=%r ignored: the metrics join the recorder's run %s", resume, run_id
                )
        else:
            self.metrics_dir = Path(env_dir) if env_dir else _metrics_path(config)
            self.run = self._resume_run(resume) if resume is not None else self._start_run(host, config)
            run_id = self.run.id
        self.journal = Journal(self.metrics_dir, run_id, host)
        if fields:
            self.annotate(fields)

    def annotate(self, fields: dict[str, Any]) -> None:
        """Name, tags and config from ``llamamon.init``: into the run's metadata when this process owns the
        run, else into the side file the recorder's metadata merges (``store.runs.annotate_run``)."""
        assert self.journal is not None, "open() first"
        assert self.metrics_dir is not None, "open() first"
        from llamamon.store.runs import annotate_run, write_run

        if self.run is None:
            annotate_run(self.metrics_dir, self.journal.run_id, **fields)
            return
        if fields["name"] is not None:
            self.run.name = fields["name"]
        self.run.tags.update(fields["tags"])
        self.run.config.update(fields["config"])
        write_run(self.metrics_dir, self.run)

    def _resume_run(self, ref: str) -> RunInfo:
        """The earlier run named by ``ref``, reopened by this process: no end, its exit code cleared."""
        from llamamon.store.journal import live_runs
        from llamamon.store.runs import resolve_run, write_run

        metrics_dir = self.metrics_dir
        assert metrics_dir is not None
        info = resolve_run(metrics_dir, ref)
        if info.end is None and info.id in live_runs(metrics_dir):
            raise RunNotFound(f"run {info.id} is still being recorded; it cannot be resumed")
        info.end = info.exit_code = info.signal = None
        info.pid = os.getpid()
        self.rows_before = info.samples
        write_run(metrics_dir, info)
        os.environ["LLAMAMON_RUN_ID"] = info.id
        os.environ["LLAMAMON_METRICS_DIR"] = str(metrics_dir)
        return info

    def _start_run(self, host: str, config: Any) -> RunInfo:
        from llamamon import __version__
        from llamamon.masking import mask_command
        from llamamon.store.runs import new_run_id, write_run

        start = time.time()
        tags = {"world_size": os.environ["WORLD_SIZE"]} if os.environ.get("WORLD_SIZE") else {}
        launch = _launch()
        info = RunInfo(
            id=new_run_id(host, start),
            host=host,
            start=start,
            tags=tags,
            command=mask_command([sys.executable, *sys.argv], config.monitoring.secret_options if config else ()),
            cwd=os.getcwd(),
            user=user_name(),
            pid=os.getpid(),
            python_version=sys.version.split()[0],
            llamamon_version=__version__,
            config_file=str(config.source) if config is not None and config.source else None,
            source="api",
            run_group=launch.run_group,
            node_rank=launch.node_rank,
            rank=launch.rank,
        )
        self.metrics_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        write_run(self.metrics_dir, info)  # type: ignore[arg-type]
        # Why: subprocesses this job starts (spawned dataloader workers, eval scripts) join this run.
        os.environ["LLAMAMON_RUN_ID"] = info.id
        os.environ["LLAMAMON_METRICS_DIR"] = str(self.metrics_dir)
        return info

    def write(self, rows: list[Row]) -> None:
        assert self.journal is not None, "open() first"
        self.rows += self.journal.append(rows)

    def write_lines(self, data: bytes, count: int) -> None:
        assert self.journal is not None, "open() first"
        self.rows += self.journal.append_lines(data, count)
        if self.journal.size >= SEGMENT_BYTES:
            segment = self.journal.rotate()
            if segment is not None:
                # Complete and unlocked: `llamamon record` folds it into Parquet while the job runs (or
                # the next llamamon command does), so a long run's journal never grows without bound.
                segment.release()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self.run is not None and self.run.pid == os.getpid() and self.metrics_dir is not None:
            from llamamon.store.runs import write_run

            self.run.end = time.time()
            self.run.exit_code = _exit_code()
            self.run.samples = self.rows_before + self.rows
            write_run(self.metrics_dir, self.run)


def config_dict(config: Any) -> dict[str, Any]:
    """The job's hyperparameters as a JSON object (see ``init``)."""
    import dataclasses

    if config is None:
        return {}
    if isinstance(config, Mapping):
        data = config
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif callable(getattr(config, "to_dict", None)):
        data = config.to_dict()
    elif hasattr(config, "__dict__"):
        data = vars(config)
    else:
        raise TypeError(
            f"llamamon.init: config must be a mapping, a dataclass or a namespace, not {type(config).__name__}"
        )
    return {str(k): _jsonable(v) for k, v in data.items()}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _jsonable(item())
    return str(value)


def rank_labels(env: Mapping[str, str]) -> Labels:
    """rank/local_rank/node_rank labels for distributed jobs; none for a single process (keeps cardinality low).

    Why node_rank: a multi-node report names a slow rank by its node, and host names in clusters are often
    pod names that say nothing of the node's place in the job.
    """
    if not env.get("RANK") and not env.get("LOCAL_RANK"):
        return NO_LABELS
    node = next((env[v] for v in NODE_RANK_ENV if env.get(v)), None)
    return make_labels(rank=env.get("RANK"), local_rank=env.get("LOCAL_RANK"), node_rank=node)


def _launch() -> Launch:
    """The launcher's run group and ranks, as ``llamamon record`` takes them; a bad group name is warned
    about and left out (the job must not fail for its metadata)."""
    try:
        return launch_from(os.environ)
    except ConfigError as exc:
        logger.warning("llamamon.log: no run group: %s", exc)
        return Launch(None, *ranks_from(os.environ))


def _load_config() -> Any:
    from llamamon.config import load_config
    from llamamon.errors import ConfigError

    try:
        return load_config()
    except ConfigError as exc:
        logger.warning("llamamon.log: ignoring the config (%s); using defaults", exc)
        return None


def _metrics_path(config: Any) -> Path:
    from llamamon.store.location import local_root  # a bucket URL: its mirror (the next command ships it)

    return local_root(config.metrics_path) if config is not None else Path(".metrics")


def _exit_code() -> int | None:
    # Why: atexit cannot see the interpreter's exit status; an uncaught exception is the one sure sign (1).
    return 1 if getattr(sys, "last_value", None) is not None else None
