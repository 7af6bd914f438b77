"""The global step of the Hugging Face Trainer's printed log lines, read off its progress bar.

The Trainer prints each log as a dict without its step (``{'loss': '4.163', ..., 'epoch': '1.25'}``);
``epoch`` cannot give it back (printed to 4 digits, and counted in batches, not optimizer steps). Its
progress bar can: the dict is written with ``tqdm.write``, which clears the bar (a line of spaces on
stderr), writes the dict to stdout and redraws the bar, whose count ``N/M`` is the global step of that log
(the Trainer updates the bar in ``on_step_end``, before ``on_log``). So the k-th redraw after a clear is the
step of the k-th printed dict, whatever order the two pipes deliver them in (stdout is block-buffered in a
pipe, so its dicts often arrive long after the bar moved on).

Only lines that look like the Trainer's (no step, an ``epoch``) are held for their step. The two pipes are
read by two threads, so a dict may be read before the redraw written just after it (or before the bar's
first ``0/M``): such lines wait at most ``GRACE`` seconds (checked on the next output of either stream, and
at the end), then go on stepless. That is what they do with no bar at all (``disable_tqdm``), or in a job of
one's own that ``print``s such dicts beside a tqdm bar (no clear, so no redraw to pair with). Known limit:
other text written with ``tqdm.write`` during training shifts the pairing (its redraw has no dict).
"""

from __future__ import annotations

import collections
import re

from llamamon.samples import Sample

# tqdm's default bar: "... 10/25 [00:00<00:00, 145.49it/s]"; the first one drawn is the training bar.
_BAR = re.compile(r"(?<![\d/])(\d+)/(\d+) \[")
GRACE = 2.0  # seconds a dict waits for a first progress bar before it goes on without a step


def held_for_step(samples: list[Sample]) -> bool:
    """A Trainer log line: parsed samples without a step, one of them the epoch it always carries."""
    return bool(samples) and all(s.step is None for s in samples) and any(s.metric == "epoch" for s in samples)


class TrainerSteps:
    """Pairs the Trainer's printed dicts (either stream) with the bar redraws after each clear, in order."""

    def __init__(self) -> None:
        self.total: int | None = None  # the training bar's M, once its first "0/M" was drawn
        self._cleared = False
        self._steps: collections.deque[int] = collections.deque()  # redraw counts not yet paired
        self._lines: collections.deque[list[Sample]] = collections.deque()  # dicts waiting for theirs

    def expire(self, now: float) -> list[Sample]:
        """Held dicts, stepless, once the oldest waited ``GRACE`` for its redraw: none is coming."""
        if not self._lines or now - (self._lines[0][0].time or now) < GRACE:
            return []
        return self.release()

    def observe(self, line: str) -> list[Sample]:
        """A line of output that is not a metrics line; the held dicts it gives a step to."""
        if line.strip(" ") == "":
            self._cleared = bool(line) and self.total is not None  # tqdm.write's clear: the bar's width in spaces
            return []
        bar = _BAR.search(line) if "/" in line else None  # most output has no bar: no regex over it
        if bar is None or "\x1b" in line:
            return []  # other output, or the evaluation bar (drawn one line down, so with cursor moves)
        count, total = int(bar.group(1)), int(bar.group(2))
        if count == 0:  # a bar starts (a second trainer.train() too, or an evaluate() before it): pair anew
            self.total, self._cleared = total, False
            self._steps.clear()
            return self._pair()
        if total != self.total:
            return []
        if self._cleared:
            self._steps.append(count)
        self._cleared = False
        return self._pair()

    def hold(self, samples: list[Sample]) -> list[Sample]:
        """A Trainer dict line's (stamped) samples: held until its redraw is seen, then returned with its step."""
        self._lines.append(samples)
        return self._pair()

    def release(self) -> list[Sample]:
        """At the end of the output: dicts whose redraw never came go on without a step."""
        rest = [s for line in self._lines for s in line]
        self._lines.clear()
        return rest

    def _pair(self) -> list[Sample]:
        out: list[Sample] = []
        while self._lines and self._steps:
            step = self._steps.popleft()
            out.extend(Sample(s.metric, s.value, s.labels, s.time, step) for s in self._lines.popleft())
        return out
