"""``llamamon doctor``: what llamamon can see on this machine and which config it would use."""

from __future__ import annotations

import os
from typing import Any

import click

from llamamon.cli.options import config_option, json_option, metrics_dir_option
from llamamon.errors import ConfigError
from llamamon.units import format_bytes, format_duration


def _config_origin(config_path: str | None, source: object) -> str:
    if config_path is not None:
        return f"{source} (--config)"
    if os.environ.get("LLAMAMON_CONFIG"):
        return f"{source} ($LLAMAMON_CONFIG)"
    if source is not None:
        return f"{source} (found in the current folder)"
    return "built-in defaults (no --config, $LLAMAMON_CONFIG or ./monitoring.yaml)"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.0f}%"


def _text(report: dict[str, Any]) -> list[str]:
    system, process, gpu, config, folder = (
        report["system"],
        report["process"],
        report["gpu"],
        report["config"],
        report["metrics_folder"],
    )
    cpu = system["cpu"]
    lines = [f"System (psutil {system['psutil_version']})"]
    cores = f"{cpu['logical']} logical cores"
    if cpu["physical"]:
        cores += f", {cpu['physical']} physical"
    model = f": {cpu['model']}" if cpu["model"] else ""
    lines.append(f"  CPU            {cores}{model}")
    memory = system["memory"]
    lines.append(
        f"  Memory         {format_bytes(memory['total'])} total, {format_bytes(memory['available'])} available"
    )
    swap = system["swap"]
    lines.append(
        "  Swap           "
        + (f"{format_bytes(swap['total'])}, {format_bytes(swap['used'])} used" if swap["total"] else "none")
    )
    if system["load"] is not None:
        lines.append("  Load           " + " ".join(f"{x:.2f}" for x in system["load"]))
    for disk in system["disks"]:
        lines.append(
            f"  Disk           {disk['mountpoint']} ({disk['fstype']} on {disk['device']}): "
            f"{_percent(disk['usage'])} of {format_bytes(disk['total'])} used"
        )
    if not system["disk_io_counters"]:
        lines.append("  Disk I/O       not exposed here: no disk_read/write_throughput")

    lines.append("Process tree")
    lines.append(f"  Discovery      {process['discovery']}")
    if process["cost_grows_with_machine"]:
        lines.append("                 (this kernel lacks CONFIG_PROC_CHILDREN: each sample reads every process)")
    lines.append("  I/O counters   " + ("readable" if process["io_counters"] else "not readable: no process I/O rates"))

    lines.append("GPU (NVML)")
    if gpu["available"]:
        lines.append(f"  Driver         {gpu['driver_version'] or 'unknown version'}")
        for device in gpu["gpus"]:
            memory_total = f" ({format_bytes(device['memory_total'])})" if device.get("memory_total") else ""
            lines.append(f"  GPU {device['index']:<10} {device.get('name') or 'unnamed'}{memory_total}")
            for what, why in (device.get("unavailable") or {}).items():
                lines.append(f"    no {what:<11} {why}")
    else:
        lines.append(f"  off: {gpu['reason']}")

    lines.append("Config")
    if "error" in config:
        lines.append(f"  error          {config['error']}")
    else:
        lines.append(f"  File           {config['origin']}")
        lines.append(f"  Interval       {format_duration(config['update_frequency'])}")
        lines.append(f"  Export         {config['export_format']}")
        own, builtin = config["rules"], config["builtin_rules"]
        lines.append(
            f"  Alert rules    {own + builtin}: {own} from the config, {builtin} built-in ({config['channels']} channels)"
        )
        if config["collectors"]:
            lines.append("  Collectors     " + ", ".join(config["collectors"]))

    lines.append("Metrics folder")
    lines.append(f"  Path           {folder['path']}")
    if folder["exists"]:
        lines.append(
            f"  Size           {format_bytes(folder['size'])}: {folder['runs']} runs, {folder['data_files']} data files"
            f" ({folder['uncompacted_files']} not compacted yet), {format_bytes(folder['journal_bytes'])} in journals"
        )
    else:
        lines.append("  Size           does not exist yet (the first `llamamon record` creates it)")
    bucket = report.get("bucket")
    if bucket is not None:
        lines.append(
            f"  Bucket         {bucket['url']}: {bucket['waiting_files']} files"
            f" ({format_bytes(bucket['waiting_bytes'])}) waiting to be shipped"
        )
    fs = system["metrics_filesystem"]
    if fs is not None:
        lines.append(f"  Filesystem     {format_bytes(fs['free'])} free ({_percent(fs['usage'])} used)")
    return lines


