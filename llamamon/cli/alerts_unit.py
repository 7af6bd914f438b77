"""The I/O behind ``llamamon alerts test``: read configs, test files and the store, then replay the rules.

Imported only inside the ``alerts test`` command (it pulls in polars through the history evaluator).
"""

from __future__ import annotations

import glob
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from llamamon.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

    from llamamon.rules.model import Alert, Rule


def evaluate_recorded(
    config_path: str | None,
    metrics_dir: str | None,
    run_ids: list[str],
    latest: bool,
    all_runs: bool,
    since: str | None,
    *,
    steps: bool = False,
    group: str | None = None,
) -> tuple[list[Alert], list[Rule], list[int | None]]:
    """Every alert episode of every enabled rule over the selected recorded runs, and (``steps``) the
    training step each fired at (the run's last logged step by then; None without one)."""

    from llamamon.config import load_config
    from llamamon.rules.builtin import rules_from_config
    from llamamon.rules.history import replay
    from llamamon.store.location import open_location
    from llamamon.store.reader import metric_names, scan
    from llamamon.store.runs import resolve_runs, run_ends

    if all_runs and (run_ids or latest or since or group):
        raise ConfigError("--all cannot be combined with --run, --latest, --since or --group", path="alerts test")
    cfg = load_config(config_path)
    location = open_location(metrics_dir or cfg.metrics_path)
    runs = location.pull_chosen(lambda root: resolve_runs(root, run_ids, latest, since, group=group))
    root = location.root
    if not runs:
        click.echo(f"llamamon: no runs recorded in {location.shown}", err=True)
        return [], rules_from_config(cfg), []
    ids = [r.id for r in runs]
    frame = scan(root, runs=ids)
    recorded = partial(metric_names, root, runs=ids)
    rules = [r for r in rules_from_config(cfg, recorded=recorded, recorded_where=str(root)) if r.enabled]
    ends = run_ends(runs)
    alerts = replay(rules, frame, step_s=cfg.update_frequency, aliases=cfg.aliases, ends=ends)
    return alerts, rules, _steps_at(frame, alerts) if steps and alerts else [None] * len(alerts)


def _steps_at(frame: pl.LazyFrame, alerts: list[Alert]) -> list[int | None]:
    """Per alert, the step of its run's latest row with a step at or before the time it fired."""
    from bisect import bisect_right

    import polars as pl

    rows = (
        frame.filter(pl.col("step").is_not_null())
        .select("run", pl.col("time").dt.epoch("us").alias("t"), "step")
        .sort("run", "t")
        .collect()
    )
    by_run: dict[str, tuple[list[int], list[int]]] = {}
    for part in rows.partition_by("run", maintain_order=True):
        by_run[str(part["run"][0])] = (part["t"].to_list(), part["step"].to_list())
    out: list[int | None] = []
    for a in alerts:
        times, steps = by_run.get(a.run or "", ([], []))
        k = bisect_right(times, round(a.fired_at * 1_000_000)) - 1
        out.append(int(steps[k]) if k >= 0 else None)
    return out


def junit_xml(
    rules: list[Rule], alerts: list[Alert], fail_on: str = "warning", steps: list[int | None] | None = None
) -> bytes:
    """One testcase per rule: failed where the rule fired at ``fail_on`` or worse (what makes ``alerts test``
    exit 1), one line per episode; a rule that fired below it passes, its episodes in <system-out>.

    Why the same cut as the exit code: a CI job shows the file and gates on the exit status; both must say
    the same thing."""
    from llamamon.severity import SEVERITIES

    steps = steps if steps is not None else [None] * len(alerts)
    fired: dict[str, list[tuple[Alert, int | None]]] = {}
    for a, step in zip(alerts, steps, strict=True):
        fired.setdefault(a.rule, []).append((a, step))
    worst = SEVERITIES.index(fail_on)
    failing = {r.name for r in rules if r.name in fired and _rank(r.severity, SEVERITIES) >= worst}
    suite = ET.Element("testsuite", name="llamamon alerts", tests=str(len(rules)), failures=str(len(failing)))
    for rule in rules:
        case = ET.SubElement(suite, "testcase", classname="llamamon.alerts", name=rule.name)
        episodes = fired.get(rule.name)
        if not episodes:
            continue
        text = "\n".join(_episode_line(rule, a, step) for a, step in episodes)
        if rule.name in failing:
            message = f"{rule.name} ({rule.severity}) fired {len(episodes)} time(s)"
            ET.SubElement(case, "failure", message=message).text = text
        else:
            below = f"{rule.name} ({rule.severity}, below --fail-on {fail_on}) fired {len(episodes)} time(s):\n"
            ET.SubElement(case, "system-out").text = below + text
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _rank(severity: str, order: tuple[str, ...]) -> int:
    return order.index(severity) if severity in order else -1


