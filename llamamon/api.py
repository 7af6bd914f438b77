"""``llamamon.log()``: training metrics from inside the job, cheap enough to call every step.

The calling thread only stamps the time and appends ``(time, step, dict)`` to a deque (atomic under
the GIL, so no lock on the hot path). A daemon thread wakes every ``FLUSH_INTERVAL`` seconds, turns
the entries into rows (alias resolution, float conversion, rank labels) and appends them to the run's
journal as one column block of packed arrays per batch (``llamamon.store.journal``, stdlib only: polars,
pyarrow and psutil are never imported here). The flusher shares the GIL with the training thread, so its
CPU per point is also what each ``log()`` call waits for: hence arrays built in C, not text per row.
The journal is folded into Parquet by the recorder or by the next llamamon command that opens the store.

Under ``llamamon record`` the job's metrics join the recorder's run (``LLAMAMON_RUN_ID`` and
``LLAMAMON_METRICS_DIR`` in the environment); alone, the first flush starts a run of its own
(``source: "api"``) and exports those two variables so subprocesses join it too.

Fork safety: a forked child (dataloader workers) drops the parent's buffer (the parent flushes it),
gets fresh locks and starts its own flusher and journal segment on its first ``log()``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from itertools import repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamamon.catalog import canonical, group_of
from llamamon.samples import NO_LABELS, Labels, Row, RunInfo, labels_to_str, make_labels

if TYPE_CHECKING:
    from llamamon.store.journal import Journal

__all__ = ["current_run", "flush", "log", "owns_run", "record_rows"]

logger = logging.getLogger("llamamon.api")

FLUSH_INTERVAL = 1.0  # seconds between background flushes; the journal is the crash-safety net
BATCH = 16384  # entries converted and written per journal append
SEGMENT_BYTES = 64 << 20  # a journal segment this large is closed and a new one started (~2 M points)
EXIT_TIMEOUT = 10.0  # longest the interpreter waits at exit for the last flush
_STEP_END = 2**63  # steps are stored as 64-bit integers

# (time, step, {name: value}) or, for a single metric, (time, step, name, value)
Entry = tuple[float, Any, Mapping[str, Any]] | tuple[float, Any, Any, Any]

_queue: deque[Entry] = deque()
_append = _queue.append
_rows: deque[Row] = deque()  # ready-made rows from the monitors (system, gpu, inference groups)
_time = time.time
_started = False


def log(metrics: Mapping[str, Any] | None = None, /, step: int | None = None, **values: Any) -> None:
    """Record training metrics: ``log({"loss": 0.41, "learning_rate": 3e-4}, step=120)`` or ``log(loss=0.41)``.

    Returns at once: values are converted and written in the background (and at exit). Pass numbers
    (Python, numpy scalars, ``tensor.item()``); a key ``"step"`` in the dict is the step when ``step``
    is not given. NaN and infinities are kept, so a diverging loss can raise an alert.
    """
    if metrics is None:
        if len(values) == 1:
            # Why a flat entry for one metric: a tuple of numbers and a string is untracked by the cyclic GC
            # after its first pass, while one holding a dict is traversed by every collection. Why
            # `(key,) = values`: cheaper than unpacking values.items() (0.45 against 0.6 us per call).
            (key,) = values
            _append((_time(), step, key, values[key]))
            if not _started:
                _ensure_started()
            return
        data: Mapping[str, Any] = values
    elif values:
        data = {**metrics, **values}
    else:
        data = metrics
    if len(data) == 1:
        ((key, value),) = data.items()
        _append((_time(), step, key, value))
    else:
        _append((_time(), step, dict(data) if data is metrics else data))  # the caller may mutate its dict
    if not _started:
        _ensure_started()


def flush() -> None:
    """Write everything logged so far to the journal now (e.g. before ``os._exit``)."""
    if _started:
        _flusher.drain()


def record_rows(rows: Iterable[Row]) -> None:
    """Rows built elsewhere (TrainingMonitor's collectors, InferenceMonitor) join the same run and journal."""
    _rows.extend(rows)
    if not _started:
        _ensure_started()


def owns_run() -> bool:
    """True when this process started its run (no ``llamamon record`` around it)."""
    _ensure_started()
    return _flusher.destination.run is not None


def current_run() -> tuple[str, Path] | None:
    """(run id, metrics folder) this process writes to, starting a run if needed; None if that failed."""
    _ensure_started()
    dest = _flusher.destination
    if dest.journal is None or dest.metrics_dir is None:
        return None
    return dest.journal.run_id, dest.metrics_dir


class _Destination:
    """Where this process's rows go: the run's journal, plus the run's metadata when the API owns it."""

    def __init__(self) -> None:
        self.journal: Journal | None = None
        self.run: RunInfo | None = None  # set only when this process started the run
        self.metrics_dir: Path | None = None
        self.aliases: dict[str, str] | None = None
        self.labels: Labels = NO_LABELS
        self.labels_str = ""
        self.rows = 0

    def open(self) -> None:
        from llamamon.store.journal import Journal

        self.labels = _rank_labels(os.environ)
        self.labels_str = labels_to_str(self.labels)
        run_id = os.environ.get("LLAMAMON_RUN_ID")
        env_dir = os.environ.get("LLAMAMON_METRICS_DIR")
        config = _load_config()
        if config is not None:
            self.aliases = dict(config.aliases) or None
        host = socket.gethostname()
        if run_id and env_dir:
            self.metrics_dir = Path(env_dir)
        else:
            self.metrics_dir = Path(env_dir) if env_dir else _metrics_path(config)
            self.run = self._start_run(host, config)
            run_id = self.run.id
        self.journal = Journal(self.metrics_dir, run_id, host)

    def _start_run(self, host: str, config: Any) -> RunInfo:
        from llamamon import __version__
        from llamamon.store.runs import new_run_id, write_run

        start = time.time()
        tags = {"world_size": os.environ["WORLD_SIZE"]} if os.environ.get("WORLD_SIZE") else {}
        info = RunInfo(
            id=new_run_id(host, start),
            host=host,
            start=start,
            tags=tags,
            command=[sys.executable, *sys.argv],
            cwd=os.getcwd(),
            user=_user(),
            pid=os.getpid(),
            python_version=sys.version.split()[0],
            llamamon_version=__version__,
            config_file=str(config.source) if config is not None and config.source else None,
            source="api",
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
            self.run.samples = self.rows
            write_run(self.metrics_dir, self.run)


def _rank_labels(env: Mapping[str, str]) -> Labels:
    """rank/local_rank labels for distributed jobs; none for a single process (keeps cardinality low)."""
    if not env.get("RANK") and not env.get("LOCAL_RANK"):
        return NO_LABELS
    return make_labels(rank=env.get("RANK"), local_rank=env.get("LOCAL_RANK"))


def _merge(labels: Labels, extra: Labels) -> Labels:
    return tuple(sorted({**dict(labels), **dict(extra)}.items())) if labels else extra


def _load_config() -> Any:
    from llamamon.config import load_config
    from llamamon.errors import ConfigError

    try:
        return load_config()
    except ConfigError as exc:
        logger.warning("llamamon.log: ignoring the config (%s); using defaults", exc)
        return None


def _metrics_path(config: Any) -> Path:
    return Path(config.metrics_path) if config is not None else Path(".metrics")


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _exit_code() -> int | None:
    # Why: atexit cannot see the interpreter's exit status; an uncaught exception is the one sure sign (1).
    return 1 if getattr(sys, "last_value", None) is not None else None


class _Converter:
    """Entries -> journal lines. Holds the per-name caches, so each distinct name is resolved once."""

    def __init__(self) -> None:
        # key -> (line template with a step, without one, metric, group, the two templates again for a time
        # formatted in advance), or None for a key that is not stored
        self.templates: dict[Any, tuple[str, ...] | None] = {}
        self.labels: str | None = None
        self.bad: set[str] = set()

    def encode(self, entries: list[Entry], labels: str, aliases: dict[str, str] | None) -> tuple[bytes, int]:
        """(journal bytes, rows) for a batch of log() calls; ``labels`` is the stored labels string.

        The batch goes into one column block (``encode_columns``) when its values are numbers and its
        steps integers; otherwise (a value that is a string, a step given as a float) it takes the line
        path (``_lines``), which converts or skips each value on its own.
        """
        if labels != self.labels:  # templates embed the labels string
            self.templates.clear()
            self.labels = labels
        try:
            flat, block = entries, self._columns(entries, labels, aliases)  # the hot loop's batch: all single calls
        except IndexError:  # a dict call's entry has no fourth field
            flat = [entry for entry in entries if len(entry) == 4]
            flat.extend(_flattened([entry for entry in entries if len(entry) != 4]))  # type: ignore[arg-type]
            block = self._columns(flat, labels, aliases) if flat else None
        if block is None:
            data, count = self._lines(entries, labels, aliases)
        else:
            data, count = block, len(flat)
        last = _last_step(entries)
        if last is not None:
            from llamamon.store.journal import encode_fields

            # Why: one step row per flush lets rules see progress (stalls) without doubling the rows.
            data += encode_fields([(last[0], "training", "step", float(last[1]), labels, last[1])])
            count += 1
        return data, count

    def _columns(self, flat: list[Entry], labels: str, aliases: dict[str, str] | None) -> bytes | None:
        """Single-metric entries as one column block, or None when one of them needs the line path.

        IndexError when an entry is a dict call's. Every step of this runs while the training thread
        waits for the GIL, so each column is one C-level pass (map, array) over the batch.
        """
        from llamamon.store.journal import NO_STEP, encode_columns

        times, steps, keys, raws = (list(map(itemgetter(i), flat)) for i in range(4))
        distinct = set(keys)
        if "step" in distinct or any(type(key) is not str for key in distinct):
            return None
        try:
            # array() converts in C what float() would (ints, bools, numpy scalars); a str or None raises
            values = array("d", raws)
            try:
                packed_steps: array[int] | None = array("q", steps)  # a negative step reads back as none
            except TypeError:  # None among them (or a step that is no integer: the line path converts it)
                missing = steps.count(None)
                packed_steps = None
                if missing != len(steps):
                    packed_steps = array("q", [NO_STEP if step is None else step for step in steps])
        except (TypeError, ValueError, OverflowError):
            return None
        templates = self.templates
        series: list[tuple[str, str]] = []
        index: dict[Any, int] = {}
        for key in distinct:
            template = templates[key] if key in templates else self._template(key, labels, aliases)
            assert template is not None  # only the "step" key has none
            index[key] = len(series)
            series.append((template[3], template[2]))
        codes = array("H" if len(series) <= 0xFFFF else "I", map(index.__getitem__, keys)) if len(series) > 1 else None
        return encode_columns(series, labels, codes, array("d", times), values, packed_steps)

    def _lines(self, entries: list[Entry], labels: str, aliases: dict[str, str] | None) -> tuple[bytes, int]:
        """Journal row lines for entries the column block does not take.

        Why templates: a line per value formatted from a template cached per name (time and value by
        ``%r``, the float repr JSON uses) is most of the flush's CPU saved; NaN and infinities, which JSON
        spells differently, take ``encode_fields``.
        """
        templates = self.templates
        float_repr = float.__repr__
        lines: list[str] = []
        add = lines.append
        last_key = template = None
        for entry in entries:
            if len(entry) == 4:
                t, step, key, raw = entry
                if step is None:
                    if key == "step":
                        continue  # the step row is written once per flush
                elif not (type(step) is int and 0 <= step < _STEP_END):
                    step = _as_step(step)
                if key is not last_key:  # a loop logging one metric per call repeats the same key object
                    last_key = key
                    template = templates[key] if key in templates else self._template(key, labels, aliases)
                if template is not None:
                    if type(raw) is not float:
                        raw = self._float(template[2], raw)
                    if raw is not None:
                        if raw - raw == 0.0:  # finite
                            add(template[1] % (t, raw) if step is None else template[0] % (t, raw, step))
                        else:
                            add(self._fields_line(t, template, raw, labels, step))
                continue
            t, step, data = entry
            if step is None and "step" in data:
                step = data["step"]
            if step is not None and not (type(step) is int and 0 <= step < _STEP_END):
                step = _as_step(step)
            time_text = float_repr(t)  # the metrics of one call share its time: format it once
            last_key = None
            for key, raw in data.items():
                template = templates[key] if key in templates else self._template(key, labels, aliases)
                if template is None:
                    continue
                if type(raw) is not float:
                    raw = self._float(template[2], raw)
                    if raw is None:
                        continue
                if raw - raw == 0.0:
                    add(template[5] % (time_text, raw) if step is None else template[4] % (time_text, raw, step))
                else:
                    add(self._fields_line(t, template, raw, labels, step))
        return "".join(lines).encode(), len(lines)

    def _template(self, key: Any, labels: str, aliases: dict[str, str] | None) -> tuple[str, ...] | None:
        from llamamon.store.journal import line_templates

        name = str(key) if key != "step" else ""
        template = None
        if name:
            name = canonical(name, aliases)
            group = group_of(name)
            template = (*line_templates(group, name, labels), name, group, *line_templates(group, name, labels, "%s"))
        if isinstance(key, str):
            self.templates[key] = template
        return template

    @staticmethod
    def _fields_line(t: float, template: tuple[str, ...], value: float, labels: str, step: Any) -> str:
        from llamamon.store.journal import encode_fields

        return encode_fields([(t, template[3], template[2], value, labels, step)]).decode()

    def _float(self, name: str, raw: Any) -> float | None:
        try:
            return float(raw)
        except (TypeError, ValueError):
            if name not in self.bad:
                self.bad.add(name)
                logger.warning("llamamon.log: %s=%r is not a number; such values are skipped", name, raw)
            return None


def _flattened(calls: list[tuple[float, Any, Mapping[str, Any]]]) -> list[Entry]:
    """Dict entries as single-metric ones; a dict's ``"step"`` key is the step of its other metrics."""
    out: list[Entry] = []
    for t, step, data in calls:
        if step is None:
            step = data.get("step")
        # a dict's "step" key is never a metric row of its own (the line path skips it too)
        out.extend((t, step, key, raw) for key, raw in data.items() if key != "step")
    return out


def _last_step(entries: list[Entry]) -> tuple[float, int] | None:
    """(time, step) of the last entry that names a valid step: the batch's step row."""
    for entry in reversed(entries):
        step = entry[1]
        if step is None:
            if len(entry) == 4:
                if entry[2] == "step":
                    step = entry[3]
            elif "step" in entry[2]:
                step = entry[2]["step"]
            if step is None:
                continue
        if not (type(step) is int and 0 <= step < _STEP_END):
            step = _as_step(step)
        if step is not None:
            return entry[0], step
    return None


def _as_step(step: Any) -> int | None:
    """The step as the store keeps it (a 64-bit integer >= 0), or None when it is not one."""
    if step is None:
        return None
    try:
        value = int(step)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if 0 <= value < _STEP_END and (not isinstance(step, float) or math.isfinite(step)) else None


class _Flusher:
    """The background thread that drains the queue into the journal; one per process."""

    def __init__(self) -> None:
        self.destination = _Destination()
        self.converter = _Converter()
        self.lock = threading.Lock()  # one drain at a time (background thread, flush(), exit)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.broken = False
        self.closed = False

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="llamamon-log-flusher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(FLUSH_INTERVAL)
            self.wake.clear()
            self.drain()

    def drain(self) -> None:
        with self.lock:
            if _rows:
                ready = [_rows.popleft() for _ in range(len(_rows))]
                self._write_rows(ready)
            while _queue:
                # starmap(popleft, repeat(())): the pops in a C loop (a comprehension costs twice as much)
                batch: list[Entry] = list(starmap(_queue.popleft, repeat((), min(len(_queue), BATCH))))
                self._write(batch)

    def _write(self, batch: list[Entry]) -> None:
        if self.broken:
            return
        dest = self.destination
        try:
            dest.write_lines(*self.converter.encode(batch, dest.labels_str, dest.aliases))
        except Exception as exc:  # noqa: BLE001 - isolation: a full disk must not crash the training job
            self.broken = True
            logger.warning("llamamon.log: cannot write metrics (%s); further metrics of this process are dropped", exc)

    def _write_rows(self, rows: list[Row]) -> None:
        if self.broken:
            return
        labels = self.destination.labels
        if labels:
            rows = [Row(r.time, r.group, r.metric, r.value, _merge(r.labels, labels), r.step) for r in rows]
        try:
            self.destination.write(rows)
        except Exception as exc:  # noqa: BLE001 - isolation: a full disk must not crash the job
            self.broken = True
            logger.warning("llamamon: cannot write metrics (%s); further metrics of this process are dropped", exc)

    def open(self) -> None:
        try:
            self.destination.open()
        except Exception as exc:  # noqa: BLE001 - isolation: metrics trouble must not stop the training job
            self.broken = True
            logger.warning("llamamon.log: cannot start recording metrics (%s); they are dropped", exc)

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = None
        self.closed = False
        self.destination.run = None
        self.destination.rows = 0

    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(EXIT_TIMEOUT)
        self.drain()
        try:
            self.destination.close()
        except Exception as exc:  # noqa: BLE001 - isolation: exit must not fail because metadata could not be written
            logger.warning("llamamon.log: cannot finish the run's metadata (%s)", exc)


_flusher = _Flusher()
_start_lock = threading.Lock()


def _ensure_started() -> None:
    global _started
    with _start_lock:
        if _started:
            return
        # Why synchronously, once: after the first log() returns the run exists and LLAMAMON_RUN_ID is
        # exported, so workers forked or spawned from here on join it instead of starting runs of their own.
        _flusher.open()
        _flusher.start()
        atexit.register(_at_exit)
        _register_multiprocessing_finalizer()
        _started = True


def _at_exit() -> None:
    if _started:
        _flusher.shutdown()


def _register_multiprocessing_finalizer() -> None:
    # Why: multiprocessing children end with os._exit, which skips atexit; its own exit hook still runs.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _at_exit, exitpriority=10)


def _after_fork_in_child() -> None:
    global _queue, _append, _started, _start_lock
    # Why: the parent flushes what it buffered; the child must not write it twice. The child keeps the
    # parent's destination (same run; store.journal gives it a segment of its own) but never finishes the run.
    _queue = deque()
    _append = _queue.append
    _rows.clear()
    _start_lock = threading.Lock()
    _flusher.after_fork()
    _started = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
