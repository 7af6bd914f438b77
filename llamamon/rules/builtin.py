"""Rules derived from ``monitoring.thresholds``, and the Rule list a Config stands for.

Every built-in rule is on unless ``alerts.builtin.<name>: false``; a rule of your own with the same
name replaces it. The conditions below are written in the condition language itself, so ``alerts
check`` lists them like any other rule and the PromQL export treats them the same way.

=======================  ===================================================================  ========  =====
name                     condition (thresholds from monitoring.thresholds)                    severity  for
=======================  ===================================================================  ========  =====
memory_warning           ``memory_usage > memory.warning``                                    warning   2m
memory_critical          ``memory_usage > memory.critical``                                   critical  1m
gpu_underutilized        ``gpu_utilization < gpu.utilization_min and gpu_process_memory_used  warning   10m
                         > 0`` (only while the recorded job holds memory on that GPU)
gpu_memory_high          ``gpu_memory_usage > gpu.memory_max``                                warning   2m
gpu_xid_error            ``increase(gpu_xid_events, 10m) > 0`` (any XID the driver reported)  critical  0s
validation_loss_high     ``validation_loss > training.validation_loss_max``                   warning   0s
learning_rate_low        ``learning_rate < training.learning_rate_min and max(learning_rate,  warning   0s
                         5m) == min(learning_rate, 5m) and count(learning_rate, 5m) >= 3``
                         (flat below the minimum; an annealed schedule's falling tail is not)
loss_plateau             ``evals_since_best(validation_loss) >= P``,                          warning   0s
                         P = training.loss_plateau_patience
train_loss_plateau       ``p50(loss, 15m) >= p50(loss, 30m) - (p50(loss, 30m) -               warning   2m
                         quantile(0.25, loss, 30m)) / 8 and count(loss, 30m) > 1.5 *
                         count(loss, 15m) unless validation_loss`` (runs without validation)
inference_latency_high   ``p95(inference_latency, 5m) > <inference.latency_max>ms``           warning   2m
inference_timeouts       ``timeout_rate > 0`` (requests over inference.timeout)               warning   1m
batch_queue_high         ``batch_queue_size > inference.batch_queue_max``                     warning   2m
loss_not_finite          ``not isfinite(loss) or not isfinite(validation_loss)``              critical  0s
training_straggler       ``quantile without (rank, local_rank, host, run, instance) (0.5,     warning   10m
                         rate(step{rank!=""}, 10m)) / rate(step{rank!=""}, 10m) >
                         training.straggler_ratio`` (the median rank's steps/s over a rank's)
=======================  ===================================================================  ========  =====
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamamon import catalog
from llamamon.errors import ConfigError, RuleError, did_you_mean, raise_errors
from llamamon.rules import lang, template, tree
from llamamon.rules.model import Rule

if TYPE_CHECKING:
    from llamamon.config import Config, RuleConfig


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    condition: str  # format string over the thresholds
    severity: str
    for_: float
    uses: tuple[str, ...]  # threshold paths under monitoring.thresholds
    summary: str


BUILTINS: tuple[Builtin, ...] = (
    Builtin(
        "memory_warning",
        "memory_usage > {memory.warning}",
        "warning",
        120,
        ("memory.warning",),
        "Memory use at {{ $value | humanizePercentage }} on {{ $labels.host }}",
    ),
    Builtin(
        "memory_critical",
        "memory_usage > {memory.critical}",
        "critical",
        60,
        ("memory.critical",),
        "Memory use at {{ $value | humanizePercentage }} on {{ $labels.host }}",
    ),
    Builtin(
        "gpu_underutilized",
        "gpu_utilization < {gpu.utilization_min} and gpu_process_memory_used > 0",
        "warning",
        600,
        ("gpu.utilization_min",),
        "GPU {{ $labels.gpu }} busy only {{ $value | humanizePercentage }} of the time while the job holds it",
    ),
    Builtin(
        "gpu_memory_high",
        "gpu_memory_usage > {gpu.memory_max}",
        "warning",
        120,
        ("gpu.memory_max",),
        "GPU {{ $labels.gpu }} memory at {{ $value | humanizePercentage }}",
    ),
    Builtin(
        "gpu_xid_error",
        # Why gpu_xid_events, not gpu_xid_errors{xid}: a code's series starts with its first event, which an
        # increase cannot see; the per-GPU count is there from the first sample (collectors/gpu_events.py).
        "increase(gpu_xid_events, 10m) > 0",
        "critical",
        0,
        (),
        'GPU {{ $labels.gpu }} reported {{ $value | printf "%.0f" }} XID error(s) in 10m (codes: gpu_xid_errors)',
    ),
    Builtin(
        "validation_loss_high",
        "validation_loss > {training.validation_loss_max}",
        "warning",
        0,
        ("training.validation_loss_max",),
        'Validation loss {{ $value | printf "%.3g" }} above the limit',
    ),
    Builtin(
        "learning_rate_low",
        # Why flat, not just low: a cosine, OneCycle or linear schedule anneals to about 0 in its last steps,
        # still falling there; a rate stuck below the minimum stays equal for minutes (3 or more logs).
        "learning_rate < {training.learning_rate_min}"
        " and max(learning_rate, 5m) == min(learning_rate, 5m) and count(learning_rate, 5m) >= 3",
        "warning",
        0,
        ("training.learning_rate_min",),
        'Learning rate {{ $value | printf "%.3g" }} below the minimum',
    ),
    Builtin(
        "loss_plateau",
        "evals_since_best(validation_loss) >= {training.loss_plateau_patience}",
        "warning",
        0,
        ("training.loss_plateau_patience",),
        "No new best validation loss for {{ $value }} evaluations",
    ),
    Builtin(
        "train_loss_plateau",
        # Why medians of windows, not evaluations, for the training loss of a run without validation: its
        # per-step values are noise around a trend, so a count of steps without a new best fired while it
        # still fell. A plateau: the median of the last 15m is not below that of the last 30m by more than an
        # eighth of the 30m's spread (its median less its 25th percentile: the noise where flat, the fall
        # where falling), once 30m of it are there, for 2m. Why a rule apart with a for: a level over windows
        # needs no evaluation per logged step (loss_plateau's validation events do), and sorting 30m of a
        # loss logged 100 times a second at every step would stall the live loop.
        "p50(loss, 15m) >= p50(loss, 30m) - (p50(loss, 30m) - quantile(0.25, loss, 30m)) / 8"
        " and count(loss, 30m) > 1.5 * count(loss, 15m) unless validation_loss",
        "warning",
        120,
        (),
        "Training loss not improving: median {{ $value }} over the last 15m",
    ),
    Builtin(
        "inference_latency_high",
        "p95(inference_latency, 5m) > {inference.latency_max}ms",
        "warning",
        120,
        ("inference.latency_max",),
        "p95 latency {{ $value | humanizeDuration }} over 5m",
    ),
    Builtin(
        "inference_timeouts",
        "timeout_rate > 0",
        "warning",
        60,
        ("inference.timeout",),
        "{{ $value | humanizePercentage }} of requests over the timeout",
    ),
    Builtin(
        "batch_queue_high",
        "batch_queue_size > {inference.batch_queue_max}",
        "warning",
        120,
        ("inference.batch_queue_max",),
        "{{ $value }} requests waiting",
    ),
    Builtin(
        "loss_not_finite",
        "not isfinite(loss) or not isfinite(validation_loss)",
        "critical",
        0,
        (),
        "Loss is {{ $value }}",
    ),
    Builtin(
        "training_straggler",
        # Why the step rate: every job that logs with a step (llamamon.log(step=...), the HF Trainer's
        # callback) stores `step`, where a step time is the job's own metric, if logged at all. Why the
        # median of the ranks: it is what the job's pace is, and one slow rank of many does not move it.
        # Why without these labels: what tells ranks apart, across the runs (one a node) of a multi-node
        # job; any other label (a run group, a model) keeps jobs apart. Why 10m and for 10m: a step rate
        # over 10 minutes averages per-step jitter out, so only a rank persistently behind fires. A rank
        # that stopped (rate 0) gives +Inf and fires too; with one rank nothing does.
        'quantile without (rank, local_rank, host, run, instance) (0.5, rate(step{rank!=""}, 10m))'
        ' / rate(step{rank!=""}, 10m) > {training.straggler_ratio}',
        "warning",
        600,
        ("training.straggler_ratio",),
        'Rank {{ $labels.rank }} on {{ $labels.host }} is {{ $value | printf "%.2f" }}x slower than the median'
        " rank (steps per second over 10m)",
    ),
)
BUILTIN_NAMES: tuple[str, ...] = tuple(b.name for b in BUILTINS)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _threshold(cfg: Config, path: str) -> float:
    section, key = path.split(".")
    return float(getattr(getattr(cfg.monitoring.thresholds, section), key))


def builtin_rules(cfg: Config) -> list[Rule]:
    """The built-in rules switched on in ``cfg`` with its thresholds filled in."""
    for name in cfg.alerts.builtin:
        if name not in BUILTIN_NAMES:
            extra = did_you_mean(name, BUILTIN_NAMES) or f" (known: {', '.join(BUILTIN_NAMES)})"
            raise cfg.error(f"alerts.builtin.{name}", f"no built-in rule of that name{extra}")
    rules: list[Rule] = []
    for b in BUILTINS:
        values = {p: _fmt(_threshold(cfg, p)) for p in b.uses if p != "inference.timeout"}
        text = b.condition
        for path, value in values.items():
            text = text.replace("{" + path + "}", value)
        where = f"thresholds.{b.uses[0]}" if b.uses else "always on"
        # Only a threshold the user's file sets is located in it; the others are the defaults' values.
        line = cfg.lines.get(f"monitoring.thresholds.{b.uses[0]}") if b.uses and cfg.source else None
        source = f"built-in ({where}"
        source += f", {cfg.source}:{line})" if line else ")"
        rules.append(
            Rule(
                name=b.name,
                condition=lang.parse(text, aliases=cfg.aliases, path=f"alerts.builtin.{b.name}"),
                severity=b.severity,
                for_=float(b.for_),
                annotations={"summary": b.summary},
                # Why every channel: a built-in has no channels key; it should reach whoever is configured.
                channels=tuple(cfg.alerts.channels),
                source=source,
                enabled=cfg.alerts.builtin.get(b.name, True),
            )
        )
    return rules


def known_metrics(cfg: Config | None = None) -> set[str]:
    """Names a condition may use without data: the catalog and its aliases, and from the config its
    aliases, its declared ``metrics`` and the named groups of its stdout ``parsers`` (what the job prints)."""
    names = set(catalog.BY_NAME) | set(catalog.ALIASES)
    if cfg is not None:
        names |= set(cfg.aliases) | set(cfg.aliases.values()) | set(cfg.metrics)
        for parser in cfg.parsers:
            names |= {catalog.canonical(group, cfg.aliases) for group in parser.pattern.groupindex}
    return names


def rules_from_config(
    cfg: Config,
    *,
    extra_names: set[str] | frozenset[str] = frozenset(),
    recorded: Callable[[set[str] | None], set[str]] | None = None,
    recorded_where: str = "",
) -> list[Rule]:
    """Every rule ``cfg`` stands for: its own (validated, with file:line errors), then the built-ins.

    ``extra_names``: metric names recorded in the data at hand, which count as known (``alerts test``).
    ``recorded(names)``: which of ``names`` (None: all) the job recorded in the store (``recorded_where``,
    for messages); asked only about names nothing else knows, so a config of catalog names reads no data.
    """
    known = known_metrics(cfg) | set(extra_names)
    parsed = []
    errors: list[ConfigError] = []
    for name, rc in cfg.alerts.rules.items():
        path = f"alerts.rules.{name}.condition"
        file, line = cfg.where(path)  # the condition's line, else its rule's; in the defaults if it came from them
        try:
            cond = lang.parse(rc.condition, file=file, line=line, path=path, aliases=cfg.aliases)
        except RuleError as exc:
            errors.append(exc)  # every rule's mistake in one pass, as the config's own are
            continue
        parsed.append((name, rc, cond, path, file, line))
    unknown = {
        n for _, _, cond, *_ in parsed for sel in tree.selectors(cond.tree) for n in (sel.name, sel.metric)
    } - known
    if unknown and recorded is not None:
        known |= recorded(unknown)
    own: list[Rule] = []
    for name, rc, cond, path, file, line in parsed:
        try:
            _check_rule(cfg, name, rc, cond, (file, line, path), known, recorded, recorded_where)
        except ConfigError as exc:
            errors.append(exc)
            continue
        own.append(
            Rule(
                name=name,
                condition=cond,
                severity=rc.severity,
                channels=tuple(rc.channels),
                for_=rc.for_,
                keep_firing_for=rc.keep_firing_for,
                labels=dict(rc.labels),
                annotations=dict(rc.annotations),
                source=f"{file}:{rc.line}" if rc.line else file,
                enabled=rc.enabled,
            )
        )
    raise_errors(errors)
    names = {r.name for r in own}
    return own + [r for r in builtin_rules(cfg) if r.name not in names]


def _check_rule(
    cfg: Config,
    name: str,
    rc: RuleConfig,
    cond: tree.Condition,
    where: tuple[str, int | None, str],
    known: set[str],
    recorded: Callable[[set[str] | None], set[str]] | None,
    recorded_where: str | None,
) -> None:
    """A parsed rule's metric names and its label and annotation templates; raises its first mistake.

    ``where``: (file, line, key path) of its condition, for the messages."""
    file, line, path = where
    try:
        lang.check_names(cond, known, file=file, line=line, path=path)
    except RuleError:
        # Why a second look: the suggestion may be a name the job recorded (a typo of tokens_per_second),
        # and the message says where names come from; only this error path lists every stored name.
        everything = known | (recorded(None) if recorded is not None else set())
        where = f"not recorded in {recorded_where}, " if recorded_where else ""
        lang.check_names(
            cond,
            everything,
            file=file,
            line=line,
            path=path,
            unknown_hint=f"not in the catalog, {where}not declared under `metrics:` in the config",
        )
        raise
    for kind, mapping in (("labels", rc.labels), ("annotations", rc.annotations)):
        for key, text in mapping.items():
            try:
                template.check(text)
            except template.TemplateError as exc:
                raise cfg.error(f"alerts.rules.{name}.{kind}.{key}", str(exc)) from None
