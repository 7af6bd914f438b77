"""``llamamon alerts check | test | export``: validate, replay and export alert rules.

Thin: parse options, load the config, call the rules engine / exporter, print. polars and the store
are imported inside the commands so ``llamamon --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from llamamon.cli.notify import notify_test_command
from llamamon.cli.options import config_option, json_option, metrics_dir_option
from llamamon.severity import SEVERITIES


@click.group("alerts")
def alerts_command() -> None:
    """Check, test and export alert rules (yours and the built-in ones)."""


@alerts_command.command("check")
@config_option
@metrics_dir_option
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (a channel a rule uses whose ${VAR} is unset).")
def check_command(config_path: str | None, metrics_dir: str | None, strict: bool) -> None:
    """Validate the config and list every rule: condition, severity, for, channels, where it came from.

    Metric names may be catalog names, aliases, names declared under ``metrics:`` or matched by a
    ``parsers`` pattern, or names the job recorded in the metrics folder.
    """
    from llamamon.config import load_config
    from llamamon.rules.builtin import known_metrics, rules_from_config
    from llamamon.rules.tree import duration_text
    from llamamon.store.location import local_root  # a bucket: the names its mirror has seen

    cfg = load_config(config_path)
    root = local_root(metrics_dir or cfg.metrics_path)
    asked: set[str] = set()

    def recorded(names: set[str] | None) -> set[str]:
        from llamamon.store.reader import metric_names  # polars: only when a name needs the store

        found = metric_names(root, names)
        if names is not None:
            asked.update(found)
        return found

    rules = rules_from_config(cfg, recorded=recorded, recorded_where=str(root))
    _check_channels(cfg)
    warnings = _unset_channel_variables(cfg, rules)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    rows = [
        (
            r.name + ("" if r.enabled else " (off)"),
            r.severity,
            duration_text(r.for_) if r.for_ else "0s",
            ",".join(r.channels) or "-",
            r.source,
            r.condition.text,
        )
        for r in rules
    ]
    _table(("RULE", "SEVERITY", "FOR", "CHANNELS", "SOURCE", "CONDITION"), rows)
    where = cfg.source or "built-in defaults"
    active = sum(r.enabled for r in rules)
    declared = sorted({m for r in rules for m in r.condition.metrics} - known_metrics() - asked)
    if declared:
        click.echo(f"metrics the config declares: {', '.join(declared)}", err=True)
    if asked:
        click.echo(f"metrics the job recorded in {root}: {', '.join(sorted(asked))}", err=True)
    if cfg.source is not None and not cfg.lines:
        where = f"{cfg.source} (empty: the built-in defaults apply)"
    elif cfg.source is not None and cfg.alerts_source is None:
        where = f"{cfg.source} (no alerts: section: the built-in defaults' rules and channels apply)"
    click.echo(f"{where}: OK, {len(rules)} rules ({active} on)", err=True)
    if strict and warnings:
        raise click.exceptions.Exit(1)


def _unset_channel_variables(cfg: Any, rules: list[Any]) -> list[str]:
    """``file:line: option: ${VAR} is not set`` for each channel an enabled rule sends to.

    Why only a warning: recording must not fail because a webhook variable is unset in this shell (the
    channel is skipped when it would send); ``check`` is where a user learns of it, ``--strict`` in CI.
    """
    out = []
    for name, channel in cfg.alerts.channels.items():
        users = [r.name for r in rules if r.enabled and name in r.channels]
        for option, variable in channel.unset_variables() if users else ():
            path = f"alerts.channels.{name}.{option}"
            file, line = cfg.where(path)
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            out.append(
                f"{file}:{line}: {path}: ${{{variable}}} is not set: {name} is off, so {shown} cannot notify through it"
            )
    return out


def _check_channels(cfg: Any) -> None:
    """Build every channel once so a bad option is reported by ``check``, not at the first alert."""
    from llamamon.channels.registry import build_channel
    from llamamon.errors import ConfigError

    for name, channel in cfg.alerts.channels.items():
        try:
            build_channel(name, channel.type, channel.options)
        except ConfigError as exc:
            raise cfg.error(exc.path or f"alerts.channels.{name}", exc.message) from None


@alerts_command.command("test")
@config_option
@metrics_dir_option
@click.option("--run", "run_ids", multiple=True, help="Run id, id prefix, name or name prefix (repeatable).")
@click.option("--latest", is_flag=True, help="The most recent run.")
@click.option("--all", "all_runs", is_flag=True, help="Every recorded run (the default).")
@click.option("--since", default=None, help="Runs active within this long, e.g. 2h.")
@click.option("--group", default=None, metavar="NAME", help="Every run of this run group (a multi-node job).")
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    default="warning",
    show_default=True,
    help="Exit 1 when an alert of this severity or worse fired (the --junit file fails the same rules).",
)
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML here.")
@click.option("--unit", is_flag=True, help="FILES are promtool-style rule test files.")
@json_option
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.pass_context
def test_command(
    ctx: click.Context,
    config_path: str | None,
    metrics_dir: str | None,
    run_ids: tuple[str, ...],
    latest: bool,
    all_runs: bool,
    since: str | None,
    group: str | None,
    fail_on: str,
    junit_path: str | None,
    unit: bool,
    as_json: bool,
    files: tuple[str, ...],
) -> None:
    """Evaluate every rule over recorded runs (or, with --unit, promtool-style test files)."""
    from llamamon.errors import ConfigError

    if unit:
        if not files:
            raise ConfigError("--unit needs at least one test file", path="alerts test")
        from llamamon.cli.alerts_unit import run_unit_files

        ctx.exit(run_unit_files([Path(f) for f in files]))
    if files:
        raise ConfigError(f"unexpected argument {files[0]!r} (test files need --unit)", path="alerts test")
    from llamamon.cli.alerts_unit import evaluate_recorded

    found = evaluate_recorded(
        config_path, metrics_dir, list(run_ids), latest, all_runs, since, steps=bool(junit_path), group=group
    )
    alerts, rules, steps = found
    if as_json:
        import json

        click.echo(json.dumps([_alert_json(a) for a in alerts], indent=2))
    elif alerts:
        _table(
            ("RULE", "SEVERITY", "LABELS", "FIRST FIRED", "RESOLVED", "DURATION", "PEAK", "RUN"),
            [_alert_row(a) for a in alerts],
        )
    else:
        click.echo(f"no alerts fired ({len(rules)} rules)", err=True)
    if junit_path:
        from llamamon.cli.alerts_unit import junit_xml
        from llamamon.fsutil import atomic_write

        atomic_write(Path(junit_path), junit_xml(rules, alerts, fail_on, steps))
    worst = SEVERITIES.index(fail_on)
    if any(SEVERITIES.index(a.severity) >= worst for a in alerts if a.severity in SEVERITIES):
        ctx.exit(1)


@alerts_command.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["prometheus"]), default="prometheus", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
def export_command(config_path: str | None, fmt: str, output: str | None) -> None:
    """Write Prometheus alerting rules for every rule that translates to PromQL; list those that do not.

    The rules fire only for live runs; llamamon_watch_down is added, for a `llamamon watch` that stopped.
    """
    from llamamon.config import load_config
    from llamamon.prometheus.rules_export import export_rules, watch_stale_after
    from llamamon.rules.builtin import rules_from_config

    cfg = load_config(config_path)
    rules = rules_from_config(cfg)
    stale = watch_stale_after(cfg.update_frequency, cfg.monitoring.textfile_refresh)
    text, skipped, warnings = export_rules(rules, interval=cfg.update_frequency, watch_stale=stale)
    if output:
        from llamamon.fsutil import atomic_write

        atomic_write(Path(output), text.encode())
    else:
        click.echo(text, nl=False)
    for name, why in skipped:
        click.echo(f"llamamon: not exported: {name}: {why}", err=True)
    for name, why in warnings:
        click.echo(f"llamamon: warning: {name}: {why}", err=True)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _series_labels(labels: Any) -> str:
    shown = [f"{k}={v}" for k, v in labels if k not in ("alertname", "severity", "run", "host")]
    return ",".join(shown) or "-"


def _alert_row(a: Any) -> tuple[str, ...]:
    from llamamon.units import format_duration

    end = a.resolved_at
    duration = format_duration(end - a.fired_at) if end is not None else "firing"
    return (
        a.rule,
        a.severity,
        _series_labels(a.labels),
        _when(a.fired_at),
        _when(end),
        duration,
        f"{a.peak:.6g}",
        a.run or "-",
    )


def _alert_json(a: Any) -> dict[str, Any]:
    def num(v: float) -> float | str:
        return v if v == v and v not in (float("inf"), float("-inf")) else str(v)

    return {
        "rule": a.rule,
        "severity": a.severity,
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "active_at": a.active_at,
        "fired_at": a.fired_at,
        "resolved_at": a.resolved_at,
        "value": num(a.value),
        "peak": num(a.peak),
        "run": a.run,
        "host": a.host,
    }


alerts_command.add_command(notify_test_command)
