"""``llamamon.log()``: training metrics from inside the job, cheap enough to call every step.

The calling thread only stamps the time and extends a flat list by ``(time, step, name, value)``: one
C call, atomic under the GIL, so no lock on the hot path, and no tuple kept per point (a kept object per
point is memory to allocate and, in a long loop, page faults: ~0.1 us a call). A daemon thread wakes every
``FLUSH_INTERVAL`` seconds, takes what is there with a slice, turns the entries into one column block of
packed arrays per batch (``llamamon.log_encoding``: alias resolution, float conversion, rank labels) and
appends it to the run's journal (``llamamon.log_destination``, ``llamamon.store.journal``; stdlib only:
polars, pyarrow and psutil are never imported here). The journal is folded into Parquet by the recorder
or by the next llamamon command that opens the store.

Under ``llamamon record`` the job's metrics join the recorder's run (``LLAMAMON_RUN_ID`` and
``LLAMAMON_METRICS_DIR`` in the environment); alone, the first flush starts a run of its own
(``source: "api"``) and exports those two variables so subprocesses join it too.

Fork safety: a forked child (dataloader workers) drops the parent's buffer (the parent flushes it),
gets fresh locks and starts its own flusher and journal segment on its first ``log()``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llamamon.errors import LlamamonError
from llamamon.log_destination import Destination, config_dict
from llamamon.log_encoding import SEVERAL, WIDTH, Converter
from llamamon.samples import Labels, Row

__all__ = ["claim_output", "current_run", "flush", "init", "log", "owns_run", "record_rows"]

logger = logging.getLogger("llamamon.api")

FLUSH_INTERVAL = 1.0  # seconds between background flushes; the journal is the crash-safety net
BATCH = 16384  # entries converted and written per journal append
EXIT_TIMEOUT = 10.0  # longest the interpreter waits at exit for the last flush


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
        _extend((_time(), step, SEVERAL, dict(data) if data is metrics else data))  # the caller may mutate its dict
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
        "config": config_dict(config),
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


def _merge(labels: Labels, extra: Labels) -> Labels:
    return tuple(sorted({**dict(labels), **dict(extra)}.items())) if labels else extra


class _Flusher:
    """The background thread that drains the queue into the journal; one per process."""

    def __init__(self) -> None:
        self.destination = Destination()
        self.converter = Converter()
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
