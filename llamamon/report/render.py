"""Assemble the dashboards and render them through jinja2 into one HTML file or a Markdown summary.

Templates come from ``--template-dir`` first, then the shipped ones (per file), with autoescaping on
for every template and ``StrictUndefined`` so a template naming a missing value fails loudly.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamamon import __version__
from llamamon.errors import ConfigError
from llamamon.fsutil import atomic_write
from llamamon.report.data import DASHBOARDS, AlertReplay, AlertSpan, ReportData, Thresholds, load_report_data
from llamamon.report.resources import templates_dir
from llamamon.samples import RunInfo

if TYPE_CHECKING:
    import jinja2
    from matplotlib.figure import Figure


Format = Literal["html", "markdown"]
Progress = Callable[[str], None]


def environment(template_dir: Path | None = None) -> jinja2.Environment:
    """jinja2 environment: user templates override shipped ones file by file; HTML autoescaped.

    Markdown templates (``*.md.j2``) are not HTML-escaped (``'`` would show as ``&#39;``): their cells go
    through the ``md`` filter, which escapes what Markdown would read as markup, raw HTML included.
    """
    import jinja2

    search = [str(template_dir)] if template_dir is not None else []
    search.append(str(templates_dir()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        autoescape=jinja2.select_autoescape(disabled_extensions=("md.j2",), default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = markdown_cell
    return env


def markdown_cell(value: object) -> str:
    """Text safe inside a Markdown table cell: no pipes, backticks, emphasis, links, HTML or line breaks.

    Markdown punctuation is backslash-escaped; ``<`` and ``>`` become entities, so the file never holds a
    tag that a renderer could take for HTML. Quotes stay quotes.
    """
    text = str(value)
    for ch in ("\\", "|", "`", "*", "_", "[", "]", "&"):
        text = text.replace(ch, "\\" + ch)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.split())


def build_model(
    data: ReportData,
    *,
    fmt: Format,
    emit: Callable[[str, Figure], str] | None,
    selected: Sequence[str],
    metrics_dir: Path,
    zone: tzinfo | None = None,
    progress: Progress | None = None,
    since: float | None = None,
) -> dict[str, Any]:
    """The template context: run headers, alert summary, one model per dashboard, notes.

    ``emit`` turns a panel's figure into its image reference; None draws no figure (the Markdown summary).
    """
    from llamamon.report import charts
    from llamamon.report.dashboards import alerts, header, inference, model, ranks, summary, system, training
    from llamamon.report.dashboards.context import build_context
    from llamamon.report.dashboards.values import format_time

    tick = progress or (lambda _label: None)
    ctx = build_context(data, "svg" if fmt == "html" else "png", emit, zone, since)  # type: ignore[arg-type]
    builders = {
        "system": system.system_dashboard,
        "training": training.training_dashboard,
        "inference": inference.inference_dashboard,
    }
    boards = []
    for name in model.dashboard_order(selected, data):
        boards.append(builders[name](ctx))
        tick(name)
    timeline, alert_table = alerts.alerts_section(ctx)
    custom = summary.custom_table(ctx)
    generated = datetime.now(timezone.utc)
    first = data.runs[0]
    title = first.name or first.id if len(data.runs) == 1 else f"{len(data.runs)} runs"
    return {
        "title": title,
        "version": __version__,
        "generated": format_time(generated.timestamp(), ctx.zone),
        "zone": charts.zone_label(ctx.zone),
        "metrics_dir": str(metrics_dir),
        "runs": [header.run_header(r, data, ctx.zone) for r in data.runs],
        "multi": ctx.multi,
        "alert_counts": alerts.alert_counts(data.alerts),
        "alert_timeline": timeline,
        "alert_table": alert_table,
        "dashboards": boards,
        "custom_table": custom,
        "skipped": data.skipped,
        "key_figures": key_figures(data),
        "slowest_ranks": ranks.slowest_ranks(boards),
        "run_labels": [ctx.run_labels.get(r.id, r.id) for r in data.runs],
        "thresholds_note": thresholds_note(data.thresholds),
        "window": "" if since is None else f"data from {format_time(since, ctx.zone)} on",
    }


KEY_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("step", "max", "last step"),
    ("loss", "last", "last loss"),
    ("validation_loss", "last", "last validation loss"),
    ("validation_loss", "min", "best validation loss"),
    ("tokens_per_second", "mean", "mean tokens/s"),
    ("steps_per_second", "mean", "mean steps/s"),
    ("step_time", "mean", "mean step time"),
    ("cpu_usage", "mean", "mean CPU"),
    ("memory_usage", "max", "peak memory"),
    ("gpu_utilization", "mean", "mean GPU utilisation"),
    ("gpu_memory_usage", "max", "peak GPU memory"),
    ("process_memory_rss", "max", "peak process RSS"),
    ("inference_latency", "p95", "p95 latency"),
    ("batch_throughput", "mean", "mean requests/s"),
    ("error_rate", "max", "peak error rate"),
)


def key_figures(data: ReportData) -> list[tuple[str, list[str]]]:
    """(what, value per run) for the page top and the Markdown summary: the numbers people look for first."""
    import polars as pl

    from llamamon.report import gpu_figures
    from llamamon.report.dashboards.values import format_value, unit_of
    from llamamon.report.ranks import run_figures

    s = data.summary
    out = []
    for metric, stat, what in KEY_FIGURES:
        rows = s.filter(pl.col("metric") == metric)
        figures = {rec["run"]: rec for rec in run_figures(rows, stat).iter_rows(named=True)} if rows.height else {}
        cells = []
        for run in data.runs:
            scraped = _scraped(data, run.id, metric, stat)
            if scraped is not None:
                # A scraped histogram's figure is of the run's requests, from its buckets.
                cells.append(format_value(scraped, unit_of(metric)))
                continue
            figure = figures.get(run.id)
            cells.append("–" if figure is None else _figure_text(figure, unit_of(metric)))
        if any(c != "–" for c in cells):
            out.append((what, cells))
    out.extend(gpu_figures.key_figure_rows(data))
    return out


def _figure_text(figure: dict[str, Any], unit: str) -> str:
    """A run's figure (a ``ranks.run_figures`` row) as text; per rank, the lowest rank's and the ranks' range:
    ``0.3339 (rank 0); ranks 0.3339–0.3439``."""
    from llamamon.report.dashboards.values import format_value

    text = format_value(figure["value"], unit)
    if figure["rank"] is None:
        return text
    lo, hi = format_value(figure["lo"], unit), format_value(figure["hi"], unit)
    if lo == hi:
        return f"{text} (all ranks)"
    return f"{text} (rank {figure['rank']}); ranks {lo}–{hi}"


def _scraped(data: ReportData, run: str, metric: str, stat: str) -> float | None:
    """The run's quantile ``stat`` of a scraped histogram metric (report.buckets), None where it has none."""
    import polars as pl

    if data.latency is None or stat not in data.latency.columns:
        return None
    rows = data.latency.filter((pl.col("run") == run) & (pl.col("metric") == metric) & (pl.col("n") > 0))
    return float(rows[stat][0]) if rows.height else None


def thresholds_note(th: Thresholds) -> str:
    parts = []
    if th.memory_warning is not None:
        parts.append(f"memory warning {th.memory_warning:.0%}")
    if th.memory_critical is not None:
        parts.append(f"memory critical {th.memory_critical:.0%}")
    return "Thresholds drawn from monitoring.thresholds: " + ", ".join(parts) + "." if parts else ""


def render_report(
    metrics_dir: Path,
    runs: list[RunInfo],
    output: Path,
    *,
    fmt: Format = "html",
    selected: Iterable[str] = DASHBOARDS,
    template_dir: Path | None = None,
    thresholds: Thresholds | None = None,
    alerts: Iterable[AlertSpan] | AlertReplay | None = (),
    zone: tzinfo | None = None,
    progress: Progress | None = None,
    since: float | None = None,
) -> Path:
    """Query, chart and render the chosen runs into ``output`` (written atomically); returns the path.

    ``alerts``: spans, or the rules engine replay to run over the runs' samples. ``since`` (Unix
    seconds): show only the samples from then on.
    """
    chosen = [d for d in DASHBOARDS if d in set(selected)]
    unknown = sorted(set(selected) - set(DASHBOARDS))
    if unknown:
        raise ConfigError(f"unknown dashboard {unknown[0]!r} (choose from {', '.join(DASHBOARDS)})", path="--dashboard")
    if template_dir is not None and not template_dir.is_dir():
        raise ConfigError(f"not a folder: {template_dir}", path="--template-dir")
    env = environment(template_dir)
    warm = _warm_up(CHART_MODULES)
    data = load_report_data(metrics_dir, runs, chosen, alerts=alerts, thresholds=thresholds, since=since)
    warm.join()
    if progress:
        progress("data")
    if fmt == "html":
        emit = _inline_emitter()
        template = "report.html.j2"
    else:
        # The Markdown summary names its charts but holds none: it is read as a CI step summary, where a
        # PNG linked by relative path points nowhere and GitHub drops data: images (and caps it at 1 MiB).
        emit = None
        template = "report.md.j2"
    model = build_model(
        data, fmt=fmt, emit=emit, selected=chosen, metrics_dir=metrics_dir, zone=zone, progress=progress, since=since
    )
    text = _render(env, template, model)
    atomic_write(output, text.encode("utf-8"))
    _readable(output)
    if progress:
        progress("render")
    return output


# What drawing the charts imports (matplotlib, about a second): loaded while polars reads the samples.
CHART_MODULES = tuple(
    f"llamamon.report.dashboards.{name}" for name in ("system", "training", "inference", "alerts", "header")
)


def _warm_up(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` on a background thread; join it before using them.

    Why: importing matplotlib is a second of Python on one core, and polars releases the GIL while it
    reads and groups the samples, so the import mostly fits into time the data loading waits anyway.
    """

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the main thread imports it again and reports the error itself
                return

    thread = threading.Thread(target=run, name="llamamon-report-imports", daemon=True)
    thread.start()
    return thread


def _readable(path: Path) -> None:
    """A report is for sharing: mode 0666 less the umask, like any new file, not the temp file's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def _render(env: jinja2.Environment, name: str, model: dict[str, Any]) -> str:
    import jinja2

    try:
        return env.get_template(name).render(model)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"template error: {exc.message}", file=exc.filename or exc.name, line=exc.lineno) from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"template uses an unknown value: {exc.message}", file=name) from None
    except jinja2.TemplateNotFound as exc:
        raise ConfigError(f"template not found: {exc.name}", path="--template-dir") from None


def _inline_emitter() -> Callable[[str, Figure], str]:
    from llamamon.report import charts

    def emit(_pid: str, fig: Figure) -> str:
        return charts.to_data_uri(fig, "svg")

    return emit
