"""The README cannot drift from the CLI: every command it tours exists, and every command is toured."""

from __future__ import annotations

import re
from pathlib import Path

import click

from llamamon.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _toured() -> set[str]:
    tour = README.split("## CLI tour", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `llamamon ([a-z-]+)", tour, flags=re.M))


def test_every_toured_command_exists_and_every_command_is_toured():
    assert _toured() == set(cli.list_commands(click.Context(cli)))


def test_the_two_setup_commands_come_first():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert len(blocks) == 2
    assert "llamamon record" in blocks[0]
    assert "examples/train.py" in blocks[0]
    assert "[test]" in blocks[1]
    assert "pytest" in blocks[1]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert blocks[1] in ci
