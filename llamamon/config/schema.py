"""What the keys of monitoring.yaml mean: defaults, validation, "did you mean", and the typed Config.

Every mistake becomes one ConfigError naming ``file:line: key.path``. Sections owned by other layers
(rule conditions, channel options) are checked for shape here and for meaning where they are used,
through ``Config.error(path, message)`` so the line number is never lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamamon.config.checker import Checker, line_of, show
from llamamon.config.loader import RawConfig, UnsetVariable
from llamamon.errors import ConfigError, did_you_mean, raise_errors
from llamamon.severity import SEVERITIES

CHANNEL_TYPES = ("slack", "email", "webhook", "alertmanager")
EXPORT_FORMATS = ("prometheus", "none")


@dataclass(frozen=True, slots=True)
class MemoryThresholds:
    warning: float
    critical: float


@dataclass(frozen=True, slots=True)
class GpuThresholds:
    utilization_min: float
    memory_max: float


@dataclass(frozen=True, slots=True)
class TrainingThresholds:
    loss_plateau_patience: int
    validation_loss_max: float
    learning_rate_min: float
    straggler_ratio: float  # training_straggler: the median rank's step rate over a rank's


@dataclass(frozen=True, slots=True)
class InferenceThresholds:
    latency_max: float  # milliseconds
    timeout: float  # seconds
    batch_queue_max: float


@dataclass(frozen=True, slots=True)
class Thresholds:
    memory: MemoryThresholds
    gpu: GpuThresholds
    training: TrainingThresholds
    inference: InferenceThresholds


@dataclass(frozen=True, slots=True)
class Monitoring:
    enabled: bool
    update_frequency: float
    metrics_path: Path | str  # a folder, or an object storage URL (s3://bucket/prefix) kept as written
    export_format: str
    textfile_dir: Path | None
    textfile_refresh: float
    retention: float | None
    thresholds: Thresholds
    secret_options: tuple[str, ...] = ()  # more options whose value record masks, beside --*token* & co.
    textfile_grace: float = 0.0  # how long a finished run's .prom file stays (llamamon_run_active 0)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    type: str
    options: dict[str, Any]
    line: int | None = None

    def unset_variables(self) -> list[tuple[str, str]]:
        """(option, VAR) pairs whose value came from an unset environment variable."""
        return [(k, v.variable) for k, v in self.options.items() if isinstance(v, UnsetVariable)]


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    condition: str
    severity: str
    channels: tuple[str, ...]
    for_: float
    keep_firing_for: float
    labels: dict[str, str]
    annotations: dict[str, str]
    enabled: bool
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ParserConfig:
    pattern: re.Pattern[str]
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One ``scrape:`` entry: a URL, or a mapping with headers, auth and a timeout.

    Header values, ``bearer_token`` and the basic-auth password may be ``${VAR}``s; one left unset is
    an ``UnsetVariable`` here, and the collector leaves it out (with a warning) rather than send it.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None  # (username, password)
    timeout: float | None = None  # None: the recorder's default (the interval, at most 10 s)


@dataclass(frozen=True, slots=True)
class Alerts:
    channels: dict[str, ChannelConfig]
    rules: dict[str, RuleConfig]
    builtin: dict[str, bool]
    repeat_interval: float


@dataclass(frozen=True, slots=True)
class Config:
    monitoring: Monitoring
    alerts: Alerts
    parsers: tuple[ParserConfig, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    scrape: tuple[ScrapeTarget, ...] = ()
    collectors: tuple[str, ...] = ()
    source: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # names the job logs, declared so rules may use them before any run
    # Where alerts: was read: the user's file, or None when it has none and the built-in defaults apply.
    alerts_source: Path | None = None
    alerts_lines: dict[str, int] = field(default_factory=dict)

    @property
    def update_frequency(self) -> float:
        return self.monitoring.update_frequency

    @property
    def metrics_path(self) -> Path | str:
        return self.monitoring.metrics_path

    def where(self, path: str) -> tuple[str, int | None]:
        """(file, line) of ``path`` or of its nearest parent that has a line; "built-in defaults" for
        what came from them (no file, or a file without an alerts: section)."""
        alerts = path == "alerts" or path.startswith("alerts.")
        source, lines = (self.alerts_source, self.alerts_lines) if alerts else (self.source, self.lines)
        return (str(source) if source else "built-in defaults"), line_of(lines, path)

    def error(self, path: str, message: str) -> ConfigError:
        """A ConfigError pointing at ``path`` in the file it was read from (or "built-in defaults")."""
        file, line = self.where(path)
        return ConfigError(message, file=file, line=line, path=path)


TOP_KEYS = ("monitoring", "alerts", "parsers", "aliases", "scrape", "collectors", "metrics")
MONITORING_KEYS = (
    "enabled",
    "update_frequency",
    "metrics_path",
    "export_format",
    "textfile_dir",
    "textfile_refresh",
    "textfile_grace",
    "retention",
    "thresholds",
    "secret_options",
)
THRESHOLD_KEYS = {
    "memory": ("warning", "critical"),
    "gpu": ("utilization_min", "memory_max"),
    "training": ("loss_plateau_patience", "validation_loss_max", "learning_rate_min", "straggler_ratio"),
    "inference": ("latency_max", "timeout", "batch_queue_max"),
}
ALERTS_KEYS = ("channels", "rules", "builtin", "repeat_interval")
RULE_KEYS = ("condition", "severity", "channels", "for", "keep_firing_for", "labels", "annotations", "enabled")


def build_config(raw: RawConfig, defaults: RawConfig) -> Config:
    """Validate ``raw`` (a user's file) over ``defaults`` (the shipped example) into a Config.

    Every mistake is listed (up to ``errors.MAX_ERRORS``); a section whose shape is wrong (a list where a
    mapping belongs) stops the check there, as its keys cannot be looked at.
    """
    errors: list[ConfigError] = []
    check = Checker(raw, errors)
    data = check.mapping(raw.data, "", TOP_KEYS)
    base = defaults.data
    monitoring = _monitoring(check, _merge(base.get("monitoring", {}), data.get("monitoring")))
    # Why not merged: a user who writes their own rules or channels wants exactly those.
    alerts_from = raw if "alerts" in data else defaults
    alerts = _alerts(Checker(alerts_from, errors), data["alerts"] if "alerts" in data else base.get("alerts", {}))
    parsers = _parsers(check, data.get("parsers"))
    aliases = check.string_map(data.get("aliases"), "aliases")
    scrape = _scrape(check, data.get("scrape"))
    collectors = check.string_list(data.get("collectors"), "collectors")
    for i, spec in enumerate(collectors):
        if ":" not in spec:
            check.report(f"collectors[{i}]", f'expected "package.module:ClassName" (got {spec!r})')
    metrics = check.string_list(data.get("metrics"), "metrics")
    for i, name in enumerate(metrics):
        if not _METRIC_NAME.fullmatch(name):
            check.report(f"metrics[{i}]", f"expected a metric name like tokens_per_second (got {name!r})")
    raise_errors(errors)
    lines = dict(raw.lines) if raw.source else dict(defaults.lines)
    return Config(
        monitoring,
        alerts,
        parsers,
        aliases,
        scrape,
        collectors,
        raw.source,
        lines,
        tuple(metrics),
        alerts_source=alerts_from.source,
        alerts_lines=dict(alerts_from.lines),
    )


_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_:]*")  # as a condition spells a metric


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base.get(key), value)
        return out
    return base if override is None else override


def _monitoring(check: Checker, value: Any) -> Monitoring:
    m = check.mapping(value, "monitoring", MONITORING_KEYS)
    thresholds = check.mapping(m.get("thresholds"), "monitoring.thresholds", tuple(THRESHOLD_KEYS))
    for section, keys in THRESHOLD_KEYS.items():
        check.mapping(thresholds.get(section), f"monitoring.thresholds.{section}", keys)
    if not all(isinstance(thresholds.get(section), dict) for section in THRESHOLD_KEYS):
        raise_errors(check.errors)  # a section that is not a mapping: its values cannot be looked at
    t = "monitoring.thresholds"
    mem, gpu = thresholds["memory"], thresholds["gpu"]
    train, inf = thresholds["training"], thresholds["inference"]
    memory = MemoryThresholds(
        check.ratio(mem["warning"], f"{t}.memory.warning"), check.ratio(mem["critical"], f"{t}.memory.critical")
    )
    if memory.warning > memory.critical:
        check.report(f"{t}.memory.warning", f"must not exceed memory.critical (got {memory.warning:g})")
    export_format = check.choice(m["export_format"], "monitoring.export_format", EXPORT_FORMATS)
    textfile = m.get("textfile_dir")
    refresh = check.duration(m["textfile_refresh"], "monitoring.textfile_refresh")
    grace = check.duration(m["textfile_grace"], "monitoring.textfile_grace")
    retention = m.get("retention")
    secret_options = check.string_list(m.get("secret_options"), "monitoring.secret_options")
    for i, option in enumerate(secret_options):
        if not option.startswith("-") or "=" in option:
            check.report(f"monitoring.secret_options[{i}]", f"expected an option such as --hf-auth (got {option!r})")
    return Monitoring(
        enabled=check.boolean(m["enabled"], "monitoring.enabled"),
        update_frequency=check.duration(m["update_frequency"], "monitoring.update_frequency", positive=True),
        metrics_path=metrics_path_of(check.string(m["metrics_path"], "monitoring.metrics_path")),
        export_format=export_format,
        textfile_dir=Path(check.string(textfile, "monitoring.textfile_dir")) if textfile is not None else None,
        textfile_refresh=refresh,
        textfile_grace=grace,
        retention=check.duration(retention, "monitoring.retention", positive=True) if retention is not None else None,
        thresholds=Thresholds(
            memory=memory,
            gpu=GpuThresholds(
                check.ratio(gpu["utilization_min"], f"{t}.gpu.utilization_min"),
                check.ratio(gpu["memory_max"], f"{t}.gpu.memory_max"),
            ),
            training=TrainingThresholds(
                check.integer(train["loss_plateau_patience"], f"{t}.training.loss_plateau_patience", lo=1),
                check.number(train["validation_loss_max"], f"{t}.training.validation_loss_max"),
                check.number(train["learning_rate_min"], f"{t}.training.learning_rate_min", lo=0),
                # (at 1 every rank slower than the median would fire, about half of a balanced job's)
                check.number(train["straggler_ratio"], f"{t}.training.straggler_ratio", lo=1.01),
            ),
            inference=InferenceThresholds(
                check.number(inf["latency_max"], f"{t}.inference.latency_max", lo=0),
                check.duration(inf["timeout"], f"{t}.inference.timeout", positive=True),
                check.number(inf["batch_queue_max"], f"{t}.inference.batch_queue_max", lo=0),
            ),
        ),
        secret_options=secret_options,
    )


def metrics_path_of(text: str) -> Path | str:
    """A URL (``s3://bucket/prefix``) stays a string: ``Path`` would fold its ``//``; the store checks it."""
    return text if "://" in text else Path(text)


def _alerts(check: Checker, value: Any) -> Alerts:
    a = check.mapping(value, "alerts", ALERTS_KEYS)
    channels: dict[str, ChannelConfig] = {}
    for name, options in check.mapping(a.get("channels"), "alerts.channels").items():
        path = f"alerts.channels.{name}"
        opts = dict(check.mapping(options, path))
        kind = opts.pop("type", name)
        check.choice(kind, f"{path}.type" if "type" in (options or {}) else path, CHANNEL_TYPES)
        channels[name] = ChannelConfig(name, kind, opts, check.raw.lines.get(path))
    rules: dict[str, RuleConfig] = {}
    for name, body in check.mapping(a.get("rules"), "alerts.rules").items():
        path = f"alerts.rules.{name}"
        r = check.mapping(body, path, RULE_KEYS)
        if "condition" not in r:
            check.report(path, "missing key condition")
        rule_channels = check.string_list(r.get("channels"), f"{path}.channels")
        for i, ch in enumerate(rule_channels):
            if ch not in channels:
                extra = did_you_mean(ch, channels)
                check.report(f"{path}.channels[{i}]", f"no channel named {ch!r} in alerts.channels{extra}")
        rules[name] = RuleConfig(
            name=name,
            condition=check.string(r.get("condition"), f"{path}.condition") if "condition" in r else "?",
            severity=check.choice(r.get("severity", "warning"), f"{path}.severity", SEVERITIES),
            channels=rule_channels,
            for_=check.duration(r.get("for", 0), f"{path}.for"),
            keep_firing_for=check.duration(r.get("keep_firing_for", 0), f"{path}.keep_firing_for"),
            labels=check.string_map(r.get("labels"), f"{path}.labels"),
            annotations=check.string_map(r.get("annotations"), f"{path}.annotations"),
            enabled=check.boolean(r.get("enabled", True), f"{path}.enabled"),
            line=check.raw.lines.get(path),
        )
    builtin = {
        str(k): check.boolean(v, f"alerts.builtin.{k}")
        for k, v in check.mapping(a.get("builtin"), "alerts.builtin").items()
    }
    repeat = check.duration(a.get("repeat_interval", "4h"), "alerts.repeat_interval", positive=True)
    return Alerts(channels, rules, builtin, repeat)


SCRAPE_KEYS = ("url", "headers", "bearer_token", "basic_auth", "timeout")


def _scrape(check: Checker, value: Any) -> tuple[ScrapeTarget, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        return check.bad("scrape", f"expected a list of URLs or {{url: ...}} mappings (got {show(value)})", ())
    out = []
    for i, item in enumerate(value):
        path = f"scrape[{i}]"
        if not isinstance(item, dict):
            out.append(ScrapeTarget(check.string(item, path)))
            continue
        body = check.mapping(item, path, SCRAPE_KEYS)
        if "url" not in body:
            check.report(path, "missing key url")
        headers = {
            str(k): _secret(check, v, f"{path}.headers.{k}")
            for k, v in check.mapping(body.get("headers"), f"{path}.headers").items()
        }
        token = _secret(check, body["bearer_token"], f"{path}.bearer_token") if "bearer_token" in body else None
        basic = None
        if "basic_auth" in body:
            auth = check.mapping(body["basic_auth"], f"{path}.basic_auth", ("username", "password"))
            for key in ("username", "password"):
                if key not in auth:
                    check.report(f"{path}.basic_auth", f"missing key {key}")
            basic = (
                _secret(check, auth.get("username", "?"), f"{path}.basic_auth.username"),
                _secret(check, auth.get("password", "?"), f"{path}.basic_auth.password"),
            )
        if token is not None and basic is not None:
            check.report(path, "bearer_token and basic_auth both set an Authorization header; keep one")
        if any(k.lower() == "authorization" for k in headers) and (token is not None or basic is not None):
            check.report(f"{path}.headers", "an Authorization header and bearer_token/basic_auth: keep one")
        timeout = check.duration(body["timeout"], f"{path}.timeout", positive=True) if "timeout" in body else None
        url = check.string(body.get("url", "?"), f"{path}.url")
        out.append(ScrapeTarget(url, headers, token, basic, timeout))
    return tuple(out)


def _secret(check: Checker, value: Any, path: str) -> str:
    """A string option that may be a secret: the value as loaded (an UnsetVariable stays one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return check.string(value, path)


def _parsers(check: Checker, value: Any) -> tuple[ParserConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        return check.bad("parsers", f"expected a list of {{pattern: REGEX}} (got {show(value)})", ())
    out = []
    for i, item in enumerate(value):
        path = f"parsers[{i}]"
        if isinstance(item, str):
            item = {"pattern": item}
        body = check.mapping(item, path, ("pattern",))
        text = check.string(body.get("pattern"), f"{path}.pattern")
        try:
            pattern = re.compile(text)
        except re.error as exc:
            check.report(f"{path}.pattern", f"invalid regular expression: {exc}")
            continue
        if not pattern.groupindex:
            check.report(f"{path}.pattern", "needs named groups, e.g. (?P<loss>[0-9.e+-]+)")
        out.append(ParserConfig(pattern, check.raw.lines.get(path)))
    return tuple(out)
