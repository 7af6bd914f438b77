"""Zero-code training metrics: recognise metric lines in a job's stdout/stderr.

``parse_line`` is pure (text in, samples out) and never evaluates anything: JSON objects and the
Python-dict lines the Hugging Face Trainer prints are read by a tiny literal scanner that only knows
flat ``{key: number | string | bool | None}`` objects; anything else is simply output. ``LineAssembler``
turns arbitrary byte chunks into lines, treating ``\\r`` (progress-bar redraws) as a line end and
skipping over-long lines cheaply. Nothing here changes the bytes the job writes: the runtime passes a
copy of each chunk in and forwards the original untouched.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence

from llamamon.catalog import BY_NAME, canonical
from llamamon.collectors.trainer_steps import TrainerSteps, held_for_step
from llamamon.samples import NO_LABELS, Labels, Sample, make_labels

MAX_LINE = 1 << 20  # longer lines are skipped without being decoded or scanned

# A number as JSON, Python's repr and common log formats write it (also nan/inf, which Python prints).
_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[nN]a[nN]|[iI]nf(?:inity)?|Infinity)"
_NUMBER_RE = re.compile(rf"\s*({_NUMBER})\s*\Z")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>"""
    + _NUMBER
    + r""")
      | (?P<const>true|false|null|True|False|None)
      | (?P<punct>[{}:,])
    )""",
    re.VERBOSE,
)
# torchrun/accelerate prefix each worker's output: "[rank3]: {...}", "[default0]:{...}"; on a terminal a
# progress bar's cursor moves may come first (tqdm.write of an evaluation dict under two bars: "\x1b[A{...}").
_PREFIX = re.compile(r"(?:\s|\x1b\[[0-9;]*[A-Za-z])*(?:\[(?:(?:rank|default)(?P<rank>\d+)|[^\]{]*)\]:?\s*)?(?=\{)")
# Keys that make a dict line a metrics line even when no catalog name is present.
_METRIC_HINTS = ("step", "epoch", "global_step")
_HF_PREFIXES = ("eval_", "train_", "test_")

Value = float | str | bool | None


class LineAssembler:
    """Bytes in arbitrary chunks -> complete lines (``\\n`` or ``\\r`` ends one); huge lines are dropped.

    The pending tail never grows past ``max_line``: once it does, the assembler discards it and skips
    everything up to the next line end, so a 1 GB line without a newline costs one scan per chunk.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._tail = b""
        self._skipping = False
        self.skipped = 0  # lines dropped for length, for a diagnostic

    def feed(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        data = chunk.replace(b"\r", b"\n")
        cut = data.rfind(b"\n")
        if cut < 0:
            self._extend_tail(data)
            return []
        head, rest = data[:cut], data[cut + 1 :]
        pieces = head.split(b"\n")
        first = pieces[0]
        if self._skipping:
            pieces[0] = b""
            self._skipping = False
        elif self._tail:
            pieces[0] = self._tail + first if len(self._tail) + len(first) <= self.max_line else b""
            if not pieces[0]:
                self.skipped += 1
        self._tail = b""
        self._extend_tail(rest)
        lines = []
        for piece in pieces:
            if not piece:
                continue
            if len(piece) > self.max_line:
                self.skipped += 1
                continue
            lines.append(piece.decode("utf-8", "replace"))
        return lines

    def flush(self) -> list[str]:
        """The last line when the stream ends without a newline."""
        tail, self._tail = self._tail, b""
        skipping, self._skipping = self._skipping, False
        if skipping or not tail:
            return []
        return [tail.decode("utf-8", "replace")]

    def _extend_tail(self, data: bytes) -> None:
        if self._skipping or not data:
            return
        if len(self._tail) + len(data) > self.max_line:
            self._tail = b""
            self._skipping = True
            self.skipped += 1
            return
        self._tail += data


def _scan_object(text: str, pos: int) -> tuple[dict[str, Value], int] | None:
    """A flat ``{key: scalar, ...}`` object starting at ``text[pos] == "{"``; None if it is anything else."""
    tokens = _TOKEN
    end = len(text)
    m = tokens.match(text, pos)
    if m is None or m.group("punct") != "{":
        return None
    pos = m.end()
    out: dict[str, Value] = {}
    m = tokens.match(text, pos)
    if m is not None and m.group("punct") == "}":
        return out, m.end()
    while pos < end:
        key = tokens.match(text, pos)
        if key is None or key.group("str") is None:
            return None
        colon = tokens.match(text, key.end())
        if colon is None or colon.group("punct") != ":":
            return None
        value = tokens.match(text, colon.end())
        if value is None or value.group("punct") is not None:
            return None  # nested objects/lists: not a metrics line
        sep = tokens.match(text, value.end())
        if sep is None or sep.group("punct") not in (",", "}"):
            return None
        out[_unquote(key.group("str"))] = _scalar(value)
        pos = sep.end()
        if sep.group("punct") == "}":
            return out, pos
        after = tokens.match(text, pos)
        if after is not None and after.group("punct") == "}":  # trailing comma
            return out, after.end()
    return None


def _unquote(token: str) -> str:
    body = token[1:-1]
    if "\\" not in body:
        return body
    if token[0] == '"':
        try:
            return json.loads(token)
        except ValueError:
            return body
    return re.sub(r"\\(.)", r"\1", body)


def _scalar(m: re.Match[str]) -> Value:
    if m.group("str") is not None:
        return _unquote(m.group("str"))
    if m.group("num") is not None:
        return _to_float(m.group("num"))
    return {"true": True, "True": True, "false": False, "False": False}.get(m.group("const"))


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "Infinity" spelled in a way float() does not take
        return math.inf if not text.startswith("-") else -math.inf


def _number(value: Value) -> float | None:
    """A metric value: numbers, and numeric strings (some Trainer versions print ``'loss': '0.51'``)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return value
    m = _NUMBER_RE.match(value)
    return _to_float(m.group(1)) if m else None


