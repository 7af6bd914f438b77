"""``llamamon init``: write the commented example monitoring.yaml."""

from __future__ import annotations

from pathlib import Path

import click

from llamamon.errors import ConfigError


@click.command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default="monitoring.yaml",
    show_default=True,
    help="Where to write.",
)
def init_command(force: bool, output: str) -> None:
    """Write a commented example monitoring.yaml (the built-in defaults)."""
    # Why here: the config module pulls in PyYAML, which `llamamon --help` must not pay for.
    from llamamon.config import example_config_path

    target = Path(output)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists (use --force to overwrite it)")
    target.write_text(example_config_path().read_text(encoding="utf-8"), encoding="utf-8")
    click.echo(f"wrote {target}")
