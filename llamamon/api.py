"""``llamamon.log()``: training metrics from inside the job, cheap enough to call every step.

The calling thread only stamps the time and extends a flat list by ``(time, step, name, value)``: one
C call, atomic under the GIL, so no lock on the hot path, and no tuple kept per point (a kept object per
point is memory to allocate and, in a long loop, page faults: ~0.1 us a call). A daemon thread wakes every
``FLUSH_INTERVAL`` seconds, takes what is there with a slice (columns are strided slices of it), turns
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamamon.catalog import canonical, group_of
from llamamon.errors import LlamamonError, RunNotFound
from llamamon.samples import NO_LABELS, Labels, Row, RunInfo, labels_to_str, make_labels

if TYPE_CHECKING:
    from llamamon.store.journal import Journal

__all__ = ["claim_output", "current_run", "flush", "init", "log", "owns_run", "record_rows"]

logger = logging.getLogger("llamamon.api")

FLUSH_INTERVAL = 1.0  # seconds between background flushes; the journal is the crash-safety net
BATCH = 16384  # entries converted and written per journal append
SEGMENT_BYTES = 64 << 20  # a journal segment this large is closed and a new one started (~2 M points)
EXIT_TIMEOUT = 10.0  # longest the interpreter waits at exit for the last flush
_STEP_END = 2**63  # steps are stored as 64-bit integers

WIDTH = 4  # items per point in the buffer: time, step, name, value
# A call with several metrics is one point whose name is _DICT and whose value is a dict of them.
_DICT = type("_Dict", (), {"__repr__": lambda self: "<several metrics>"})()

_buffer: list[Any] = []
_extend = _buffer.extend
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
            # Why `(key,) = values`: cheaper than unpacking values.items() (0.45 against 0.6 us per call). Why
            # not the kwargs dict itself: a dict kept per call costs three times a call (allocation, GC).
            (key,) = values
            _extend((_time(), step, key, values[key]))
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
        _extend((_time(), step, key, value))
    else:
        _extend((_time(), step, _DICT, dict(data) if data is metrics else data))  # the caller may mutate its dict
    if not _started:
        _ensure_started()


def init(
    name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    config: Any = None,
    resume: str | None = None,
) -> str | None:
    """Name the run, tag it and store the job's hyperparameters with it; returns the run id (None if metrics
    cannot be recorded here).

    ``config`` is a mapping, a dataclass, an object with ``to_dict()`` (the Hugging Face ``TrainingArguments``)
    or an ``argparse.Namespace``; values that are not JSON are stored as their text, NaN as ``"nan"``. Under
    ``llamamon record`` it annotates the recorder's run; alone it starts (or updates) the run ``llamamon.log``
    writes to. ``resume="<run id, prefix or name>"`` makes this process's rows join that earlier run instead
    of a new one (not under ``record``, whose run is the one being recorded; call it before the first ``log``).
    """
    from llamamon.store.layout import sanitize_run_name

    fields: dict[str, Any] = {
        "name": sanitize_run_name(name) if name is not None else None,
        "tags": {str(k): str(v) for k, v in (tags or {}).items()},
        "config": _config_dict(config),
    }
    with _start_lock:
        if not _started:
            _start(resume, fields)
        elif resume is not None and _flusher.destination.run_id != resume:
            raise RuntimeError("llamamon.init(resume=...) must come before the first llamamon.log()")
        else:
            _flusher.annotate(fields)
    return _flusher.destination.run_id


def flush() -> None:
    """Write everything logged so far to the journal now (e.g. before ``os._exit``)."""
    if _started:
        _flusher.drain()


def claim_output() -> None:
    """Tell ``llamamon record`` that this job reports its metrics through llamamon from now on, so the metric
    lines it prints are not parsed and stored a second time. ``LlamamonCallback`` calls it before the Trainer
    prints anything; call it yourself when the job prints what it also logs. Outside ``record``: nothing.
    """
    from llamamon.runtime.output_claim import ENV, claim

    path = os.environ.get(ENV)
    if path:
        claim(path)


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
        self.rows_before = 0  # a resumed run's sample count from its earlier processes

    @property
    def run_id(self) -> str | None:
        return self.journal.run_id if self.journal is not None else None

    def open(self, resume: str | None = None, fields: dict[str, Any] | None = None) -> None:
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
        info = RunInfo(
            id=new_run_id(host, start),
            host=host,
            start=start,
            tags=tags,
            command=mask_command([sys.executable, *sys.argv], config.monitoring.secret_options if config else ()),
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
            self.run.samples = self.rows_before + self.rows
            write_run(self.metrics_dir, self.run)


def _config_dict(config: Any) -> dict[str, Any]:
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
        # key -> (line template with a step, without one, metric, group), or None for a key not stored
        self.templates: dict[Any, tuple[str, ...] | None] = {}
        self.labels: str | None = None
        self.bad: set[str] = set()

    def encode(self, flat: list[Any], labels: str, aliases: dict[str, str] | None) -> tuple[bytes, int]:
        """(journal bytes, rows) for a batch of log() calls, ``WIDTH`` items each as the buffer holds them;
        ``labels`` is the stored labels string.

        The batch goes into one column block (``_columns``) when its values are numbers and its steps
        integers; otherwise (a value that is a string, a step given as a float) it takes the line path
        (``_lines``), which converts or skips each value on its own.
        """
        if labels != self.labels:  # templates embed the labels string
            self.templates.clear()
            self.labels = labels
        last = _last_step(flat)
        keys = flat[2::WIDTH]
        distinct = set(keys)
        if _DICT in distinct:
            flat = _flattened(flat)
            keys = flat[2::WIDTH]
            distinct = set(keys)
        block = self._columns(flat, keys, distinct, labels, aliases) if flat else None
        if block is None:
            data, count = self._lines(flat, labels, aliases)
        else:
            data, count = block, len(keys)
        if last is not None:
            from llamamon.store.journal import encode_fields

            # Why: one step row per flush lets rules see progress (stalls) without doubling the rows.
            data += encode_fields([(last[0], "training", "step", float(last[1]), labels, last[1])])
            count += 1
        return data, count

    def _columns(
        self, flat: list[Any], keys: list[Any], distinct: set[Any], labels: str, aliases: dict[str, str] | None
    ) -> bytes | None:
        """Single-metric points as one column block, or None when one of them needs the line path.

        Every step of this runs while the training thread waits for the GIL, so each column is one
        C-level pass (a strided slice, an array) over the batch.
        """
        from llamamon.store.journal import NO_STEP, encode_columns

        if "step" in distinct or any(type(key) is not str for key in distinct):
            return None
        steps = flat[1::WIDTH]
        try:
            # array() converts in C what float() would (ints, bools, numpy scalars); a str or None raises
            values = array("d", flat[3::WIDTH])
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
        return encode_columns(series, labels, codes, array("d", flat[0::WIDTH]), values, packed_steps)

    def _lines(self, flat: list[Any], labels: str, aliases: dict[str, str] | None) -> tuple[bytes, int]:
        """Journal row lines for single-metric points (``_flattened``) the column block does not take.

        Why templates: a line per value formatted from a template cached per name (time and value by
        ``%r``, the float repr JSON uses) is most of the flush's CPU saved; NaN and infinities, which JSON
        spells differently, take ``encode_fields``.
        """
        templates = self.templates
        lines: list[str] = []
        add = lines.append
        last_key = template = None
        for t, step, key, raw in _points(flat):
            if step is None:
                if key == "step":
                    continue  # the step row is written once per flush
            elif not (type(step) is int and 0 <= step < _STEP_END):
                step = _as_step(step)
            if key is not last_key:  # a loop logging one metric per call repeats the same key object
                last_key = key
                template = templates[key] if key in templates else self._template(key, labels, aliases)
            if template is None:
                continue
            if type(raw) is not float:
                raw = self._float(template[2], raw)
                if raw is None:
                    continue
            if raw - raw == 0.0:  # finite
                add(template[1] % (t, raw) if step is None else template[0] % (t, raw, step))
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
            template = (*line_templates(group, name, labels), name, group)
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


def _points(flat: list[Any]) -> Iterable[tuple[Any, Any, Any, Any]]:
    """(time, step, name, value) of each point in a buffer slice."""
    return zip(flat[0::WIDTH], flat[1::WIDTH], flat[2::WIDTH], flat[3::WIDTH], strict=True)


def _flattened(flat: list[Any]) -> list[Any]:
    """The buffer with each several-metrics point as single-metric ones; a dict's ``"step"`` key is the step
    of its other metrics, never a metric row of its own (the line path skips it too)."""
    out: list[Any] = []
    add = out.extend
    for t, step, key, value in _points(flat):
        if key is not _DICT:
            add((t, step, key, value))
            continue
        if step is None:
            step = value.get("step")
        for name, raw in value.items():
            if name != "step":
                add((t, step, name, raw))
    return out


def _last_step(flat: list[Any]) -> tuple[float, int] | None:
    """(time, step) of the last point that names a valid step: the batch's step row."""
    for i in range(len(flat) - WIDTH, -1, -WIDTH):
        t, step, key, value = flat[i : i + WIDTH]
        if step is None:
            if key is _DICT:
                step = value.get("step")
            elif key == "step":
                step = value
            if step is None:
                continue
        if not (type(step) is int and 0 <= step < _STEP_END):
            step = _as_step(step)
        if step is not None:
            return t, step
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
            while _buffer:
                # Why a slice and a del rather than swapping in a new list: a thread may hold the old list's
                # extend between loading and calling it. Each is one C call, and log() only ever adds whole
                # points at the end, so what is taken is whole points and nothing else is touched.
                size = len(_buffer)
                step = BATCH * WIDTH
                for start in range(0, size, step):
                    self._write(_buffer[start : min(start + step, size)])
                del _buffer[:size]

    def _write(self, batch: list[Any]) -> None:
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

    def open(self, resume: str | None = None, fields: dict[str, Any] | None = None) -> None:
        try:
            self.destination.open(resume, fields)
        except LlamamonError:
            raise  # a run to resume that is not there, a bad name: the caller's mistake, said in one line
        except Exception as exc:  # noqa: BLE001 - isolation: metrics trouble must not stop the training job
            self.broken = True
            logger.warning("llamamon.log: cannot start recording metrics (%s); they are dropped", exc)

    def annotate(self, fields: dict[str, Any]) -> None:
        if self.broken:
            return
        try:
            self.destination.annotate(fields)
        except OSError as exc:
            logger.warning("llamamon.init: cannot store the run's name, tags and config (%s)", exc)

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
    with _start_lock:
        if not _started:
            _start()


def _start(resume: str | None = None, fields: dict[str, Any] | None = None) -> None:
    """Open the destination and start the flusher; the caller holds ``_start_lock``."""
    global _started
    # Why synchronously, once: after the first log() returns the run exists and LLAMAMON_RUN_ID is
    # exported, so workers forked or spawned from here on join it instead of starting runs of their own.
    _flusher.open(resume, fields)
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
    global _buffer, _extend, _started, _start_lock
    # Why: the parent flushes what it buffered; the child must not write it twice. The child keeps the
    # parent's destination (same run; store.journal gives it a segment of its own) but never finishes the run.
    _buffer = []
    _extend = _buffer.extend
    _rows.clear()
    _start_lock = threading.Lock()
    _flusher.after_fork()
    _started = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