def _shown(where: object) -> str:
    """A metrics path as it may be shown: a bucket URL without its query."""
    from llamamon.store.bucket import is_bucket_url, parse_url

    return parse_url(where).url if isinstance(where, str) and is_bucket_url(where) else str(where)


def _bucket(where: str) -> dict[str, Any] | None:
    """A bucket's files still waiting in its local mirror (counted without the network: nothing is sent)."""
    from llamamon.store.bucket import is_bucket_url
    from llamamon.store.location import open_location

    if not is_bucket_url(where):
        return None
    location = open_location(where, sync=False)
    waiting = location.waiting()
    return {
        "url": location.shown,
        "mirror": str(location.root),
        "waiting_files": len(waiting),
        "waiting_bytes": sum(w[2] for w in waiting),
    }


def _metrics_folder(folder: str) -> dict[str, Any]:
    """Where the data goes and what is there, as the store counts it (data, journals, run metadata)."""
    from pathlib import Path

    from llamamon.store.retention import store_stats

    path = Path(folder)
    info: dict[str, Any] = {"path": str(path.absolute()), "exists": path.is_dir()}
    if path.is_dir():
        stats = store_stats(path)
        info.update(
            size=stats.total_bytes,
            data_files=stats.files,
            uncompacted_files=stats.uncompacted_files,
            journal_bytes=stats.journal_bytes,
            runs=len(stats.run_bytes),
        )
    return info


@click.command("doctor")
@config_option
@metrics_dir_option
@click.option("--no-gpu", is_flag=True, help="Do not load NVML (as `record --no-gpu`).")
@click.option(
    "--scrape",
    "scrape_url",
    metavar="URL",
    help="Scrape this serving endpoint once instead: engine and version, which llamamon metrics resolve, "
    "deprecated names, the flag to enable metrics.",
)
@json_option
def doctor_command(
    config_path: str | None, metrics_dir: str | None, no_gpu: bool, scrape_url: str | None, as_json: bool
) -> None:
    """Show what llamamon can see here: CPUs, memory, disks, GPUs (or why none), config, metrics folder."""
    if scrape_url is not None:
        from llamamon.cli.doctor_scrape import scrape_report, scrape_text

        scraped = scrape_report(scrape_url)
        if as_json:
            import json

            click.echo(json.dumps(scraped, indent=2))
        else:
            click.echo("\n".join(scrape_text(scraped)))
        return
    # Imported here so `llamamon --help` does not pay for psutil, asyncio and the config schema.
    from llamamon.collectors.describe import describe_gpu, describe_process, describe_system
    from llamamon.config import load_config
    from llamamon.rules.builtin import BUILTIN_NAMES

    config_error: ConfigError | None = None
    config: dict[str, Any]
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        config_error = exc
        config = {"error": str(exc)}
        folder = metrics_dir or ".metrics"
    else:
        config = {
            "source": str(cfg.source) if cfg.source is not None else None,
            "origin": _config_origin(config_path, cfg.source),
            "update_frequency": cfg.monitoring.update_frequency,
            "metrics_path": _shown(cfg.monitoring.metrics_path),
            "export_format": cfg.monitoring.export_format,
            "rules": len(cfg.alerts.rules),
            # (a rule of yours named like a built-in replaces it)
            "builtin_rules": sum(
                cfg.alerts.builtin.get(name, True) and name not in cfg.alerts.rules for name in BUILTIN_NAMES
            ),
            "channels": len(cfg.alerts.channels),
            "collectors": list(cfg.collectors),
        }
        folder = metrics_dir or str(cfg.monitoring.metrics_path)

    from llamamon.store.location import local_root

    report = {
        "system": describe_system(local_root(folder)),
        "process": describe_process(),
        "gpu": describe_gpu(enabled=not no_gpu),
        "config": config,
        "metrics_folder": _metrics_folder(str(local_root(folder))),
    }
    bucket = _bucket(folder)
    if bucket is not None:
        report["bucket"] = bucket
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(_text(report)))
    if config_error is not None:
        # Everything else was still worth showing; the broken config decides the exit code (2).
        raise config_error
