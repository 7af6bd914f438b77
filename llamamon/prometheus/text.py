"""The Prometheus text exposition format 0.0.4: render metric families, and parse scraped text.

Pure: strings in, values out; no files, clocks or catalog (``snapshot.py`` decides names and units).
``render`` is strict, so llamamon never writes a file node_exporter rejects; ``parse`` is tolerant of
what real endpoints (vLLM, TGI, prometheus_client) serve, including OpenMetrics' ``# EOF``,
``_created`` samples, exemplars and float-second timestamps, and raises only ``ExpositionError``
(a ``ValueError``) with the line number on anything it cannot read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from llamamon.samples import Labels

TYPES: tuple[str, ...] = ("counter", "gauge", "histogram", "summary", "untyped")

# OpenMetrics types the parser accepts besides the 0.0.4 ones ("unknown" is OpenMetrics' untyped).
_OPENMETRICS_TYPES = {"unknown": "untyped", "info": "info", "stateset": "stateset", "gaugehistogram": "gaugehistogram"}

# Which sample-name suffixes belong to a family of each type (the family name is the bare name).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "counter": ("_total", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "info": ("_info",),
}

METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class ExpositionError(ValueError):
    """Text that is not valid exposition format; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True, slots=True)
class Point:
    """One sample line: full name (with any ``_bucket``/``_sum`` suffix), labels, value, timestamp.

    ``timestamp`` is Unix seconds (the 0.0.4 milliseconds divided by 1000), ``None`` when absent.
    """

    name: str
    labels: Labels
    value: float
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family: every line that shares one HELP/TYPE, kept together as one group."""

    name: str
    type: str = "untyped"
    help: str | None = None
    points: tuple[Point, ...] = ()

    def labels_of(self, **match: str) -> list[Point]:
        """Points whose labels include all of ``match`` (a convenience for tests and the scraper)."""
        return [p for p in self.points if all(dict(p.labels).get(k) == v for k, v in match.items())]


# ---------------------------------------------------------------------------------------------------------
# Rendering


def format_value(value: float) -> str:
    """Go float syntax: ``NaN``, ``+Inf``, ``-Inf``, else the shortest repr that round-trips."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _render_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


def render(families: Iterable[Family]) -> str:
    """Exposition text for ``families``: HELP and TYPE first, each family one uninterrupted group.

    Raises ``ValueError`` for anything a reader would reject (bad names, a family given twice, a
    sample that does not belong to its family), so a broken file is never written.
    """
    out: list[str] = []
    seen: set[str] = set()
    for family in families:
        if not METRIC_NAME_RE.match(family.name):
            raise ValueError(f"invalid metric name {family.name!r}")
        if family.name in seen:
            raise ValueError(f"metric family {family.name!r} given twice")
        if family.type not in TYPES:
            raise ValueError(f"invalid metric type {family.type!r} for {family.name}")
        seen.add(family.name)
        if family.help is not None:
            out.append(f"# HELP {family.name} {escape_help(family.help)}")
        out.append(f"# TYPE {family.name} {family.type}")
        allowed = (family.name, *(family.name + s for s in _SUFFIXES.get(family.type, ()) if s != "_created"))
        for point in family.points:
            if point.name not in allowed:
                raise ValueError(f"sample {point.name!r} does not belong to {family.type} {family.name!r}")
            for key, _ in point.labels:
                if not LABEL_NAME_RE.match(key) or key.startswith("__"):
                    raise ValueError(f"invalid label name {key!r} on {point.name}")
            line = point.name + _render_labels(point.labels) + " " + format_value(point.value)
            if point.timestamp is not None:
                line += f" {round(point.timestamp * 1000)}"
            out.append(line)
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------------------------------------------
# Parsing

_NAME_AT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_AT = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_QUOTED_AT = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SPACE_AT = re.compile(r"[ \t]*")
_TOKEN_AT = re.compile(r"[^ \t]+")
# Go's strconv.ParseFloat, decimal form (Python's float() also takes "1_0" and non-ASCII digits).
_FLOAT_RE = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf(?:inity)?|nan))\Z")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
# The shape nearly every line has, matched in one go (the general path below handles the rest).
_FAST_SAMPLE = re.compile(
    rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{((?:{_PAIR}(?:,{_PAIR})*,?)?)\}})?[ \t]+([^ \t#]+)(?:[ \t]+([+-]?\d+))?[ \t]*\Z"
)
_FAST_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Leading blanks after the name are separators; the rest of the line (trailing blanks too) is the text.
_META = re.compile(r"#[ \t]+(HELP|TYPE)[ \t]+([^ \t]+)(?:[ \t]+(.*))?\Z")
_ESCAPE = re.compile(r"\\(.)")
_LABEL_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}