def _looks_like_metrics(keys: Iterable[str], aliases: Mapping[str, str] | None) -> bool:
    for key in keys:
        if key in _METRIC_HINTS or key.startswith(_HF_PREFIXES):
            return True
        name = canonical(key, dict(aliases) if aliases else None)
        metric = BY_NAME.get(name)
        if metric is not None and metric.group in ("training", "inference"):
            return True
    return False


def _step_of(value: Value) -> int | None:
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0 or number != int(number) or number >= 2**63:
        return None
    return int(number)


def samples_from_mapping(
    data: Mapping[str, Value], aliases: Mapping[str, str] | None = None, labels: Labels = NO_LABELS
) -> list[Sample]:
    """Numeric entries of a flat metrics dict as samples; ``step`` becomes the samples' step."""
    alias_map = dict(aliases) if aliases else None
    step = _step_of(data.get("step", data.get("global_step")))
    samples = []
    for key, raw in data.items():
        if key in ("step", "global_step") or not key:
            continue
        value = _number(raw)
        if value is None:
            continue
        samples.append(Sample(canonical(key, alias_map), value, labels, None, step))
    return samples


def _parse_object(segment: str, aliases: Mapping[str, str] | None) -> list[Sample]:
    prefix = _PREFIX.match(segment)
    if prefix is None:
        return []
    start = prefix.end()
    scanned = _scan_object(segment, start)
    if scanned is None:
        return []
    data, end = scanned
    if segment[end:].strip() or not data or not _looks_like_metrics(data, aliases):
        return []
    rank = prefix.group("rank")
    labels = make_labels(rank=rank) if rank is not None else NO_LABELS
    return samples_from_mapping(data, aliases, labels)


def _parse_patterns(
    segment: str, patterns: Sequence[re.Pattern[str]], aliases: Mapping[str, str] | None
) -> list[Sample]:
    samples: list[Sample] = []
    for pattern in patterns:
        m = pattern.search(segment)
        if m is None:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        samples.extend(samples_from_mapping(groups, aliases))
    return samples


def parse_line(
    text: str,
    patterns: Sequence[re.Pattern[str]] = (),
    aliases: Mapping[str, str] | None = None,
) -> list[Sample]:
    """Metric samples in one line of output; ``[]`` for ordinary output. Never raises, never evaluates.

    Recognised: a JSON object or a Python dict literal of numbers (the HF Trainer's
    ``{'loss': 0.51, 'learning_rate': 4.8e-05, 'epoch': 0.12}``), optionally after a torchrun
    ``[rankN]:`` prefix, that names at least one training/inference metric or a step/epoch; and every
    configured regex with named groups (``step`` is the step, every other group a metric). Names pass
    through the alias table. ``\\r`` splits a line into the redraws a terminal would show.
    """
    if len(text) > MAX_LINE:
        return []
    samples: list[Sample] = []
    for segment in text.split("\r") if "\r" in text else (text,):
        if "{" in segment:
            samples.extend(_parse_object(segment, aliases))
        if patterns:
            samples.extend(_parse_patterns(segment, patterns, aliases))
    return samples


class OutputParser:
    """Feed it the job's output chunks; get stamped samples for every metric line seen so far.

    One instance per stream (stdout and stderr assemble their lines separately); ``steps``, shared by
    both, gives the Hugging Face Trainer's printed dicts their step from its progress bar (see
    :mod:`llamamon.collectors.trainer_steps`); its ``release()`` after the last ``close()`` lets go of those
    left without one.
    """

    def __init__(
        self,
        patterns: Sequence[re.Pattern[str]] = (),
        aliases: Mapping[str, str] | None = None,
        max_line: int = MAX_LINE,
        steps: TrainerSteps | None = None,
    ) -> None:
        self.patterns = tuple(patterns)
        self.aliases = dict(aliases) if aliases else None
        self.assembler = LineAssembler(max_line)
        self.steps = steps
        self.lines = 0
        self.metric_lines = 0

    def feed(self, chunk: bytes, now: float | None = None) -> list[Sample]:
        return self._parse(self.assembler.feed(chunk), now)

    def close(self, now: float | None = None) -> list[Sample]:
        return self._parse(self.assembler.flush(), now)

    def _parse(self, lines: list[str], now: float | None) -> list[Sample]:
        out: list[Sample] = []
        stamp: float | None = now
        steps = self.steps
        if steps is not None and lines:
            out.extend(steps.expire(time.time() if now is None else now))
        for line in lines:
            self.lines += 1
            found = parse_line(line, self.patterns, self.aliases) if self.patterns or "{" in line else []
            if not found:
                if steps is not None:
                    out.extend(steps.observe(line))
                continue
            self.metric_lines += 1
            if stamp is None:
                stamp = time.time()
            found = [Sample(s.metric, s.value, s.labels, stamp, s.step) for s in found]
            out.extend(steps.hold(found) if steps is not None and held_for_step(found) else found)
        return out
