"""The latest state of one run as Prometheus families: catalog names, base units, histograms, run gauges.

A ``RunSnapshot`` is fed the same samples the store gets, in time order; it keeps the last value of
every gauge and counter series, accumulates histogram observations into cumulative buckets (a scraped
histogram's stored parts, ``inference_latency_bucket{le}``/``_sum``/``_count``, are its real buckets and
are written as they are: ``histogram_quantile`` on the export gives what the server's own buckets give), and
renders all of it with the run's constant labels (host, run). Names come from the catalog
(``Metric.prometheus_name``), values are converted to base units with ``UNITS[unit].to_base`` through
``units.scale``; a metric the job logs that the catalog does not know gets a derived name that passes
``promtool check metrics`` and a generic HELP. Pure: no files, no clock.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from llamamon import catalog, units
from llamamon.prometheus.text import Family, Point, format_value, render
from llamamon.samples import Labels, Row, Sample, make_labels
from llamamon.severity import SEVERITIES

# Seconds; spans a fast cached completion to a long generation (inference_latency, time_to_first_token), and
# a token's few milliseconds (inter_token_latency).
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Labels that would make one series per step or per request: dropped, the series merge (gauges keep the
# last value, histograms count every observation).
HIGH_CARDINALITY_LABELS = frozenset(
    {"step", "epoch", "request_id", "req_id", "request", "trace_id", "span_id", "uuid", "time", "timestamp"}
)
# Label names a gauge must not carry (promtool: "non-histogram metrics should not have "le" label").
_RESERVED_LABELS = frozenset({"le", "quantile"})

# Written once per run with the run's constant labels (host, run; alerts_firing adds severity), never a sample's.
RUN_METRICS = ("run_active", "last_sample", "step", "alerts_firing")


@dataclass(slots=True)
class Histogram:
    """Observation counts per bucket (not cumulative; the last is the +Inf overflow), sum and count."""

    bounds: tuple[float, ...] = DEFAULT_BUCKETS
    counts: list[float] = field(default_factory=list)
    sum: float = 0.0
    count: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)) or not all(math.isfinite(b) for b in self.bounds):
            raise ValueError(f"histogram bounds must be finite and strictly increasing (got {self.bounds})")
        if not self.counts:
            self.counts = [0.0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one value (base units); NaN is ignored so one bad value does not poison the sum forever."""
        if math.isnan(value):
            return
        self.counts[bisect_left(self.bounds, value)] += 1  # le semantics: value <= bound
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, float]]:
        """(upper bound, observations <= bound) in increasing order, ending with (+Inf, count)."""
        out, running = [], 0.0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    @classmethod
    def from_cumulative(cls, buckets: Mapping[float, float], sum: float, count: float | None = None) -> Histogram:
        """A histogram from pre-bucketed cumulative counts ({upper bound: count}), as a server exposes them."""
        finite = sorted(b for b in buckets if not math.isinf(b))
        total = buckets.get(math.inf, max(buckets.values(), default=0.0)) if count is None else count
        counts, previous = [], 0.0
        for bound in finite:
            counts.append(buckets[bound] - previous)
            previous = buckets[bound]
        counts.append(total - previous)
        if any(n < 0 for n in counts):
            raise ValueError("histogram bucket counts must not decrease")
        return cls(tuple(finite), counts, float(sum), float(total))


def label_name(name: str) -> str:
    """A job's label name as a valid, snake_case Prometheus label name."""
    return catalog.sanitize_name(name)


# promtool's lint rules on metric names, and how a derived name avoids each one.
_ABBREVIATIONS = {
    "s": "seconds",
    "sec": "seconds",
    "ms": "msec",
    "us": "usec",
    "ns": "nsec",
    "b": "byte",
    "kb": "kbyte",
    "mb": "mbyte",
    "gb": "gbyte",
    "tb": "tbyte",
    "pb": "pbyte",
    "m": "min",
    "h": "hour",
    "d": "day",
}
_TYPE_WORDS = {"counter": "counters", "gauge": "gauges", "histogram": "histograms", "summary": "summaries"}
_RESERVED_SUFFIXES = {"total": "totals", "count": "counts", "sum": "sums", "bucket": "buckets"}
_BASE_UNITS = {"amperes", "bytes", "celsius", "grams", "joules", "kelvin", "meters", "metres", "seconds", "volts"}
_NON_BASE_UNITS = {"minutes", "hours", "days", "weeks", "kelvins", "fahrenheit", "rankine", "inches", "yards"}
_NON_BASE_UNITS |= {"miles", "bits", "calories", "pounds", "ounces"}
_UNIT_PREFIXES = ("pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi", "mega")
_UNIT_PREFIXES += ("mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi")


def _non_base_unit(token: str) -> bool:
    if token in _NON_BASE_UNITS:
        return True
    return any(token == p + u for p in _UNIT_PREFIXES for u in (*_BASE_UNITS, *_NON_BASE_UNITS))