def _unescape(text: str, table: dict[str, str]) -> str:
    # Unknown escapes stay as written, as Prometheus' own parser leaves them.
    return _ESCAPE.sub(lambda m: table.get(m[1], m[0]), text) if "\\" in text else text


def parse_float(token: str) -> float:
    if not _FLOAT_RE.match(token):
        raise ValueError(f"invalid number {token!r}")
    return float(token)


@dataclass(slots=True)
class _Building:
    name: str
    type: str = "untyped"
    help: str | None = None
    typed: bool = False
    points: list[Point] = field(default_factory=list)


class _Parser:
    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.families: dict[str, _Building] = {}

    def family(self, name: str) -> _Building:
        found = self.families.get(name)
        if found is None:
            found = self.families[name] = _Building(name)
        return found

    def owner(self, sample_name: str) -> _Building:
        if sample_name in self.families:
            return self.families[sample_name]
        for base_type, suffixes in _SUFFIXES.items():
            for suffix in suffixes:
                if sample_name.endswith(suffix):
                    base = self.families.get(sample_name[: -len(suffix)])
                    if base is not None and base.type == base_type:
                        return base
        return self.family(sample_name)

    def comment(self, lineno: int, line: str) -> None:
        meta = _META.match(line)
        if meta is None:
            return  # other comments (and OpenMetrics' # UNIT) carry nothing llamamon uses
        keyword, name, rest = meta[1], meta[2], meta[3] or ""
        if not METRIC_NAME_RE.match(name):
            raise ExpositionError(lineno, f"# {keyword} needs a valid metric name (got {name!r})")
        fam = self.family(name)
        if keyword == "HELP":
            table = {**_HELP_ESCAPES, '"': '"'} if self.openmetrics else _HELP_ESCAPES
            fam.help = _unescape(rest, table)
            return
        kind = rest.strip(" \t").lower()
        kind = _OPENMETRICS_TYPES.get(kind, kind)
        if kind not in TYPES and kind not in _OPENMETRICS_TYPES.values():
            raise ExpositionError(lineno, f"unknown metric type {rest.strip()!r} for {name}")
        if fam.typed and fam.type != kind:
            raise ExpositionError(lineno, f"second # TYPE for {name} ({fam.type}, then {kind})")
        fam.type, fam.typed = kind, True

    def sample(self, lineno: int, line: str) -> None:
        fast = _FAST_SAMPLE.match(line)
        if fast is not None and (fast[4] is None or not self.openmetrics):
            self.fast_sample(lineno, fast)
            return
        name, labels, pos = _parse_series(lineno, line)
        start = pos
        pos = _SPACE_AT.match(line, pos).end()
        token = _TOKEN_AT.match(line, pos)
        if token is None or pos == start:
            raise ExpositionError(lineno, f"missing value after {name}")
        try:
            value = parse_float(token[0])
        except ValueError as exc:
            raise ExpositionError(lineno, f"{exc} for {name}") from None
        timestamp, pos = self.timestamp(lineno, line, _SPACE_AT.match(line, token.end()).end(), name)
        if pos < len(line) and not line.startswith("#", pos):  # "# {...} 1.0" is an OpenMetrics exemplar
            raise ExpositionError(lineno, f"unexpected text after the value of {name}: {line[pos:]!r}")
        self.owner(name).points.append(Point(name, labels, value, timestamp))

    def fast_sample(self, lineno: int, match: re.Match[str]) -> None:
        """The common shape (classic names, well-formed labels, no exemplar) in one regex; same results."""
        name, label_text, value_text, stamp = match.groups()
        pairs: dict[str, str] = {}
        if label_text:
            for key, raw in _FAST_LABEL.findall(label_text):
                if key in pairs:
                    raise ExpositionError(lineno, f"label {key!r} given twice")
                pairs[key] = _unescape(raw, _LABEL_ESCAPES)
        try:
            value = parse_float(value_text)
        except ValueError as exc:
            raise ExpositionError(lineno, f"{exc} for {name}") from None
        self.owner(name).points.append(
            Point(name, tuple(sorted(pairs.items())), value, None if stamp is None else int(stamp) / 1000.0)
        )

    def timestamp(self, lineno: int, line: str, pos: int, name: str) -> tuple[float | None, int]:
        token = _TOKEN_AT.match(line, pos)
        if token is None or token[0].startswith("#"):
            return None, pos
        text = token[0]
        end = _SPACE_AT.match(line, token.end()).end()
        if _INT_RE.match(text) and not self.openmetrics:
            return int(text) / 1000.0, end
        if self.openmetrics:
            try:
                return parse_float(text), end
            except ValueError:
                pass
        raise ExpositionError(lineno, f"invalid timestamp {text!r} for {name}")


