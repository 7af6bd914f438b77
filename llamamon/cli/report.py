"""``llamamon report``: one self-contained HTML file (or a Markdown summary) of recorded runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from llamamon.cli.options import config_option, metrics_dir_option, verbosity_options

DASHBOARD_NAMES = ("system", "training", "inference")


def _dashboards(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return DASHBOARD_NAMES
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    for name in names:
        if name not in DASHBOARD_NAMES:
            raise click.BadParameter(f"unknown dashboard {name!r} (choose from {', '.join(DASHBOARD_NAMES)})")
    return names


@click.command("report")
@click.option("--html", "fmt", flag_value="html", default=True, help="One self-contained HTML file (default).")
@click.option(
    "--markdown", "fmt", flag_value="markdown", help="A compact Markdown summary, e.g. for $GITHUB_STEP_SUMMARY."
)
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    metavar="ID",
    help="Run id, id prefix, name or name prefix (repeatable: overlays).",
)
@click.option("--latest", is_flag=True, help="The most recent run (the default when nothing else is chosen).")
@click.option("--since", metavar="DURATION", help="Every run active within this long, e.g. 24h.")
@click.option("--group", metavar="NAME", help="Every run of this run group (a multi-node job): one report.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="File to write (default: llamamon-report.html/.md)."
)
@click.option(
    "--dashboard",
    "dashboards",
    callback=_dashboards,
    metavar="LIST",
    help="Comma-separated dashboards to include: system,training,inference (default: all).",
)
@click.option(
    "--template-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Folder whose templates replace the shipped ones, file by file.",
)
@config_option
@metrics_dir_option
@verbosity_options
def report_command(
    fmt: str,
    run_ids: tuple[str, ...],
    latest: bool,
    since: str | None,
    group: str | None,
    output: str | None,
    dashboards: tuple[str, ...],
    template_dir: str | None,
    config_path: str | None,
    metrics_dir: str | None,
    quiet: bool,
    verbose: int,
) -> None:
    """Render recorded runs as charts and tables: system, training and inference dashboards, alerts, summaries."""
    # Imported here, not at the top: they pull in polars/matplotlib/jinja2 and `llamamon --help` must stay fast.
    from llamamon.cli import setup_logging
    from llamamon.report.config import report_settings
    from llamamon.report.render import render_report
    from llamamon.report.source import resolve_runs
    from llamamon.store.location import open_location
    from llamamon.units import parse_duration

    setup_logging(verbose, quiet)
    settings = report_settings(config_path, metrics_dir)
    since_s = parse_duration(since, path="--since") if since else None
    location = open_location(settings.metrics_dir)
    settings.metrics_dir = location.root
    runs = location.pull_chosen(lambda root: resolve_runs(root, run_ids, latest=latest, since=since_s, group=group))
    suffix = ".html" if fmt == "html" else ".md"
    out = Path(output) if output else Path("llamamon-report" + suffix)
    stages = len(dashboards) + 2
    kwargs = {
        "fmt": fmt,
        "selected": dashboards,
        "template_dir": Path(template_dir) if template_dir else None,
        "thresholds": settings.thresholds,
        "alerts": settings.alerts(),
        # --since picks the runs active in that period and shows that period of them, not their whole history.
        "since": time.time() - since_s if since_s is not None else None,
    }
    if sys.stderr.isatty() and not quiet:
        with click.progressbar(length=stages, label="Rendering report", file=sys.stderr) as bar:
            written = render_report(location.root, runs, out, progress=lambda _label: bar.update(1), **kwargs)
    else:
        written = render_report(location.root, runs, out, **kwargs)
    click.echo(str(written))
