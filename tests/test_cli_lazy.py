"""`batcher --help` lists the commands without importing them, and lists them truly."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from batcher.cli import _COMMANDS, cli

HEAVY = ("polars", "httpx", "openpyxl", "batcher.services", "batcher.cli.validate")


def test_help_lists_every_command_without_importing_one() -> None:
    script = (
        "import sys; from batcher.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='batcher')\n"
        "except SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in sys.modules if m.startswith({HEAVY!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout
    for name in _COMMANDS:
        assert f"\n  {name} " in result.stdout


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_listed_help_line_is_the_commands_own(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert _COMMANDS[name][1] == command.get_short_help_str(limit=1000)
