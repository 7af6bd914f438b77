"""``llamamon compact``: merge each finished partition's flush files into one sorted file."""

from __future__ import annotations

import click

from llamamon.cli.options import config_option, metrics_dir_option


@click.command("compact")
@config_option
@metrics_dir_option
@click.option(
    "--older-than",
    default="1h",
    show_default=True,
    help="Also compact partitions of runs without an end time once their newest file is this old.",
)
def compact_command(config_path: str | None, metrics_dir: str | None, older_than: str) -> None:
    """Merge finished partitions into one sorted file each.

    Safe while recording: partitions still being written are left alone, and readers never see a row
    missing or twice, even if compaction is killed.
    """
    # Imported here, not at module level: pyarrow loads only when the command runs (`llamamon --help` stays fast).
    from llamamon.config import load_config
    from llamamon.store.compaction import compact
    from llamamon.store.location import open_location
    from llamamon.units import format_bytes, parse_duration

    seconds = parse_duration(older_than, path="--older-than")
    location = open_location(metrics_dir or load_config(config_path).monitoring.metrics_path)
    location.pull()  # a bucket's every partition: compaction rewrites what it finds
    with location.tracking():  # then ships the compacted files and deletes the objects they replace
        result = compact(location.root, older_than=seconds)
    click.echo(
        f"compacted {result.partitions} partition(s): {result.files_before} file(s) -> {result.files_after}, "
        f"{format_bytes(result.bytes_before)} -> {format_bytes(result.bytes_after)}"
    )
    if result.skipped_live or result.skipped_recent:
        click.echo(
            f"left alone: {result.skipped_live} partition(s) being recorded, "
            f"{result.skipped_recent} written less than {older_than} ago"
        )
