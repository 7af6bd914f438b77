"""Every command has help, and every help runs (sqlite-utils test_docs style)."""

from __future__ import annotations

import click
import pytest

from llamamon.cli import cli


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"llamamon {' '.join((*prefix, name))} does not load"
        assert command.name == name
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


COMMANDS = list(_all_commands(cli))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_command_has_help(path, command):
    assert command.help or command.short_help, f"llamamon {' '.join(path)} has no help"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_help_runs(runner, path, command):
    result = runner.invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_top_level_help(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.list_commands(click.Context(cli)):
        assert name in result.output


def test_an_unknown_command_is_a_usage_error(runner):
    result = runner.invoke(cli, ["recrod"])
    assert result.exit_code == 2
    assert "No such command 'recrod'" in result.output