def derived_name(name: str) -> str:
    """``llamamon_<snake name>`` for a metric outside the catalog, rewritten to pass promtool's lint.

    Values are not converted (llamamon does not know the job's units), so unit-like words are only
    respelled: ``step_time_ms`` -> ``llamamon_step_time_msec``, ``loss_histogram`` ->
    ``llamamon_loss_histograms``, ``reward_sum`` -> ``llamamon_reward_sums``. A name ending in ``_total``
    keeps it and is exported as a counter (``derived_kind``), as a scraped server's counters are
    (``vllm:generation_tokens_total`` -> ``llamamon_vllm_generation_tokens_total``).
    """
    # A leading letter keeps sanitize_name from adding its "m_" digit guard: after "llamamon_" none is needed.
    clean = catalog.sanitize_name("x" + name)[1:]
    tokens = [t for t in clean.split("_") if t] or ["unnamed"]
    # The name's own end, before a counter's _total: it must not read as a histogram's part either.
    end = len(tokens) - 1
    while end > 0 and tokens[end] == "total":
        end -= 1
    out = []
    for i, token in enumerate(tokens):
        if token in _ABBREVIATIONS:
            token = _ABBREVIATIONS[token]
        elif token in _TYPE_WORDS:
            token = _TYPE_WORDS[token]
        elif _non_base_unit(token):
            token = token[:-1] if token.endswith("s") else token + "s"
        elif i == end and token in _RESERVED_SUFFIXES and token != "total":
            token = _RESERVED_SUFFIXES[token]
        out.append(token)
    while out[-2:] == ["total", "total"]:  # a counter ends in one _total
        out.pop()
    return "llamamon_" + "_".join(out)


def derived_kind(name: str) -> str:
    """How a metric outside the catalog is typed: a ``_total`` name is a counter (Prometheus' convention)."""
    return "counter" if derived_name(name).endswith("_total") else "gauge"


def family_name(metric: str) -> str:
    """The family a metric (catalog name, alias or the job's own name) is exported as.

    For rule exporters: a job metric whose derived name collides with another gets a ``_2`` suffix in
    a snapshot, which this cannot know; such collisions need two names that sanitise alike.
    """
    known = catalog.get(metric)
    return known.prometheus_name if known is not None else derived_name(metric)


@dataclass(slots=True)
class _Series:
    metric: str  # catalog name, or the job's own name
    labels: Labels
    value: float = math.nan
    histogram: Histogram | None = None
    kept: _Kept | None = None  # a scraped histogram's buckets, as stored


@dataclass(slots=True)
class _Kept:
    """The latest stored parts of a scraped histogram (base units, cumulative, counted over the run)."""

    buckets: dict[float, tuple[str, float]] = field(default_factory=dict)  # bound -> (le as stored, count)
    sum: float = 0.0
    count: float = 0.0


