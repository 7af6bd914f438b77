"""How a batch of ``llamamon.log()`` calls becomes journal bytes, off the training thread.

The batch is the buffer as ``log()`` extends it, ``WIDTH`` items a point (time, step, name, value); a
call with several metrics is one point named ``SEVERAL`` whose value is their dict. The flusher shares
the GIL with the training thread, so every pass here is one C-level pass (a strided slice, an array)
where it can be: its CPU per point is also what each ``log()`` call waits for.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Iterable
from typing import Any

from llamamon.catalog import canonical, group_of

logger = logging.getLogger("llamamon.api")

WIDTH = 4  # items per point in the buffer: time, step, name, value
# A call with several metrics is one point whose name is SEVERAL and whose value is a dict of them.
SEVERAL = type("_Several", (), {"__repr__": lambda self: "<several metrics>"})()
STEP_END = 2**63  # steps are stored as 64-bit integers


class Converter:
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
        last = last_step(flat)
        keys = flat[2::WIDTH]
        distinct = set(keys)
        if SEVERAL in distinct:
            flat = flattened(flat)
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
        """Journal row lines for single-metric points (``flattened``) the column block does not take.

        Why templates: a line per value formatted from a template cached per name (time and value by
        ``%r``, the float repr JSON uses) is most of the flush's CPU saved; NaN and infinities, which JSON
        spells differently, take ``encode_fields``.
        """
        templates = self.templates
        lines: list[str] = []
        add = lines.append
        last_key = template = None
        for t, step, key, raw in points(flat):
            if step is None:
                if key == "step":
                    continue  # the step row is written once per flush
            elif not (type(step) is int and 0 <= step < STEP_END):
                step = as_step(step)
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


def points(flat: list[Any]) -> Iterable[tuple[Any, Any, Any, Any]]:
    """(time, step, name, value) of each point in a buffer slice."""
    return zip(flat[0::WIDTH], flat[1::WIDTH], flat[2::WIDTH], flat[3::WIDTH], strict=True)


def flattened(flat: list[Any]) -> list[Any]:
    """The buffer with each several-metrics point as single-metric ones; a dict's ``"step"`` key is the step
    of its other metrics, never a metric row of its own (the line path skips it too)."""
    out: list[Any] = []
    add = out.extend
    for t, step, key, value in points(flat):
        if key is not SEVERAL:
            add((t, step, key, value))
            continue
        if step is None:
            step = value.get("step")
        for name, raw in value.items():
            if name != "step":
                add((t, step, name, raw))
    return out


def last_step(flat: list[Any]) -> tuple[float, int] | None:
    """(time, step) of the last point that names a valid step: the batch's step row."""
    for i in range(len(flat) - WIDTH, -1, -WIDTH):
        t, step, key, value = flat[i : i + WIDTH]
        if step is None:
            if key is SEVERAL:
                step = value.get("step")
            elif key == "step":
                step = value
            if step is None:
                continue
        if not (type(step) is int and 0 <= step < STEP_END):
            step = as_step(step)
        if step is not None:
            return t, step
    return None


def as_step(step: Any) -> int | None:
    """The step as the store keeps it (a 64-bit integer >= 0), or None when it is not one."""
    if step is None:
        return None
    try:
        value = int(step)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if 0 <= value < STEP_END and (not isinstance(step, float) or math.isfinite(step)) else None