def _episode_line(rule: Rule, a: Alert, step: int | None) -> str:
    """``validation_loss_high: value 2.31 at step 120, 2026-01-01T00:02:00Z, resolved ... (run R, gpu=0)``."""
    from llamamon.rules.tree import unit_of

    unit = unit_of(rule.condition.tree)
    value = f"{a.value:.6g}" + (f" {unit}" if unit and unit != "ratio" else "")
    where = f"at step {step}, " if step is not None else ""
    resolved = f"resolved {_iso(a.resolved_at)}" if a.resolved_at is not None else "still firing"
    shown = [f"run {a.run}"] if a.run else []
    shown += [f"{k}={v}" for k, v in a.labels if k not in ("alertname", "severity", "run", "host")]
    context = f" ({', '.join(shown)})" if shown else ""
    return f"{rule.name}: value {value} {where}{_iso(a.fired_at)}, {resolved}{context}"


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read test file ({exc.strerror or exc})", file=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"not valid YAML ({getattr(exc, 'problem', exc)})", file=str(path), line=line) from None


def _rules_for(test_path: Path, patterns: list[str], names: set[str]) -> list[Rule]:
    from llamamon.config import load_config
    from llamamon.rules.builtin import rules_from_config

    rules: list[Rule] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(test_path.parent / pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            click.echo(f"  WARNING: no file match pattern {pattern}")
        for match in matches:
            rules.extend(r for r in rules_from_config(load_config(match), extra_names=names) if r.enabled)
    return rules


def _replay_loader(test_path: Path) -> Any:
    def load(spec: dict[str, str]) -> pl.DataFrame:
        import polars as pl

        from llamamon.store.reader import scan
        from llamamon.store.runs import resolve_run

        root = Path(spec["metrics_dir"])
        root = root if root.is_absolute() else test_path.parent / root
        run = resolve_run(root, spec["run"])
        frame = scan(root, runs=[run.id]).collect()
        if frame.height == 0:
            return frame
        # Why shift: eval_time in a test is relative to the start of the replayed run, as for input_series.
        start = frame["time"].min()
        return frame.with_columns(
            (pl.col("time") - start).dt.total_microseconds().cast(pl.Datetime("us", "UTC")).alias("time")
        )

    return load


def run_unit_files(paths: list[Path]) -> int:
    """Run promtool-style test files; print promtool's report; 0 when all pass, 1 otherwise."""
    from llamamon.rules import promtest

    ok = True
    for path in paths:
        click.echo(f"Unit Testing:  {path}")
        spec = promtest.load(_load_yaml(path), str(path))
        names = {promtest.metric_of(name)[0] for g in spec.groups for name, _, _ in g.series}
        rules = _rules_for(path, spec.rule_files, names | _replay_names(spec, path))
        failures: list[str] = []
        for group in spec.groups:
            failures.extend(promtest.run_group(group, rules, spec.evaluation_interval, _replay_loader(path)))
        if failures:
            ok = False
            click.echo("  FAILED:")
            click.echo("\n".join(failures))
        else:
            click.echo("  SUCCESS")
    return 0 if ok else 1


def _replay_names(spec: Any, path: Path) -> set[str]:
    import polars as pl

    names: set[str] = set()
    loader = _replay_loader(path)
    for group in spec.groups:
        if group.replay is not None:
            names |= set(loader(group.replay).select(pl.col("metric").unique())["metric"].to_list())
    return names