class RunSnapshot:
    """Latest values of one run (or one ``watch``), ready to render as exposition text.

    ``labels`` are put on every series (``{"host": ..., "run": ...}``); a sample's own label of the same
    name is kept as ``exported_<name>``, as Prometheus does on a target-label clash.
    """

    def __init__(self, labels: Mapping[str, str] | None = None, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.constant: Labels = make_labels(dict(labels or {}))
        self.buckets = tuple(buckets)
        Histogram(self.buckets)  # validate now, not at the first observation
        self.active = True
        self.step: float | None = None
        self.last_sample: float | None = None
        self.alerts_firing: dict[str, int] | None = None
        self._series: dict[tuple[str, Labels], _Series] = {}
        # Derived names are fixed on first sight so a family never changes name between writes.
        self._names: dict[str, str] = {}
        self._taken: set[str] = {m.prometheus_name for m in catalog.METRICS}

    # -- input ------------------------------------------------------------------------------------------

    def add(self, samples: Iterable[Sample | Row], default_time: float | None = None) -> None:
        """Take samples in time order: gauges/counters keep the last value, histogram metrics observe each.

        Stored ``Row``s work as well as ``Sample``s (the recorder hands over what it appends to the
        store). ``default_time`` stands in for a sample's ``time`` of ``None`` (the tick's time).
        """
        for sample in samples:
            metric = catalog.get(sample.metric)
            part = catalog.histogram_part(sample.metric) if metric is None else None
            if part is not None:
                self._keep(part[0].name, part[1], sample.labels, float(sample.value))
            elif metric is not None and metric.kind == "histogram":
                series = self._series_for(metric.name, sample.labels)
                if series.histogram is None:
                    series.histogram = Histogram(self.buckets)
                series.histogram.observe(units.scale(float(sample.value), catalog.UNITS[metric.unit].to_base))
            else:
                series = self._series_for(metric.name if metric is not None else sample.metric, sample.labels)
                series.value = float(sample.value)
            if sample.step is not None:
                self.step = float(sample.step)
            when = sample.time if sample.time is not None else default_time
            if when is not None and (self.last_sample is None or when > self.last_sample):
                self.last_sample = float(when)

    def _keep(self, metric: str, part: str, labels: Labels, value: float) -> None:
        le = dict(labels).get("le")
        series = self._series_for(metric, tuple((k, v) for k, v in labels if k != "le"))
        kept = series.kept = series.kept or _Kept()
        if part == "bucket" and le is not None:
            try:
                kept.buckets[float(le)] = (le, value)
            except ValueError:
                return
        elif part == "sum":
            kept.sum = value
        elif part == "count":
            kept.count = value

    def set_histogram(self, metric: str, labels: Labels, histogram: Histogram) -> None:
        """Replace a series' histogram with pre-bucketed counts (bounds in base units, e.g. seconds)."""
        known = catalog.get(metric)
        self._series_for(known.name if known else metric, labels).histogram = histogram

    def _series_for(self, metric: str, labels: Labels) -> _Series:
        clean = self.clean_labels(labels)
        series = self._series.get((metric, clean))
        if series is None:
            series = self._series[(metric, clean)] = _Series(metric, clean)
            if catalog.get(metric) is None and metric not in self._names:
                self._names[metric] = self._unique(derived_name(metric))
        return series

    def _unique(self, name: str) -> str:
        stem, total = (name[: -len("_total")], "_total") if name.endswith("_total") else (name, "")
        candidate, n = name, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{stem}_{n}{total}"  # a counter keeps _total last
        self._taken.add(candidate)
        return candidate

    def clean_labels(self, labels: Labels) -> Labels:
        """The constant labels plus a sample's own, sanitised, de-duplicated, low-cardinality."""
        out = dict(self.constant)
        constant_names = set(out)
        for key, value in labels:
            name = label_name(key)
            if value == "" or key in HIGH_CARDINALITY_LABELS or name in HIGH_CARDINALITY_LABELS:
                continue
            if name in _RESERVED_LABELS or name in constant_names:
                name = "exported_" + name
            candidate, n = name, 1
            while candidate in out:  # "a.b" and "a_b" both sanitise to a_b
                n += 1
                candidate = f"{name}_{n}"
            out[candidate] = value
        return tuple(sorted(out.items()))

    # -- output -----------------------------------------------------------------------------------------

    def families(self) -> list[Family]:
        """Run gauges first, then catalog metrics in catalog order, then the job's own metrics by name."""
        grouped: dict[str, list[_Series]] = {}
        for series in self._series.values():
            grouped.setdefault(series.metric, []).append(series)
        out = self._run_families(grouped)
        order = {m.name: i for i, m in enumerate(catalog.METRICS)}
        rest = sorted(
            (m for m in grouped if m not in RUN_METRICS),
            key=lambda m: (m not in order, order.get(m, 0), self._names.get(m, "")),
        )
        out.extend(self._family(metric, grouped[metric]) for metric in rest)
        return out

    def render(self) -> str:
        return render(self.families())

    def _run_families(self, grouped: dict[str, list[_Series]]) -> list[Family]:
        run_series = {
            "run_active": [_Series("run_active", self.constant, 1.0 if self.active else 0.0)],
            "last_sample": [],
            "step": [_Series("step", self.constant, self.step)] if self.step is not None else [],
            "alerts_firing": [],
        }
        if self.last_sample is not None:
            run_series["last_sample"] = [_Series("last_sample", self.constant, self.last_sample)]
        if self.alerts_firing is not None:
            severities = [*SEVERITIES, *sorted(set(self.alerts_firing) - set(SEVERITIES))]
            run_series["alerts_firing"] = [
                _Series("alerts_firing", self.clean_labels((("severity", s),)), float(self.alerts_firing.get(s, 0)))
                for s in severities
            ]
        families = []
        for metric in RUN_METRICS:
            # A value the job (or the store) gave for the same metric wins over the derived one.
            series = grouped.get(metric) or run_series[metric]
            if series:
                families.append(self._family(metric, series))
        return families

    def _family(self, metric: str, series: list[_Series]) -> Family:
        known = catalog.get(metric)
        if known is not None:
            name, help_text, factor = known.prometheus_name, known.help, catalog.UNITS[known.unit].to_base
        else:
            name, factor = self._names[metric], 1.0
            help_text = f'Metric "{metric}" logged by the job (not in the llamamon catalog).'
        series = sorted(series, key=lambda s: s.labels)
        if any(s.histogram is not None or s.kept is not None for s in series):
            points = [p for s in series for p in _histogram_points(name, s)]
            return Family(name, "histogram", help_text, tuple(points))
        kind = known.kind if known is not None else derived_kind(metric)
        return Family(name, kind, help_text, tuple(Point(name, s.labels, units.scale(s.value, factor)) for s in series))


def _histogram_points(name: str, series: _Series) -> list[Point]:
    kept = series.kept
    if kept is not None:
        points = [
            Point(f"{name}_bucket", tuple(sorted((*series.labels, ("le", le)))), count)
            for _bound, (le, count) in sorted(kept.buckets.items())
        ]
        return [
            *points,
            Point(f"{name}_sum", series.labels, kept.sum),
            Point(f"{name}_count", series.labels, kept.count),
        ]
    if series.histogram is None:
        return []
    points = [
        Point(f"{name}_bucket", tuple(sorted((*series.labels, ("le", format_value(bound))))), count)
        for bound, count in series.histogram.cumulative()
    ]
    points.append(Point(f"{name}_sum", series.labels, series.histogram.sum))
    points.append(Point(f"{name}_count", series.labels, series.histogram.count))
    return points