def _parse_series(lineno: int, line: str) -> tuple[str, Labels, int]:
    """Metric name and labels at the start of a sample line; the position just after them."""
    pos = _SPACE_AT.match(line).end()
    match = _NAME_AT.match(line, pos)
    name = match[0] if match else None
    pos = match.end() if match else pos
    pairs: dict[str, str] = {}
    brace = _SPACE_AT.match(line, pos).end()
    if line.startswith("{", brace):  # a value never starts with "{", so "x {a="1"} 2" is unambiguous
        pos = _SPACE_AT.match(line, brace + 1).end()
        while not line.startswith("}", pos):
            key_match = _LABEL_NAME_AT.match(line, pos) or _QUOTED_AT.match(line, pos)
            if key_match is None:
                raise ExpositionError(lineno, f"expected a label name at column {pos + 1}")
            quoted = key_match[0].startswith('"')
            key = _unescape(key_match[1], _LABEL_ESCAPES) if quoted else key_match[0]
            pos = _SPACE_AT.match(line, key_match.end()).end()
            if line.startswith("=", pos):
                pos = _SPACE_AT.match(line, pos + 1).end()
                value_match = _QUOTED_AT.match(line, pos)
                if value_match is None:
                    raise ExpositionError(lineno, f"expected a quoted label value for {key!r} at column {pos + 1}")
                if key in pairs:
                    raise ExpositionError(lineno, f"label {key!r} given twice")
                pairs[key] = _unescape(value_match[1], _LABEL_ESCAPES)
                pos = _SPACE_AT.match(line, value_match.end()).end()
            elif quoted and name is None:
                name = key  # Prometheus 3 UTF-8 syntax: {"metric.name", label="v"}
            else:
                raise ExpositionError(lineno, f"expected '=' after label {key!r} at column {pos + 1}")
            if line.startswith(",", pos):
                pos = _SPACE_AT.match(line, pos + 1).end()
            elif not line.startswith("}", pos):
                raise ExpositionError(lineno, f"expected ',' or '}}' at column {pos + 1}")
        pos += 1
    if not name:
        raise ExpositionError(lineno, f"expected a metric name at column {pos + 1}")
    return name, tuple(sorted(pairs.items())), pos


def parse(text: str) -> list[Family]:
    """Families in ``text`` (0.0.4, or OpenMetrics when it ends with ``# EOF``), in order of appearance.

    Histogram/summary/counter samples (``_bucket``, ``_sum``, ``_count``, ``_total``, ``_created``)
    are grouped under the family their ``# TYPE`` names; samples without one each form an untyped family.
    """
    # Split on "\n" only: str.splitlines() would also split on \r, \x1c or \u2028 inside label values.
    lines = text.split("\n")
    openmetrics = any(line.rstrip("\r \t") == "# EOF" for line in lines)
    parser = _Parser(openmetrics)
    ended = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if not line.strip(" \t"):
            continue
        if ended:
            raise ExpositionError(lineno, "text after # EOF")
        if line.lstrip(" \t").startswith("#"):
            if line.strip(" \t") == "# EOF":
                ended = True
            else:
                parser.comment(lineno, line.lstrip(" \t"))
            continue
        parser.sample(lineno, line)
    return [Family(b.name, b.type, b.help, tuple(b.points)) for b in parser.families.values()]
