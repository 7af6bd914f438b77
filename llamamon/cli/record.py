"""``llamamon record [OPTIONS] -- CMD [ARGS...]``: run a command untouched while sampling its metrics."""

from __future__ import annotations

import click

from llamamon.cli.options import config_option, interval_option, metrics_dir_option, parse_tags, verbosity_options


@click.command(
    "record",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--name", default=None, help="A name for the run (shown by `llamamon runs`, usable as a run reference).")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Attach a tag to the run (repeatable).")
@interval_option("Seconds between samples, e.g. 1, 0.5 or 500ms (default: monitoring.update_frequency).")
@click.option("--no-gpu", is_flag=True, help="Do not sample GPUs (NVML is not even loaded).")
@click.option("--no-alerts", is_flag=True, help="Do not evaluate alert rules or send notifications for this run.")
@click.option(
    "--no-parse", is_flag=True, help="Do not look for metric lines (loss, learning rate …) in the job's output."
)
@click.option(
    "--scrape",
    "scrape",
    multiple=True,
    metavar="URL",
    help="Also scrape this Prometheus endpoint every interval, e.g. a vLLM or TGI /metrics (repeatable).",
)
@click.option(
    "--group",
    default=None,
    metavar="NAME",
    help="The multi-node job this run is one node of (default: $LLAMAMON_GROUP, torchrun's --rdzv-id, "
    "$TORCHELASTIC_RUN_ID, $SLURM_JOB_ID).",
)
@config_option
@metrics_dir_option
@verbosity_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def record_command(
    ctx: click.Context,
    name: str | None,
    tags: tuple[str, ...],
    interval: float | None,
    no_gpu: bool,
    no_alerts: bool,
    no_parse: bool,
    scrape: tuple[str, ...],
    group: str | None,
    config_path: str | None,
    metrics_dir: str | None,
    quiet: bool,
    verbose: int,
    command: tuple[str, ...],
) -> None:
    """Run a command untouched while sampling its metrics.

    CMD keeps its stdin, stdout, stderr, terminal, signals and exit code; system, process-tree and GPU
    metrics are sampled into the metrics folder every --interval seconds, from start to exit. Metric
    lines in its output (JSON objects, the Hugging Face Trainer's dicts, monitoring.yaml's parsers:) and
    whatever it logs with llamamon.log() join the run.

    \b
      llamamon record -- python train.py --epochs 3
      llamamon record --name baseline --tag lr=3e-4 --interval 2 -- ./train.sh
      llamamon record --scrape http://127.0.0.1:8000/metrics -- vllm serve my-model
      srun llamamon record -- python train.py          (one run per node, grouped by $SLURM_JOB_ID)
    """
    from llamamon.cli import setup_logging

    setup_logging(verbose, quiet)
    # Deferred: the recorder pulls in asyncio, psutil and the store; `llamamon --help` must not pay for it.
    from llamamon.runtime.recorder import RecordOptions, record

    options = RecordOptions(
        command=list(command),
        name=name,
        tags=parse_tags(tags),
        interval=interval,
        config_path=config_path,
        metrics_dir=metrics_dir,
        gpu=not no_gpu,
        alerts=not no_alerts,
        parse=not no_parse,
        scrape=list(scrape),
        group=group,
    )
    ctx.exit(record(options))
