"""``llamamon export prometheus|csv|grafana``: a recorded run's latest values in the Prometheus text format, all
of its metrics as CSV, on demand; or Grafana dashboards over the names the Prometheus export writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llamamon.cli.options import config_option, metrics_dir_option
from llamamon.errors import ConfigError

if TYPE_CHECKING:
    from llamamon.prometheus.snapshot import RunSnapshot
    from llamamon.samples import RunInfo


@click.group("export")
def export_command() -> None:
    """Write recorded metrics in other tools' formats."""


def _one_run_options(output_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """--run/--latest, -o and the config/metrics-dir options every single-run export takes."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(
            (
                click.option(
                    "--run", "run_ref", metavar="ID", default=None, help="Run id, id prefix, name or name prefix."
                ),
                click.option("--latest", is_flag=True, help="The most recently started run (the default)."),
                click.option(
                    "-o",
                    "--output",
                    type=click.Path(dir_okay=False, allow_dash=True),
                    default="-",
                    show_default=True,
                    help=output_help,
                ),
                config_option,
                metrics_dir_option,
            )
        ):
            command = option(command)
        return command

    return decorate


def _one_run(
    run_ref: str | None, latest: bool, config_path: str | None, metrics_dir: str | None
) -> tuple[Path, RunInfo]:
    # Imports here, not at the top: `llamamon --help` must not pay for the store (polars) or the config.
    from llamamon.config import load_config
    from llamamon.store.location import open_location
    from llamamon.store.runs import resolve_runs

    if run_ref is not None and latest:
        raise ConfigError("give --run or --latest, not both", path="--latest")
    location = open_location(metrics_dir or load_config(config_path).monitoring.metrics_path)
    (run,) = location.pull_chosen(
        lambda root: resolve_runs(root, [run_ref] if run_ref is not None else [], latest=run_ref is None)
    )
    return location.root, run


def _write(output: str, text: str) -> None:
    from llamamon.fsutil import atomic_write

    if output == "-":
        click.echo(text, nl=False)
    else:
        atomic_write(output, text.encode("utf-8"))


@export_command.command("prometheus")
@_one_run_options(
    "File to write (replaced atomically, e.g. a .prom file in node_exporter's textfile folder); - for stdout."
)
def prometheus_command(
    run_ref: str | None, latest: bool, output: str, config_path: str | None, metrics_dir: str | None
) -> None:
    """Write the latest values of a run (gauges, counters, latency histograms) as Prometheus text.

    The same families and names the live .prom files have, with llamamon_run_active 0 for a finished run,
    and the run's derived GPU figures where it has their inputs (energy, J/token, tokens/s per GPU, MFU).
    """
    from llamamon.report.gpu_figures import stored_run_samples
    from llamamon.store.journal import live_runs

    folder, run = _one_run(run_ref, latest, config_path, metrics_dir)
    snapshot = snapshot_from_store(folder, run)
    snapshot.add(stored_run_samples(folder, run))
    # A run without an end time whose recorder is gone (killed) is not active either.
    snapshot.active = run.end is None and run.id in live_runs(folder)
    _write(output, snapshot.render())


@export_command.command("csv")
@_one_run_options("File to write (replaced atomically); - for stdout.")
def csv_command(
    run_ref: str | None, latest: bool, output: str, config_path: str | None, metrics_dir: str | None
) -> None:
    """Write every stored row of a run as CSV: time,step,metric,value and one column per label.

    Times are ISO 8601 UTC to the microsecond, values Python's shortest exact float text (nan, inf as such),
    so reading the file back gives the stored numbers bit for bit. Rows are in time order.
    """
    folder, run = _one_run(run_ref, latest, config_path, metrics_dir)
    _write(output, run_csv(folder, run.id))


DEFAULT_GRAFANA_DIR = "llamamon-grafana"


@export_command.command("grafana")
@click.option(
    "-o",
    "--output",
    "folder",
    metavar="DIR",
    default=DEFAULT_GRAFANA_DIR,
    show_default=True,
    help="Folder to write the dashboards into (made if missing; files in it of the same names are replaced).",
)
def grafana_command(folder: str) -> None:
    """Write Grafana dashboards (System, Training, Inference) over the names the .prom files carry.

    llamamon-system.json, llamamon-training.json and llamamon-inference.json, for Grafana's Dashboards >
    New > Import: it asks for the Prometheus data source that scrapes node_exporter's textfile folder.
    """
    import json

    from llamamon.fsutil import atomic_write
    from llamamon.prometheus.grafana import dashboards

    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise ConfigError("is a file, not a folder", path=f"-o {folder}")
    for name, board in dashboards().items():
        path = target / name
        try:
            atomic_write(path, (json.dumps(board, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}", path=f"-o {folder}") from None
        click.echo(f"wrote {path}")


def run_csv(metrics_dir: Path, run_id: str) -> str:
    """The CSV text of one run's rows (see ``llamamon export csv``)."""
    import csv
    import io
    import json

    from llamamon.store.reader import scan

    frame = (
        scan(metrics_dir, runs=[run_id])
        .select("time", "step", "metric", "value", "labels")
        .sort("time", "metric", "labels", maintain_order=True)
        .collect()
    )
    rows = [
        (t, step, metric, value, json.loads(labels) if labels else {})
        for t, step, metric, value, labels in frame.iter_rows()
    ]
    keys = sorted({k for *_, labels in rows for k in labels})
    base = ("time", "step", "metric", "value")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*base, *(f"label_{k}" if k in base else k for k in keys)])
    for t, step, metric, value, labels in rows:
        when = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        writer.writerow([when, "" if step is None else step, metric, repr(value), *(labels.get(k, "") for k in keys)])
    return out.getvalue()


def snapshot_from_store(metrics_dir: Path, run: RunInfo) -> RunSnapshot:
    """A run's stored rows fed, in time order, to the same RunSnapshot the live textfile writer keeps.

    Gauge and counter series are reduced to their last row in polars first; every row of a histogram
    metric (one observation each) is kept.
    """
    import polars as pl

    from llamamon import catalog
    from llamamon.prometheus.snapshot import RunSnapshot
    from llamamon.samples import Sample, labels_from_str
    from llamamon.store.reader import scan

    histograms = [n for n in (*catalog.BY_NAME, *catalog.ALIASES) if (m := catalog.get(n)) and m.kind == "histogram"]
    columns = ["t", "metric", "value", "labels", "step"]
    rows = scan(metrics_dir, runs=[run.id]).select(
        (pl.col("time").dt.epoch("us") / 1e6).alias("t"), "metric", "value", "labels", "step"
    )
    is_histogram = pl.col("metric").is_in(histograms)
    series = rows.filter(~is_histogram).sort("t").group_by("metric", "labels", maintain_order=True)
    latest = series.last().select(columns)
    frame = pl.concat([latest, rows.filter(is_histogram)]).sort("t", maintain_order=True).collect()
    snapshot = RunSnapshot({"host": run.host, "run": run.id})
    snapshot.add(
        Sample(metric, value, labels_from_str(labels), time=t, step=step)
        for t, metric, value, labels, step in frame.iter_rows()
    )
    return snapshot
